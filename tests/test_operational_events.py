"""Operational events: an endpoint failing too long or disabled is announced to the account's
other endpoints, once per run of failures, through the outbox like any event."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlmodel import Session, col

from models.base import utcnow
from models.deliveries import Delivery
from models.event_types import EventType, Priority
from models.events import Event
from models.jobs import DeliveryStatus, Result
from tests.test_scheduler import (
    fail,
    make_account,
    make_endpoint,
    make_events,
    scheduler,
    settle,
)

HOUR = timedelta(hours=1)
OPS = [EventType.ENDPOINT_FAILING, EventType.ENDPOINT_DISABLED]


def announced(engine: Engine) -> list[tuple[dict[str, Any], list[tuple[str, int]]]]:
    """Every operational event stored, oldest first, with (endpoint, priority) of its deliveries."""
    with Session(engine) as session:
        stored = session.execute(
            select(Event)
            .where(col(Event.type).in_([t.value for t in OPS]))
            .order_by(col(Event.created_at))
        ).scalars()
        found = []
        for event in stored:
            to = session.execute(
                select(col(Delivery.endpoint_id), col(Delivery.priority)).where(
                    col(Delivery.event_id) == event.id
                )
            ).all()
            found.append((json.loads(event.body), sorted((e, p) for e, p in to)))
        return found


@pytest.fixture
def setup(engine: Engine) -> dict[str, str]:
    account = make_account(engine)
    other_account = make_account(engine, "globex")
    return {
        "account": account,
        # The endpoint in trouble subscribes to everything, its own word included.
        "down": make_endpoint(engine, account, "https://down.example/", [*EventType]),
        "ops": make_endpoint(engine, account, "https://ops.example/", OPS),
        "failing_only": make_endpoint(engine, account, "https://f.example/", [EventType.ENDPOINT_FAILING]),
        "emails": make_endpoint(engine, account, "https://mail.example/", [EventType.OPENED]),
        "stranger": make_endpoint(engine, other_account, "https://s.example/", OPS),
    }  # fmt: skip


def test_one_endpoint_failing_per_run_of_failures(engine: Engine, setup: dict[str, str]) -> None:
    make_events(engine, setup["account"], *["opened"] * 8)
    s = scheduler(engine)
    s.failing_after = HOUR
    t0 = utcnow()
    jobs = [j for j in s.claim(t0) if j.endpoint_id == setup["down"]]
    assert len(jobs) == 8
    s.record([fail(jobs[0], t0)], t0)
    s.record([fail(jobs[1], t0 + HOUR - timedelta(seconds=1))], t0 + HOUR - timedelta(seconds=1))
    assert announced(engine) == []
    t1 = t0 + HOUR
    s.record([fail(jobs[2], t1, status_code=503)], t1)
    assert s.announced == 2
    s.record([fail(jobs[3], t1 + HOUR)], t1 + HOUR)  # the same run: no second word
    [(payload, to)] = announced(engine)
    assert set(payload) == {"id", "type", "endpoint_id", "url", "reason", "last_error", "timestamp"}
    assert payload["type"] == "endpoint.failing"
    assert payload["endpoint_id"] == setup["down"]
    assert payload["url"] == "https://down.example/"
    assert "1:00:00" in payload["reason"]
    assert payload["last_error"]["status_code"] == 503
    assert payload["last_error"]["error"] is None
    assert payload["id"].startswith("evt-")
    high = int(Priority.HIGH)
    # To the account's other endpoints subscribed to it: not the one it is about, not the
    # ones that want emails only, not another account's.
    assert to == sorted([(setup["ops"], high), (setup["failing_only"], high)])

    # A success ends the run; the next run is announced again.
    t2 = t1 + 2 * HOUR
    s.record([settle(jobs[4], t2)], t2)
    s.record([fail(jobs[5], t2 + timedelta(minutes=1), None)], t2 + timedelta(minutes=1))
    assert len(announced(engine)) == 1
    t3 = t2 + timedelta(minutes=1) + HOUR
    s.record([fail(jobs[6], t3, None)], t3)
    assert len(announced(engine)) == 2
    s.record([fail(jobs[7], t3 + HOUR)], t3 + HOUR)
    assert len(announced(engine)) == 2


def test_a_batch_with_a_success_is_no_failure(engine: Engine, setup: dict[str, str]) -> None:
    make_events(engine, setup["account"], *["opened"] * 3)
    s = scheduler(engine)
    s.failing_after = HOUR
    t0 = utcnow()
    a, b, c = [j for j in s.claim(t0) if j.endpoint_id == setup["down"]]
    s.record([fail(a, t0)], t0)
    t1 = t0 + HOUR
    s.record([fail(b, t1), settle(c, t1)], t1)
    assert announced(engine) == []


def test_410_announces_endpoint_disabled(engine: Engine, setup: dict[str, str]) -> None:
    make_events(engine, setup["account"], "opened", "bounced")
    s = scheduler(engine)
    now = utcnow()
    job = next(j for j in s.claim(now) if j.endpoint_id == setup["down"])
    gone = Result(job, DeliveryStatus.FAILED, None, at=now, status_code=410, gone=True)
    assert s.record([gone], now) == [setup["down"]]
    [(payload, to)] = announced(engine)
    assert payload["type"] == "endpoint.disabled"
    assert payload["endpoint_id"] == setup["down"]
    assert "410" in payload["reason"]
    assert payload["last_error"]["status_code"] == 410
    assert [e for e, _ in to] == [setup["ops"]]


def test_failing_past_disable_after_announces_endpoint_disabled_only(
    engine: Engine, setup: dict[str, str]
) -> None:
    make_events(engine, setup["account"], "opened", "clicked")
    s = scheduler(engine, disable_after=HOUR)
    s.failing_after = HOUR
    t0 = utcnow()
    a, b = [j for j in s.claim(t0) if j.endpoint_id == setup["down"]]
    s.record([fail(a, t0)], t0)
    assert s.record([fail(b, t0 + HOUR, None)], t0 + HOUR) == [setup["down"]]
    [(payload, to)] = announced(engine)
    assert payload["type"] == "endpoint.disabled"
    assert payload["last_error"]["status_code"] is None
    assert [e for e, _ in to] == [setup["ops"]]


def test_announcements_are_claimed_and_delivered_like_any_event(
    engine: Engine, setup: dict[str, str]
) -> None:
    make_events(engine, setup["account"], "opened")
    s = scheduler(engine)
    now = utcnow()
    job = next(j for j in s.claim(now) if j.endpoint_id == setup["down"])
    s.record([Result(job, DeliveryStatus.FAILED, None, at=now, status_code=410, gone=True)], now)
    [word] = s.claim(now + timedelta(seconds=1))
    assert word.endpoint_id == setup["ops"]
    assert json.loads(word.body)["type"] == "endpoint.disabled"
    assert word.priority == int(Priority.HIGH)


# --- the API -----------------------------------------------------------------------------------

EVENTS = "/api/emails/events/"
ENDPOINTS = "/api/emails/webhook-endpoints/"


@pytest.mark.parametrize("kind", ["endpoint.failing", "endpoint.disabled"])
def test_posting_an_operational_type_is_422(client: TestClient, api_key: str, kind: str) -> None:
    one = {"type": kind, "recipient": "user@example.com"}
    for body, loc in ((one, ["body", "type"]), ([one], ["body", 0, "type"])):
        response = client.post(EVENTS, json=body, headers={"X-API-Key": api_key})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == loc


def test_endpoints_subscribe_to_operational_types(client: TestClient, api_key: str) -> None:
    response = client.post(
        ENDPOINTS,
        json={"url": "https://ops.example/", "events": ["endpoint.failing", "endpoint.disabled"]},
        headers={"X-API-Key": api_key},
    )
    assert response.status_code == 201, response.text
    assert response.json()["events"] == ["endpoint.failing", "endpoint.disabled"]
    bad = client.post(
        ENDPOINTS,
        json={"url": "https://ops.example/", "events": ["endpoint.exploded"]},
        headers={"X-API-Key": api_key},
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "events", 0]
