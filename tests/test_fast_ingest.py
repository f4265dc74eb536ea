"""The usual POST of events skips the middleware stack (``api.fast_ingest``) and is answered the same.

The fast path takes a request only with a key already in the cache and a
valid body; everything else goes on to the application, whose answers
(401, 413, 422 naming the index and field, 503) must not change.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from api.app import EVENTS_BODY_LIMIT, create_app
from api.fast_ingest import IngestFastPath
from api.key_cache import KeyCache
from dispatcher.settings import Settings
from models.accounts import Account, hash_key, revoke_key
from models.errors import Unavailable
from models.events import Event, Ingested
from tests.conftest import make_key

EVENTS = "/api/emails/events/"


def event(id_: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "type": "opened",
        "recipient": "user@example.com",
        "sent_email_id": "sent-1",
        "campaign_id": "camp-1",
        "metadata": {"ip": "203.0.113.42"},
        "timestamp": "2026-04-02T14:30:00Z",
        **fields,
    }


def fast(client: TestClient) -> IngestFastPath:
    """The app's fast path (found down the middleware stack)."""
    stack: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(stack, IngestFastPath):
        stack = stack.app
    return stack


def stored(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(Event)) or 0)


@pytest.fixture
def key(engine: Engine) -> str:
    return make_key(engine, "acme")


def test_a_known_key_and_a_valid_body_take_the_fast_path_and_get_the_same_answer(
    client: TestClient, key: str, engine: Engine
) -> None:
    headers = {"X-API-Key": key}
    first = client.post(EVENTS, json=event("evt-1"), headers=headers)  # looks the key up
    assert first.status_code == 202
    assert fast(client).served == 0
    second = client.post(EVENTS, json=event("evt-2"), headers=headers)
    batch = client.post(EVENTS.rstrip("/"), json=[event("evt-3"), event("evt-2")], headers=headers)
    assert fast(client).served == 2
    assert second.status_code == batch.status_code == 202
    assert first.json() == {"accepted": ["evt-1"], "duplicates": [], "deliveries": 0}
    assert second.json() == {"accepted": ["evt-2"], "duplicates": [], "deliveries": 0}
    assert batch.json() == {"accepted": ["evt-3"], "duplicates": ["evt-2"], "deliveries": 0}
    for answer in (second, batch):
        assert answer.headers["content-type"] == first.headers["content-type"]
        assert int(answer.headers["content-length"]) == len(answer.content)
    assert stored(engine) == 3


def test_what_the_fast_path_does_not_take_is_answered_as_before(
    client: TestClient, key: str, engine: Engine
) -> None:
    headers = {"X-API-Key": key}
    assert client.post(EVENTS, json=event("evt-1"), headers=headers).status_code == 202
    bad_batch = client.post(
        EVENTS, json=[event("evt-2"), event("evt-3", type="x")], headers=headers
    )
    assert bad_batch.status_code == 422
    assert bad_batch.json()["detail"][0]["loc"] == ["body", 1, "type"]
    not_json = client.post(EVENTS, content=b"{nope", headers=headers)
    assert not_json.status_code == 422
    assert not_json.json()["detail"][0]["type"] == "json_invalid"
    too_large = client.post(EVENTS, content=b"[" + b" " * EVENTS_BODY_LIMIT + b"]", headers=headers)
    assert too_large.status_code == 413
    stranger = client.post(EVENTS, json=event("evt-4"), headers={"X-API-Key": "sk_live_x"})
    assert stranger.status_code == 401
    assert client.post(EVENTS, json=event("evt-5")).status_code == 401  # no key at all
    assert fast(client).served == 0
    assert stored(engine) == 1


def test_a_revoked_key_remembered_as_refused_is_refused(
    database_url: str, engine: Engine, key: str
) -> None:
    with TestClient(create_app(Settings(database_url=database_url), engine)) as client:
        with Session(engine) as session:
            revoke_key(session, key[:11])
        for _ in range(2):  # the first looks it up, the second finds it refused in the cache
            answer = client.post(EVENTS, json=event("evt-1"), headers={"X-API-Key": key})
            assert answer.status_code == 401
        assert fast(client).served == 0


def test_a_commit_that_fails_on_the_fast_path_is_a_503_with_retry_after(
    client: TestClient, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = {"X-API-Key": key}
    assert client.post(EVENTS, json=event("evt-1"), headers=headers).status_code == 202

    async def refuse(*_args: Any) -> Ingested:
        raise Unavailable("ingestion is saturated; retry")

    assert client.app is not None
    monkeypatch.setattr(client.app.state.ingestion, "ingest", refuse)  # type: ignore[attr-defined]
    answer = client.post(EVENTS, json=event("evt-2"), headers=headers)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert answer.json() == {"detail": "ingestion is saturated; retry"}


def test_the_fast_path_is_timed_and_counted_in_the_metrics(client: TestClient, key: str) -> None:
    headers = {"X-API-Key": key}
    for number in range(3):
        assert client.post(EVENTS, json=event(f"evt-{number}"), headers=headers).status_code == 202
    assert fast(client).served == 2
    text = client.get("/metrics").text
    assert 'sentinmail_events_accepted_total{type="opened"} 3.0' in text
    assert "sentinmail_ingest_request_duration_seconds_count 3.0" in text


# --- the middleware alone, with the messages a server would hand it ---------------------


class Inner:
    """The application behind the fast path: records what reached it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.called = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called += 1
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break


def middleware(limit: int = 1_000) -> tuple[IngestFastPath, Inner, list[tuple[str, int]]]:
    keys = KeyCache(60.0)
    keys.put(hash_key("k"), Account(id="a-1", name="acme"), 1e12)
    ingested: list[tuple[str, int]] = []

    async def ingest(account_id: str, events: list[Any]) -> Ingested:
        ingested.append((account_id, len(events)))
        return Ingested([e.id for e in events], [], 0)

    metrics = SimpleNamespace(
        accepted=lambda *_: None, duration=SimpleNamespace(observe=lambda _: None)
    )
    state = SimpleNamespace(
        keys=keys, ingestion=SimpleNamespace(ingest=ingest), metrics=SimpleNamespace(ingest=metrics)
    )
    inner = Inner()
    return IngestFastPath(inner, path=EVENTS, limit=limit, state=state), inner, ingested


def run(app: IngestFastPath, messages: list[dict[str, Any]]) -> list[MutableMapping[str, Any]]:
    scope = {"type": "http", "method": "POST", "path": EVENTS, "headers": [(b"x-api-key", b"k")]}
    pending = list(messages)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_a_body_in_several_parts_is_taken_whole() -> None:
    app, inner, ingested = middleware()
    body = str(event("evt-1")).replace("'", '"').encode()
    parts = [body[:10], body[10:30], body[30:]]
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in parts]
    messages[-1]["more_body"] = False
    sent = run(app, messages)
    assert sent[0]["status"] == 202
    assert ingested == [("a-1", 1)]
    assert inner.called == 0


def test_a_client_that_leaves_mid_body_is_handed_on_with_what_it_sent() -> None:
    app, inner, ingested = middleware()
    run(app, [{"type": "http.request", "body": b'{"id": ', "more_body": True}])
    assert ingested == []
    assert inner.received == [
        {"type": "http.request", "body": b'{"id": ', "more_body": True},
        {"type": "http.disconnect"},
    ]


def test_a_body_over_the_limit_is_handed_on_whole_for_its_413() -> None:
    app, inner, ingested = middleware(limit=8)
    run(
        app,
        [
            {"type": "http.request", "body": b"[" + b" " * 9, "more_body": True},
            {"type": "http.request", "body": b"]", "more_body": False},
        ],
    )
    assert ingested == []
    assert inner.received == [
        {"type": "http.request", "body": b"[" + b" " * 9, "more_body": True},
        {"type": "http.request", "body": b"]", "more_body": False},
    ]
