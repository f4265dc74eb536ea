"""Test events: one signed attempt through the dispatcher's transport, to a real receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlmodel import Session
from standardwebhooks import Webhook

from api.app import create_app
from dispatcher.probe import ProbeLimiter
from dispatcher.settings import USER_AGENT, Settings
from models.deliveries import Delivery
from models.events import Event
from tests.conftest import make_key
from tests.receivers import Receivers, status

ENDPOINTS = "/api/emails/webhook-endpoints/"


@pytest.fixture(scope="module")
def receivers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receivers]:
    farm = Receivers(tmp_path_factory.mktemp("ca"))
    yield farm
    farm.close()


@pytest.fixture
def client(database_url: str, engine: Engine, receivers: Receivers) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url,
        allowed_networks="127.0.0.0/8",
        ca_bundle=str(receivers.ca_file),
        attempt_timeout=2.0,
    )
    with TestClient(create_app(settings, engine)) as test_client:
        test_client.headers["X-API-Key"] = make_key(engine, "acme")
        yield test_client


def register(client: TestClient, url: str) -> dict[str, Any]:
    response = client.post(ENDPOINTS, json={"url": url, "events": ["bounced"]})
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_test_event_is_signed_sent_once_and_stored_nowhere(
    client: TestClient, receivers: Receivers, engine: Engine
) -> None:
    receiver = receivers.start()
    endpoint = register(client, receiver.url)
    response = client.post(f"{ENDPOINTS}{endpoint['id']}/test/", json={"type": "opened"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["delivered"] is True
    assert (answer["status_code"], answer["error"], answer["response_body"]) == (200, None, "OK")
    assert answer["duration_ms"] >= 0
    (got,) = receiver.received
    payload = Webhook(endpoint["secret"]).verify(got.body, got.headers)
    assert payload == json.loads(got.body)
    assert set(payload) == {
        "id", "type", "recipient", "sent_email_id", "campaign_id", "metadata", "timestamp"
    }  # fmt: skip
    assert payload["id"].startswith("test_")
    assert got.headers["webhook-id"] == payload["id"]
    assert (payload["type"], payload["recipient"]) == ("opened", "test@example.com")
    assert payload["metadata"]
    assert got.headers["User-Agent"] == USER_AGENT
    with Session(engine) as session:
        assert session.execute(select(func.count()).select_from(Event)).scalar() == 0
        assert session.execute(select(func.count()).select_from(Delivery)).scalar() == 0


def test_a_test_event_carries_the_custom_headers_and_both_secrets_of_a_rotation(
    client: TestClient, receivers: Receivers
) -> None:
    receiver = receivers.start()
    endpoint = register(client, receiver.url)
    path = f"{ENDPOINTS}{endpoint['id']}/"
    patched = client.patch(path, json={"headers": {"Authorization": "Bearer t0k3n"}})
    assert patched.status_code == 200, patched.text
    rotated = client.post(f"{path}rotate-secret/", json={"grace_seconds": 3600})
    assert rotated.status_code == 200, rotated.text
    assert client.post(f"{path}test/").json()["delivered"] is True
    (got,) = receiver.received
    assert got.headers["Authorization"] == "Bearer t0k3n"
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (rotated.json()["secret"], endpoint["secret"]):
        Webhook(secret).verify(got.body, got.headers)


def test_the_default_type_is_delivered_and_a_disabled_endpoint_is_tested_too(
    client: TestClient, receivers: Receivers
) -> None:
    receiver = receivers.start()
    endpoint = register(client, receiver.url)
    patched = client.patch(f"{ENDPOINTS}{endpoint['id']}/", json={"enabled": False})
    assert patched.status_code == 200
    response = client.post(f"{ENDPOINTS}{endpoint['id']}/test")  # no body, no trailing slash
    assert response.status_code == 200, response.text
    assert response.json()["delivered"] is True
    (got,) = receiver.received
    assert json.loads(got.body)["type"] == "delivered"


def test_a_failing_receiver_is_reported_with_its_answer_and_not_retried(
    client: TestClient, receivers: Receivers
) -> None:
    async def refuse(_n: int, _request: web.Request) -> web.StreamResponse:
        return web.Response(status=401, text='{"error": "bad signature"}')

    receiver = receivers.start(refuse)
    endpoint = register(client, receiver.url)
    answer = client.post(f"{ENDPOINTS}{endpoint['id']}/test/", json={}).json()
    assert answer["delivered"] is False
    assert answer["status_code"] == 401
    assert answer["error"]
    assert answer["response_body"] == '{"error": "bad signature"}'
    assert receiver.count() == 1


def test_the_ssrf_guard_applies(database_url: str, engine: Engine, receivers: Receivers) -> None:
    receiver = receivers.start(status(200))
    settings = Settings(database_url=database_url, ca_bundle=str(receivers.ca_file))
    with TestClient(create_app(settings, engine)) as client:
        client.headers["X-API-Key"] = make_key(engine, "acme")
        endpoint = register(client, receiver.url)
        answer = client.post(f"{ENDPOINTS}{endpoint['id']}/test/").json()
    assert answer["delivered"] is False
    assert answer["status_code"] is None
    assert "refused" in answer["error"]
    assert receiver.count() == 0


def test_eleven_test_events_in_a_minute_get_a_429_with_retry_after(
    client: TestClient, receivers: Receivers
) -> None:
    receiver = receivers.start()
    endpoint = register(client, receiver.url)
    path = f"{ENDPOINTS}{endpoint['id']}/test/"
    assert [client.post(path).status_code for _ in range(10)] == [200] * 10
    response = client.post(path)
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert receiver.count() == 10
    other = register(client, receiver.url)  # per endpoint
    assert client.post(f"{ENDPOINTS}{other['id']}/test/").status_code == 200


def test_bad_type_unknown_endpoint_and_another_account(
    client: TestClient, receivers: Receivers, engine: Engine
) -> None:
    receiver = receivers.start()
    endpoint = register(client, receiver.url)
    path = f"{ENDPOINTS}{endpoint['id']}/test/"
    for refused in ("read", "endpoint.failing"):  # only the five email types
        response = client.post(path, json={"type": refused})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "type"]
    assert client.post(f"{ENDPOINTS}nope/test/").status_code == 404
    stranger = {"X-API-Key": make_key(engine, "globex")}
    assert client.post(path, headers=stranger).status_code == 404
    assert receiver.count() == 0


@pytest.mark.parametrize(
    ("taken", "now", "expected"),
    [
        ([], 0.0, None),
        ([0.0] * 9, 1.0, None),
        ([0.0] * 10, 1.0, 59),
        ([0.0] * 10, 59.5, 1),
        ([0.0] * 10, 60.0, None),  # the first has left the window
        ([0.0] * 5 + [30.0] * 5, 61.0, None),
        ([10.0] * 10, 30.2, 40),
    ],
)
def test_limiter_allows_ten_a_minute(taken: list[float], now: float, expected: int | None) -> None:
    limiter = ProbeLimiter()
    for at in taken:
        assert limiter.take("e", at) is None
    assert limiter.take("e", now) == expected
    assert limiter.take("other", now) is None


def test_limiter_memory_is_bounded() -> None:
    limiter = ProbeLimiter(max_keys=3)
    for n in range(10):
        limiter.take(str(n), float(n) * 100)
    assert len(limiter._taken) <= 3
    busy = ProbeLimiter(max_keys=2)
    for n in range(5):
        busy.take(str(n), 0.0)
    assert len(busy._taken) <= 2
