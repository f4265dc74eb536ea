"""``/metrics``: names and types, counters equal to the rows, no account or URL, never hangs."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import ray
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select, update
from sqlmodel import Session, col

from api.app import create_app
from dispatcher.settings import Settings
from models.base import utcnow
from models.deliveries import Attempt, Delivery
from tests import test_pipeline
from tests.conftest import delivery_statuses
from tests.receivers import Receivers, fail_first, ok, status, wait_until
from tests.test_pipeline import Api, event

# The pipeline's fixtures: a dispatcher and an API on real receivers.
receivers = test_pipeline.receivers
start = test_pipeline.start

ENDPOINTS = "/api/emails/webhook-endpoints/"
EVENTS = "/api/emails/events/"

# The table, and what the service adds; (type, label names).
REQUIRED = {
    "sentinmail_events_accepted": ("counter", {"type"}),
    "sentinmail_attempts": ("counter", {"result"}),
    "sentinmail_attempt_duration_seconds": ("histogram", {"result"}),
    "sentinmail_deliveries_finished": ("counter", {"status"}),
    "sentinmail_backlog_deliveries": ("gauge", {"priority"}),
    "sentinmail_backlog_oldest_seconds": ("gauge", {"priority"}),
    "sentinmail_in_flight_deliveries": ("gauge", set()),
    "sentinmail_breakers_open": ("gauge", set()),
    "sentinmail_endpoints_disabled": ("gauge", set()),
    "sentinmail_actor_restarts": ("counter", {"actor"}),
    "sentinmail_ingest_request_duration_seconds": ("histogram", set()),
    "sentinmail_events_duplicate": ("counter", set()),
    "sentinmail_purged_rows": ("counter", {"table"}),
    "sentinmail_oldest_event_age_seconds": ("gauge", set()),
    "sentinmail_queued_deliveries": ("gauge", set()),
    "sentinmail_attempts_in_progress": ("gauge", set()),
    "sentinmail_lanes": ("gauge", set()),
    "sentinmail_dispatcher_up": ("gauge", set()),
    "sentinmail_actors_up": ("gauge", {"actor"}),
    "sentinmail_database_up": ("gauge", set()),
    "sentinmail_ingest_saturated_requests": ("counter", set()),
    "sentinmail_ingest_waiting_events": ("gauge", set()),
}
# Every label a sample may carry, and the values it may take: nothing else, so no account,
# endpoint or URL can ever appear in one.
LABEL_VALUES = {
    "type": {"delivered", "opened", "clicked", "bounced", "unsubscribed"},
    "result": {"success", "failure"},
    "status": {"succeeded", "failed", "cancelled"},
    "priority": {"high", "low"},
    "table": {"event", "delivery", "attempt"},
    "actor": {"scheduler", "router", "delivery"},
}


def scrape(client: TestClient) -> dict[str, Any]:
    """``/metrics`` parsed: family name -> family."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def samples(families: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    return samples(families)[name, tuple(sorted(labels.items()))]


@pytest.fixture
def fresh(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """A client on an app whose /metrics reads afresh at every scrape."""
    app = create_app(settings, engine)
    app.state.metrics.readings.min_age = 0
    app.state.metrics.readings.cost_factor = 0
    with TestClient(app) as client:
        yield client


def test_names_types_and_labels(fresh: TestClient) -> None:
    families = scrape(fresh)
    for name, (kind, labels) in REQUIRED.items():
        assert name in families, name
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)


def test_it_needs_no_api_key_and_is_documented_as_text(fresh: TestClient) -> None:
    operation = fresh.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert list(operation["responses"]["200"]["content"]) == ["text/plain"]
    assert "security" not in operation
    assert fresh.get("/metrics", headers={"X-API-Key": "sk_wrong"}).status_code == 200


def test_ingestion_counts_each_202_by_type(fresh: TestClient, api_key: str) -> None:
    headers = {"X-API-Key": api_key}
    batch = [
        {"type": "opened", "recipient": "a@example.com", "id": "evt-a"},
        {"type": "opened", "recipient": "a@example.com"},
        {"type": "bounced", "recipient": "a@example.com", "id": "evt-b"},
        {"type": "bounced", "recipient": "a@example.com", "id": "evt-b"},  # within the batch
    ]
    assert fresh.post(EVENTS, json=batch, headers=headers).status_code == 202
    again = [{"type": "clicked", "recipient": "a@example.com", "id": "evt-a"}]  # seen before
    assert fresh.post(EVENTS, json=again, headers=headers).status_code == 202
    assert fresh.post(EVENTS, json={"type": "nope"}, headers=headers).status_code == 422
    families = scrape(fresh)
    accepted = {
        t: value(families, "sentinmail_events_accepted_total", type=t) for t in LABEL_VALUES["type"]
    }
    assert accepted == {"opened": 2, "bounced": 1, "clicked": 0, "delivered": 0, "unsubscribed": 0}
    assert value(families, "sentinmail_events_duplicate_total") == 2
    assert value(families, "sentinmail_ingest_request_duration_seconds_count") == 2  # the 202s


def test_backlog_disabled_endpoints_and_cancellations_from_the_database(
    fresh: TestClient, api_key: str, engine: Engine
) -> None:
    headers = {"X-API-Key": api_key}
    endpoint = fresh.post(
        ENDPOINTS, json={"url": "https://a.example/hook", "events": ["opened", "bounced"]},
        headers=headers,
    ).json()  # fmt: skip
    events = [{"type": "opened", "recipient": "a@example.com"}] * 3
    fresh.post(EVENTS, json=[*events, {"type": "bounced", "recipient": "a@example.com"}],
               headers=headers)  # fmt: skip
    with Session(engine) as session:  # the low ones became due a minute ago; one is due later
        session.execute(
            update(Delivery).where(col(Delivery.priority) == 1)
            .values(due_at=utcnow() - timedelta(minutes=1))
        )  # fmt: skip
        later = session.execute(select(col(Delivery.id)).where(col(Delivery.priority) == 1))
        session.execute(
            update(Delivery).where(col(Delivery.id) == later.scalars().first())
            .values(due_at=utcnow() + timedelta(hours=1))
        )  # fmt: skip
        session.commit()
    families = scrape(fresh)
    assert value(families, "sentinmail_backlog_deliveries", priority="low") == 2
    assert value(families, "sentinmail_backlog_deliveries", priority="high") == 1
    assert 59 <= value(families, "sentinmail_backlog_oldest_seconds", priority="low") < 120
    assert value(families, "sentinmail_backlog_oldest_seconds", priority="high") < 60
    assert value(families, "sentinmail_endpoints_disabled") == 0

    patched = fresh.patch(f"{ENDPOINTS}{endpoint['id']}/", json={"enabled": False}, headers=headers)
    assert patched.status_code == 200
    families = scrape(fresh)
    assert value(families, "sentinmail_endpoints_disabled") == 1
    assert value(families, "sentinmail_backlog_deliveries", priority="low") == 0
    assert value(families, "sentinmail_deliveries_finished_total", status="cancelled") == 4
    assert delivery_statuses(engine) == {"cancelled": 4}


class SlowDispatcher:
    """A dispatcher whose actors take ``seconds`` to answer, whatever time they are given."""

    def __init__(self, seconds: float, answers: dict[str, list[Any]]) -> None:
        self.seconds = seconds
        self.answers = answers
        self.calls = 0

    def wake(self) -> None: ...

    def forget(self, endpoint_ids: list[str]) -> None: ...

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        return {"status": "ok"}

    def vitals(self, timeout: float) -> dict[str, list[Any]]:
        self.calls += 1
        time.sleep(self.seconds)
        return self.answers

    def breaker(self, origin: str, timeout: float) -> str | None:
        return None


ANSWERS: dict[str, list[Any]] = {
    "scheduler": [{"in_flight": 7}],
    "router": [2],
    "delivery": [
        {"lanes": 3, "queued": 4, "in_flight": 5, "open_breakers": 1},
        None,  # this one did not answer in time
    ],
}


def test_an_actor_that_does_not_answer_leaves_its_numbers_out(
    settings: Settings, engine: Engine
) -> None:
    app = create_app(settings, engine, SlowDispatcher(0.0, ANSWERS))
    with TestClient(app) as client:
        families = scrape(client)
    assert value(families, "sentinmail_dispatcher_up") == 0
    assert value(families, "sentinmail_actors_up", actor="delivery") == 1
    assert value(families, "sentinmail_actors_up", actor="scheduler") == 1
    assert value(families, "sentinmail_in_flight_deliveries") == 7
    assert value(families, "sentinmail_breakers_open") == 1
    assert value(families, "sentinmail_queued_deliveries") == 4
    assert value(families, "sentinmail_database_up") == 1


@pytest.mark.serial  # a wall-clock bound: alone on the machine in `make test`
def test_a_hanging_dispatcher_never_hangs_a_scrape(settings: Settings, engine: Engine) -> None:
    slow = SlowDispatcher(5.0, ANSWERS)
    app = create_app(settings, engine, slow)
    app.state.metrics.readings.min_age = 0
    with TestClient(app) as client:
        started = time.monotonic()
        first = scrape(client)
        second = scrape(client)
        took = time.monotonic() - started
    assert took < 4.0  # two scrapes of about a second each, not two of five
    for families in (first, second):
        assert value(families, "sentinmail_dispatcher_up") == 0
        assert value(families, "sentinmail_database_up") == 1
        assert "sentinmail_attempts" in families
    assert slow.calls == 1  # the second scrape waited on the first call, sent no other


@pytest.mark.ray
def test_counters_equal_the_rows_after_a_run_on_real_receivers(
    start: Callable[..., Api], receivers: Receivers, engine: Engine
) -> None:
    api = start(retry_schedule="0,0.2,0.2")
    hosts = {
        "fine": api.register(receivers.start(ok), ["opened", "bounced"]),
        "flaky": api.register(receivers.start(fail_first(3)), ["opened"]),
        "broken": api.register(receivers.start(status(500)), ["unsubscribed"]),
        "gone": api.register(receivers.start(status(410)), ["clicked"]),
    }
    api.client.app.state.metrics.readings.min_age = 0  # type: ignore[attr-defined]
    api.client.app.state.metrics.readings.cost_factor = 0  # type: ignore[attr-defined]
    seen: list[dict[Any, float]] = []
    stop = threading.Event()

    def watch() -> None:  # scrapes all along: no counter may ever go back
        while not stop.is_set():
            seen.append(samples(scrape(api.client)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        api.post(*(event("opened") for _ in range(20)))
        api.post(*(event("bounced") for _ in range(5)), event("unsubscribed"))
        api.post(event("clicked"), event("clicked"))
        # 25 + 20 + 1 + 2 deliveries: all finish (the flaky host's first three retry).
        wait_until(lambda: sum(api.statuses().values()) == 48, timeout=30)
        wait_until(lambda: set(api.statuses()) <= {"succeeded", "failed", "cancelled"}, timeout=30)
        wait_until(lambda: value(scrape(api.client), "sentinmail_in_flight_deliveries") == 0)
    finally:
        stop.set()
        watcher.join(30)
    families = scrape(api.client)

    with Session(engine) as session:
        attempts = session.execute(select(func.count()).select_from(Attempt)).scalar_one()
        ok_attempts = session.execute(
            select(func.count()).where(col(Attempt.status_code).between(200, 299))
        ).scalar_one()
    statuses = api.statuses()
    assert statuses["succeeded"] == 45
    assert attempts > 48  # retries too
    assert value(families, "sentinmail_attempts_total", result="success") == ok_attempts
    assert value(families, "sentinmail_attempts_total", result="failure") == attempts - ok_attempts
    assert (
        value(families, "sentinmail_attempt_duration_seconds_count", result="success")
        + value(families, "sentinmail_attempt_duration_seconds_count", result="failure")
        == attempts
    )
    for final in ("succeeded", "failed", "cancelled"):
        expected = statuses.get(final, 0)
        assert value(families, "sentinmail_deliveries_finished_total", status=final) == expected
    assert value(families, "sentinmail_endpoints_disabled") == 1  # the 410
    assert value(families, "sentinmail_dispatcher_up") == 1

    counters = [key for key in seen[-1] if key[0].endswith(("_total", "_count", "_sum", "_bucket"))]
    assert len(seen) > 5
    for earlier, later in itertools.pairwise(seen):
        for key in counters:
            assert later.get(key, 0) >= earlier.get(key, 0), key

    # No account, endpoint or URL anywhere: labels are from fixed sets, and no id,
    # port or name of this run appears in the text.
    text = api.client.get("/metrics").text
    for family in families.values():
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                if label != "le":
                    assert label_value in LABEL_VALUES[label], (sample.name, label)
    for endpoint in hosts.values():
        port = re.search(r":(\d+)/", endpoint["url"])
        assert port is not None
        for needle in (endpoint["id"], endpoint["url"], f":{port.group(1)}", "acme"):
            assert needle not in text


@pytest.mark.ray
def test_an_actor_restart_is_counted(start: Callable[..., Api], receivers: Receivers) -> None:
    api = start()
    api.client.app.state.metrics.readings.min_age = 0  # type: ignore[attr-defined]
    api.client.app.state.metrics.readings.cost_factor = 0  # type: ignore[attr-defined]
    restarts = "sentinmail_actor_restarts_total"
    assert value(scrape(api.client), restarts, actor="delivery") == 0
    ray.kill(api.dispatcher.workers[0], no_restart=False)
    wait_until(lambda: value(scrape(api.client), restarts, actor="delivery") == 1, timeout=60)
    wait_until(lambda: value(scrape(api.client), "sentinmail_dispatcher_up") == 1, timeout=60)
    # And the restarted actor delivers.
    receiver = receivers.start()
    api.register(receiver, ["opened"])
    api.post(event("opened"))
    wait_until(lambda: receiver.count() == 1)
    families = scrape(api.client)
    assert value(families, restarts, actor="scheduler") == 0
    assert value(families, restarts, actor="router") == 0


INGEST_IN_A_PROCESS = """
import sys
from api.metrics import IngestMetrics
from models.events import EventIn, Ingested

metrics = IngestMetrics(registry=None)
events = [EventIn(type=sys.argv[1], recipient="a@example.com")] * int(sys.argv[2])
metrics.accepted(events, Ingested([f"e{i}" for i in range(len(events))], [], len(events)))
metrics.duration.observe(0.01)
metrics.waiting(int(sys.argv[2]))
metrics.saturated(1)
"""

EXPOSE = """
import sys
from api.metrics import Metrics
from models.db import make_engine
import asyncio

print(asyncio.run(Metrics(make_engine(sys.argv[1]), None).exposition()).decode())
"""


def test_api_processes_sharing_a_multiprocess_directory_add_up(
    tmp_path: Path, database_url: str
) -> None:
    # Several API processes on one port (each a prometheus-client process of its own):
    # with PROMETHEUS_MULTIPROC_DIR, any one of them serves their sum.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def python(code: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout

    python(INGEST_IN_A_PROCESS, "opened", "3")
    python(INGEST_IN_A_PROCESS, "opened", "4")
    python(INGEST_IN_A_PROCESS, "bounced", "1")
    families = {f.name: f for f in text_string_to_metric_families(python(EXPOSE, database_url))}
    assert value(families, "sentinmail_events_accepted_total", type="opened") == 7
    assert value(families, "sentinmail_events_accepted_total", type="bounced") == 1
    assert value(families, "sentinmail_ingest_request_duration_seconds_count") == 3
    assert value(families, "sentinmail_ingest_saturated_requests_total") == 3
    assert value(families, "sentinmail_ingest_waiting_events") == 8  # each process's, added up
    assert value(families, "sentinmail_attempts_total", result="success") == 0  # the database's
