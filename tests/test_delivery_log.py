"""The delivery log, retry of one delivery and recovery of a window, through the API.

No Ray here: the dispatcher's part is played by the database functions it
calls (claim, record, counters), so every state a delivery can be in is set
up exactly. ``tests/test_recovery_pipeline.py`` runs the same stories with
the real dispatcher and real receivers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session

from api.app import create_app
from dispatcher.settings import Settings
from models import counters, deliveries, recovery
from models.base import utcnow
from models.delivery_log import CURSOR_PATTERN, decode_cursor, encode_cursor
from models.endpoints import Endpoint
from models.errors import InvalidInput
from models.event_types import Priority
from models.jobs import DeliveryStatus, Result
from tests.conftest import lease_due, make_key

ENDPOINTS = "/api/emails/webhook-endpoints/"
EVENTS = "/api/emails/events/"
LOG = "/api/emails/deliveries/"


class FakeDispatcher:
    """Counts wake-ups; the API asks nothing else of it here."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1

    def forget(self, endpoint_ids: list[str]) -> None:
        pass

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        return {}

    def vitals(self, timeout: float) -> dict[str, list[Any]]:
        return {}

    def breaker(self, origin: str, timeout: float) -> str | None:
        return "closed"


class Api:
    def __init__(self, client: TestClient, key: str, engine: Engine) -> None:
        self.client = client
        self.headers = {"X-API-Key": key}
        self.engine = engine

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, params=params, headers=self.headers)

    def post(self, path: str, body: Any = None) -> Any:
        return self.client.post(path, json=body, headers=self.headers)

    def endpoint(self, events: list[str], url: str = "https://a.example/hook") -> str:
        response = self.post(ENDPOINTS, {"url": url, "events": events})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def events(self, *types: str, **fields: Any) -> list[str]:
        body = [{"type": t, "recipient": "user@example.com", **fields} for t in types]
        response = self.post(EVENTS, body)
        assert response.status_code == 202, response.text
        return list(response.json()["accepted"])

    def patch(self, endpoint_id: str, **changes: Any) -> None:
        response = self.client.patch(
            f"{ENDPOINTS}{endpoint_id}/", json=changes, headers=self.headers
        )
        assert response.status_code == 200, response.text

    def log(self, **params: Any) -> list[dict[str, Any]]:
        response = self.get(LOG, **params)
        assert response.status_code == 200, response.text
        return list(response.json()["results"])


@pytest.fixture
def dispatcher() -> FakeDispatcher:
    return FakeDispatcher()


@pytest.fixture
def api(settings: Settings, engine: Engine, dispatcher: FakeDispatcher) -> Iterator[Api]:
    with TestClient(create_app(settings, engine, dispatcher)) as client:
        yield Api(client, make_key(engine, "acme"), engine)


def attempt_all(
    engine: Engine, answer: Callable[[str], tuple[DeliveryStatus, int | None, str | None]]
) -> None:
    """Claim every due delivery and record one attempt each, as the scheduler does.

    ``answer(event_id)`` gives the new status, the HTTP status and the body.
    """
    now = utcnow()
    with Session(engine) as session:
        jobs = lease_due(session, now=now, limit=10_000)
        results = []
        for job in jobs:
            status, code, body = answer(job.event_id)
            results.append(
                Result(
                    job=job,
                    status=status,
                    due_at=now + timedelta(hours=1) if status is DeliveryStatus.PENDING else None,
                    at=now,
                    status_code=code,
                    error=None if status is DeliveryStatus.SUCCEEDED else f"HTTP {code}",
                    duration_ms=12,
                    response_body=body,
                )
            )
        moved = deliveries.record(session, results, now=now)
        counters.add(session, counters.tally_attempts(results) + counters.tally_finished(moved))
        session.commit()


def failing(_event_id: str) -> tuple[DeliveryStatus, int | None, str | None]:
    return DeliveryStatus.FAILED, 500, '{"error": "database down"}'


def succeeding(_event_id: str) -> tuple[DeliveryStatus, int | None, str | None]:
    return DeliveryStatus.SUCCEEDED, 200, "OK"


def finished(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {
            k: v for (name, k), v in counters.read(session).items() if name == counters.FINISHED
        }


# --- the log -------------------------------------------------------------------------------


def test_the_log_shows_each_failure_with_the_receivers_answer_newest_first(api: Api) -> None:
    endpoint = api.endpoint(["opened", "bounced"])
    ids = api.events("opened", "bounced")
    attempt_all(api.engine, failing)
    items = api.log()
    assert [i["event_id"] for i in items] == ids[::-1]
    first = items[-1]
    assert first["event_type"] == "opened"
    assert first["endpoint_id"] == endpoint
    assert first["status"] == "failed"
    assert first["attempt_count"] == 1
    assert first["next_attempt_at"] is None
    assert first["last_attempt"]["status_code"] == 500
    assert first["last_attempt"]["response_body"] == '{"error": "database down"}'
    assert isinstance(first["id"], str)
    # The event view names the same delivery.
    event = api.get(f"{EVENTS}{ids[0]}/").json()
    assert event["deliveries"][0]["id"] == first["id"]
    assert event["deliveries"][0]["attempts"][0]["response_body"] == '{"error": "database down"}'


def test_a_pending_delivery_has_no_attempt_yet_and_says_when_it_is_due(api: Api) -> None:
    api.endpoint(["opened"])
    api.events("opened")
    (item,) = api.log()
    assert item["status"] == "pending"
    assert item["attempt_count"] == 0
    assert item["last_attempt"] is None
    assert item["next_attempt_at"] is not None


def test_one_delivery_in_full_with_payload_and_every_attempt_oldest_first(api: Api) -> None:
    api.endpoint(["clicked"])
    (event_id,) = api.events("clicked", campaign_id="spring")
    attempt_all(api.engine, lambda _: (DeliveryStatus.PENDING, 503, "busy"))
    with Session(api.engine) as session:  # due again now
        session.execute(text("UPDATE delivery SET due_at = created_at"))
        session.commit()
    attempt_all(api.engine, succeeding)
    (item,) = api.log()
    for path in (f"{LOG}{item['id']}/", f"{LOG}{item['id']}"):
        detail = api.get(path).json()
        assert detail["payload"]["id"] == event_id
        assert detail["payload"]["campaign_id"] == "spring"
        assert [(a["status_code"], a["response_body"]) for a in detail["attempts"]] == [
            (503, "busy"),
            (200, "OK"),
        ]
        assert detail["attempt_count"] == 2
        assert detail["last_attempt"]["status_code"] == 200
        assert detail["status"] == "succeeded"


def test_filters_each_narrow_the_log(api: Api) -> None:
    first = api.endpoint(["opened", "bounced"])
    second = api.endpoint(["opened"], url="https://b.example/hook")
    opened, bounced = api.events("opened", "bounced")
    attempt_all(api.engine, lambda e: failing(e) if e == bounced else succeeding(e))
    assert {(i["endpoint_id"], i["event_id"]) for i in api.log(endpoint_id=second)} == {
        (second, opened)
    }
    assert [i["event_id"] for i in api.log(status="failed")] == [bounced]
    assert {i["event_id"] for i in api.log(status="succeeded")} == {opened}
    assert [i["event_id"] for i in api.log(event_type="bounced")] == [bounced]
    assert len(api.log(event_id=opened)) == 2
    assert api.log(endpoint_id=first, status="failed", event_type="bounced")[0]["event_id"] == (
        bounced
    )
    assert api.log(endpoint_id=second, event_type="bounced") == []
    now = datetime.now(UTC)
    assert len(api.log(since=(now - timedelta(minutes=5)).isoformat())) == 3
    assert api.log(since=(now + timedelta(minutes=5)).isoformat()) == []
    assert api.log(until=(now - timedelta(minutes=5)).isoformat()) == []
    assert len(api.log(until=(now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S"))) == 3


def test_a_cursor_walk_neither_skips_nor_repeats_while_deliveries_arrive(api: Api) -> None:
    api.endpoint(["opened"])
    api.events(*["opened"] * 23)
    expected = [i["id"] for i in api.log(limit=250)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor is not None:
            params["cursor"] = cursor
        page = api.get(LOG, **params).json()
        seen.extend(i["id"] for i in page["results"])
        api.events("opened", "opened")  # newer than the first page: not in this walk
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == expected
    assert len(api.log(limit=250)) == 23 + 2 * pages


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 251}, "limit"),
        ({"status": "lost"}, "status"),
        ({"event_type": "read"}, "event_type"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-02-30T00:00:00Z"}, "until"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "A" * 21 + "B"}, "cursor"),  # the right length, not a cursor
        ({"event_id": "a/b"}, "event_id"),
    ],
)
def test_a_bad_filter_is_a_422_naming_it(api: Api, params: dict[str, Any], field: str) -> None:
    response = api.get(LOG, **params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", field]


@pytest.mark.parametrize(
    "at",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 4, 2, 14, 30, 0, 123456, tzinfo=UTC),
        datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
@pytest.mark.parametrize("delivery_id", [1, 255, 2**40 + 7, 2**63 - 1])
def test_cursors_round_trip(at: datetime, delivery_id: int) -> None:
    cursor = encode_cursor(at, delivery_id)
    assert re.fullmatch(CURSOR_PATTERN, cursor)
    assert decode_cursor(cursor) == (at, delivery_id)


def test_every_cursor_of_the_pattern_is_taken() -> None:
    # Past every stored time and id: clamped, everything stored is older.
    assert decode_cursor("_" * 21 + "w") == (
        datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        2**63 - 1,
    )
    assert decode_cursor("A" * 22) == (datetime(1970, 1, 1, tzinfo=UTC), 0)
    for bad in ("AAAA", "A" * 21 + "B", "A" * 23):
        with pytest.raises(InvalidInput):
            decode_cursor(bad)


def test_another_accounts_deliveries_are_invisible(api: Api, engine: Engine) -> None:
    api.endpoint(["opened"])
    api.events("opened")
    attempt_all(engine, failing)
    (item,) = api.log()
    stranger = {"X-API-Key": make_key(engine, "globex")}
    client = api.client
    assert client.get(LOG, headers=stranger).json() == {"results": [], "next_cursor": None}
    assert client.get(f"{LOG}{item['id']}/", headers=stranger).status_code == 404
    assert client.post(f"{LOG}{item['id']}/retry/", headers=stranger).status_code == 404
    assert client.get(LOG).status_code == 401
    for missing in ("0", "99999999", "abc", "-1", "99999999999999999999999"):
        assert api.get(f"{LOG}{missing}/").status_code == 404
        assert api.post(f"{LOG}{missing}/retry/").status_code == 404


# --- retry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [failing, succeeding])
def test_retry_makes_a_finished_delivery_due_now_and_wakes_the_dispatcher(
    api: Api, dispatcher: FakeDispatcher, outcome: Callable[..., Any]
) -> None:
    api.endpoint(["opened"])
    api.events("opened")
    attempt_all(api.engine, outcome)
    (item,) = api.log()
    before = finished(api.engine)
    time.sleep(0.3)  # a wake-up ingestion deferred (api.wakeups) has happened by now
    wakes = dispatcher.wakes
    response = api.post(f"{LOG}{item['id']}/retry")
    assert response.status_code == 202, response.text
    retried = response.json()
    assert (retried["id"], retried["status"]) == (item["id"], "pending")
    assert datetime.fromisoformat(retried["next_attempt_at"]) <= datetime.now(UTC)
    assert dispatcher.wakes == wakes + 1
    # One more attempt is claimed at once; finishing again counts again, never less.
    attempt_all(api.engine, succeeding)
    (after,) = api.log()
    assert (after["status"], after["attempt_count"]) == ("succeeded", 2)
    counted = finished(api.engine)
    assert counted["succeeded"] == before.get("succeeded", 0) + 1
    assert counted.get("failed", 0) == before.get("failed", 0)


def test_retry_of_a_pending_delivery_brings_it_forward(api: Api) -> None:
    api.endpoint(["opened"])
    api.events("opened")
    attempt_all(api.engine, lambda _: (DeliveryStatus.PENDING, 500, "later"))
    (item,) = api.log()
    assert datetime.fromisoformat(item["next_attempt_at"]) > datetime.now(UTC)
    assert api.post(f"{LOG}{item['id']}/retry/").status_code == 202
    with Session(api.engine) as session:
        assert len(lease_due(session, now=utcnow(), limit=10)) == 1


def test_retry_is_refused_while_attempted_and_for_a_disabled_or_deleted_endpoint(
    api: Api,
) -> None:
    endpoint = api.endpoint(["opened"])
    api.events("opened")
    with Session(api.engine) as session:
        lease_due(session, now=utcnow(), limit=10)
    (item,) = api.log()
    retry = f"{LOG}{item['id']}/retry/"
    response = api.post(retry)
    assert response.status_code == 409
    assert "being attempted" in response.json()["detail"]
    attempt_all(api.engine, failing)  # nothing due: still leased
    with Session(api.engine) as session:
        session.execute(text("UPDATE delivery SET status = 'failed'"))
        session.commit()
    api.patch(endpoint, enabled=False)
    response = api.post(retry)
    assert response.status_code == 409
    assert "enable it first" in response.json()["detail"]
    api.patch(endpoint, enabled=True)
    assert api.post(retry).status_code == 202
    assert api.client.delete(f"{ENDPOINTS}{endpoint}/", headers=api.headers).status_code == 204
    response = api.post(retry)
    assert response.status_code == 409
    assert "deleted" in response.json()["detail"]


# --- recover -------------------------------------------------------------------------------


def recover(api: Api, endpoint: str, **body: Any) -> Any:
    body.setdefault("since", (datetime.now(UTC) - timedelta(hours=1)).isoformat())
    return api.post(f"{ENDPOINTS}{endpoint}/recover/", body)


def test_recover_brings_back_what_a_disabled_endpoint_missed_once(
    api: Api, dispatcher: FakeDispatcher
) -> None:
    endpoint = api.endpoint(["opened", "bounced"])
    delivered = api.events("opened")
    attempt_all(api.engine, succeeding)
    failed = api.events("opened")
    attempt_all(api.engine, failing)
    api.patch(endpoint, enabled=False)
    missed = api.events("opened", "bounced", "clicked")  # clicked: not subscribed
    assert api.log(event_id=missed[0]) == []
    api.patch(endpoint, enabled=True)
    assert api.log(status="pending") == []  # enabling replays nothing by itself
    time.sleep(0.3)  # a wake-up ingestion deferred (api.wakeups) has happened by now
    wakes = dispatcher.wakes
    response = recover(api, endpoint)
    assert response.status_code == 202, response.text
    assert response.json() == {"deliveries": 3}
    assert dispatcher.wakes == wakes + 1
    pending = api.log(status="pending")
    assert sorted(i["event_id"] for i in pending) == sorted([*failed, *missed[:2]])
    assert delivered[0] not in {i["event_id"] for i in pending}
    with Session(api.engine) as session:
        rows = session.execute(
            text("SELECT priority, attempts FROM delivery WHERE status = 'pending'")
        ).all()
    assert {tuple(r) for r in rows} == {(int(Priority.LOW), 0)}  # a fresh, low-priority schedule
    # Idempotent while they are open.
    assert recover(api, endpoint).json() == {"deliveries": 0}
    attempt_all(api.engine, succeeding)
    assert recover(api, endpoint).json() == {"deliveries": 0}


def test_recover_covers_types_subscribed_later_and_only_the_window(api: Api) -> None:
    endpoint = api.endpoint(["opened"])
    old = api.events("clicked")
    with Session(api.engine) as session:  # accepted two days ago
        session.execute(
            text("UPDATE event SET created_at = :at"),
            {"at": (utcnow() - timedelta(days=2)).replace(tzinfo=None)},
        )
        session.commit()
    recent = api.events("clicked")
    api.patch(endpoint, events=["opened", "clicked"])
    assert recover(api, endpoint).json() == {"deliveries": 1}
    assert [i["event_id"] for i in api.log()] == recent
    since = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    assert recover(api, endpoint, since=since).json() == {"deliveries": 1}
    assert {i["event_id"] for i in api.log()} == {*recent, *old}


def test_recover_commits_in_chunks(api: Api, engine: Engine) -> None:
    endpoint_id = api.endpoint(["opened"])
    api.patch(endpoint_id, enabled=False)
    api.events(*["opened"] * 10)
    api.patch(endpoint_id, enabled=True)
    commits: list[int] = []
    with Session(engine) as session:
        endpoint = session.get(Endpoint, endpoint_id)
        assert endpoint is not None
        now = utcnow()
        made = recovery.recover(
            session,
            endpoint,
            since=now - timedelta(hours=1),
            until=now,
            now=now,
            chunk=3,
            committed=commits.append,
        )
    assert made == 10
    assert commits == [3, 3, 3, 1]
    assert len(api.log(status="pending")) == 10


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"since": "2026-01-01T00:00:00Z", "until": "2026-01-16T00:00:00Z"}, "until"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
        ({"since": "last week"}, "since"),
        ({"until": "2026-01-01T00:00:00Z"}, "since"),
        ({"since": "2026-01-01T00:00:00Z", "from": "x"}, "from"),
    ],
)
def test_a_bad_window_is_a_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    endpoint = api.endpoint(["opened"])
    response = api.post(f"{ENDPOINTS}{endpoint}/recover/", body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_recover_needs_an_enabled_endpoint_of_the_account(api: Api, engine: Engine) -> None:
    endpoint = api.endpoint(["opened"])
    api.patch(endpoint, enabled=False)
    response = recover(api, endpoint)
    assert response.status_code == 409
    assert "enable it first" in response.json()["detail"]
    stranger = {"X-API-Key": make_key(engine, "globex")}
    body = {"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"}
    for path in (f"{ENDPOINTS}{endpoint}/recover", f"{ENDPOINTS}nope/recover/"):
        assert api.client.post(path, json=body, headers=stranger).status_code == 404


def test_the_log_benchmark_runs_and_reports_every_filter(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.deliveries_log", "--deliveries", "2000",
         "--repeat", "2", "--recover", "500", "--results-dir", str(tmp_path)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["deliveries"] == 2000
    assert len(result["log"]) == 19
    assert all(result["log"][name]["results"] == 50 for name in ("none", "status=succeeded"))
    assert result["log"]["none"]["walk_20_pages"]["pages"] == 20
    recovered = result["recover"]
    assert (recovered["deliveries"], recovered["second_call_deliveries"]) == (500, 0)
