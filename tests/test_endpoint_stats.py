"""Health statistics: the rollup (pure tallies and percentiles), its equality with the
attempt rows, the stats call (window, tenancy, breaker) and the rollup's retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from api.app import create_app
from dispatcher.retention import PurgePolicy, Purger
from dispatcher.settings import Settings
from models import endpoint_stats
from models.base import utcnow
from models.deliveries import Attempt, Delivery
from models.endpoint_stats import (
    BOUNDS_MS,
    HOUR,
    MINUTE,
    EndpointStat,
    bucket_index,
    hour_of,
    minute_of,
    percentile,
)
from models.jobs import DeliveryStatus, Job, Result
from tests.test_scheduler import make_account, make_endpoint, make_events, scheduler

BASE = "/api/emails/webhook-endpoints/"
T0 = datetime(2026, 4, 2, 14, 30, 15, tzinfo=UTC)


def job(endpoint_id: str = "ep", delivery_id: int = 1) -> Job:
    return Job(delivery_id, "evt", endpoint_id, "https://a.example/", "o", "s", None, 1, 0, b"{}")


def ok(at: datetime, ms: int, endpoint_id: str = "ep") -> Result:
    return Result(job(endpoint_id), DeliveryStatus.SUCCEEDED, None, at=at, status_code=200,
                  duration_ms=ms)  # fmt: skip


def ko(at: datetime, ms: int, code: int | None = 500, error: str | None = None) -> Result:
    return Result(job(), DeliveryStatus.PENDING, at, at=at, status_code=code, error=error,
                  duration_ms=ms)  # fmt: skip


# --- pure --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ms", "index"), [(0, 0), (10, 0), (11, 1), (25, 1), (30_000, 14), (30_001, 15), (10**9, 15)]
)
def test_bucket_index(ms: int, index: int) -> None:
    assert bucket_index(ms) == index


@pytest.mark.parametrize(
    ("histogram", "q", "expected"),
    [
        ([0] * 16, 0.5, None),
        ([10] + [0] * 15, 0.5, 5),  # half-way through 0..10 ms
        ([10] + [0] * 15, 1.0, 10),
        ([0, 4] + [0] * 14, 0.5, 18),  # 10 + 15 * 2/4 = 17.5, rounded
        ([50, 50] + [0] * 14, 0.5, 10),
        ([50, 50] + [0] * 14, 0.95, 10 + round(15 * 45 / 50)),
        ([0] * 15 + [3], 0.5, BOUNDS_MS[-1]),  # past the last bound: that bound
        ([90] + [0] * 14 + [10], 0.95, BOUNDS_MS[-1]),
    ],
)
def test_percentile(histogram: list[int], q: float, expected: int | None) -> None:
    assert percentile(histogram, q) == expected


def test_tally_counts_attempts_per_endpoint_and_minute_with_the_latest_of_each() -> None:
    later = T0 + timedelta(seconds=30)
    released = Result(job(), DeliveryStatus.PENDING, T0, attempted=False)
    tallies = endpoint_stats.tally(
        [ok(T0, 5), ko(later, 40, 503), ko(T0, 12, None, "timeout"), ok(later, 300),
         ok(T0 + timedelta(minutes=1), 1, "other"), released],
        now=T0,
    )  # fmt: skip
    minute, hour = minute_of(T0), hour_of(T0)
    assert set(tallies) == {
        ("ep", MINUTE, minute),
        ("ep", HOUR, hour),
        ("other", MINUTE, minute + timedelta(minutes=1)),
        ("other", HOUR, hour),
    }
    assert tallies["ep", MINUTE, minute] == tallies["ep", HOUR, hour]
    t = tallies["ep", MINUTE, minute]
    assert (t.attempts, t.succeeded) == (4, 2)
    assert t.histogram is not None
    assert sum(t.histogram) == 4
    assert t.histogram[bucket_index(300)] == 1
    assert t.last_success_at == later
    assert (t.last_failure_at, t.last_failure_status, t.last_failure_error) == (later, 503, None)


# --- recorded with the results: equal to the attempt rows --------------------------------------


def attempt_rows(engine: Engine, endpoint_id: str) -> list[Attempt]:
    with Session(engine) as session:
        return list(
            session.execute(
                select(Attempt)
                .join(Delivery, col(Delivery.id) == col(Attempt.delivery_id))
                .where(col(Delivery.endpoint_id) == endpoint_id)
            ).scalars()
        )


def test_stats_equal_the_attempt_rows_after_a_mixed_run(engine: Engine) -> None:
    account = make_account(engine)
    hook = make_endpoint(engine, account, "https://a.example/hook")
    other = make_endpoint(engine, account, "https://b.example/hook")
    make_events(engine, account, *["opened"] * 12)
    s = scheduler(engine)
    now = utcnow()
    claimed = s.claim(now)
    jobs = [j for j in claimed if j.endpoint_id == hook]
    others = [j for j in claimed if j.endpoint_id == other]
    durations = [3, 8, 20, 45, 60, 90, 120, 180, 250, 400, 900, 20_000]
    outcomes: list[Result] = []
    for i, (j, ms) in enumerate(zip(jobs, durations, strict=True)):
        at = now - timedelta(minutes=i % 3, seconds=i)
        if i % 4 == 0:
            outcomes.append(Result(j, DeliveryStatus.PENDING, now, at=at, status_code=503,
                                   duration_ms=ms))  # fmt: skip
        elif i % 4 == 1:
            outcomes.append(Result(j, DeliveryStatus.PENDING, now, at=at, error="timed out",
                                   duration_ms=ms))  # fmt: skip
        else:
            outcomes.append(Result(j, DeliveryStatus.SUCCEEDED, None, at=at, status_code=200,
                                   duration_ms=ms))  # fmt: skip
    # In several batches, and a released job, which is no attempt.
    s.record(outcomes[:5], now)
    s.record([*outcomes[5:], Result(others[0], DeliveryStatus.PENDING, now, attempted=False)], now)
    with Session(engine) as session:
        stats = endpoint_stats.window_stats(session, hook, window=3600, now=now, breaker="unknown")

    rows = attempt_rows(engine, hook)
    succeeded = [a for a in rows if a.status_code is not None and 200 <= a.status_code < 300]
    failed = [a for a in rows if a not in succeeded]
    assert stats.attempts == len(rows) == 12
    assert stats.succeeded == len(succeeded)
    assert stats.failed == len(failed)
    assert stats.success_rate == round(len(succeeded) / len(rows), 4)
    assert stats.last_success_at == max(a.at for a in succeeded)
    latest_failure = max(failed, key=lambda a: a.at)
    assert stats.last_failure is not None
    assert (stats.last_failure.at, stats.last_failure.status_code, stats.last_failure.error) == (
        latest_failure.at, latest_failure.status_code, latest_failure.error,
    )  # fmt: skip
    ordered = sorted(a.duration_ms for a in rows)
    for q, value in ((0.5, stats.p50_ms), (0.95, stats.p95_ms)):
        exact = ordered[max(0, -(-int(q * len(ordered) * 100) // 100) - 1)]
        assert value is not None
        assert bucket_index(value) == bucket_index(exact) or value == BOUNDS_MS[-1]
    # Still open: the retried deliveries (the other endpoint's are not counted).
    with Session(engine) as session:
        open_rows = session.execute(
            select(func.count())
            .select_from(Delivery)
            .where(
                col(Delivery.endpoint_id) == hook,
                col(Delivery.status).in_([DeliveryStatus.PENDING, DeliveryStatus.DELIVERING]),
            )
        ).scalar_one()
    assert stats.pending == open_rows == len(failed)
    assert stats.breaker == "unknown"
    with Session(engine) as session:
        other_stats = endpoint_stats.window_stats(
            session, other, window=60, now=now, breaker="closed"
        )
    assert (other_stats.attempts, other_stats.p50_ms, other_stats.last_failure) == (0, None, None)
    assert other_stats.success_rate is None


def test_the_window_counts_whole_minutes_back_from_now(engine: Engine) -> None:
    account = make_account(engine)
    hook = make_endpoint(engine, account)
    now = T0
    # At 14:30, 14:29, 14:28, 14:20, 13:45, 12:59 and 31 days before.
    ago = (0, 1, 2, 10, 45, 91, 60 * 24 * 31)
    results = [ok(now - timedelta(minutes=m), 10, hook) for m in ago]
    with Session(engine) as session:
        endpoint_stats.record(session, results, now=now)
        session.commit()

    def attempts(window: int) -> int:
        with Session(engine) as session:
            return endpoint_stats.window_stats(
                session, hook, window=window, now=now, breaker="closed"
            ).attempts

    assert attempts(60) == 2  # this minute and the one the window starts in
    assert attempts(180) == 3
    assert attempts(3600) == 5  # from 13:30: minutes to 14:00, then the hour
    assert attempts(7200) == 6  # from 12:30: minutes to 13:00, then two hours
    assert attempts(endpoint_stats.MAX_WINDOW) == 6
    with Session(engine) as session:  # the latest success is the latest, window or not
        stats = endpoint_stats.window_stats(session, hook, window=60, now=now, breaker="closed")
    assert stats.last_success_at == now


# --- the call ---------------------------------------------------------------------------------


class FakeDispatcher:
    """The dispatcher as the API sees it, answering ``breaker`` with a given state."""

    def __init__(self, state: str | None) -> None:
        self.state = state
        self.asked: list[tuple[str, float]] = []

    def wake(self) -> None:
        pass

    def forget(self, endpoint_ids: list[str]) -> None:
        pass

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        return {"status": "ok"}

    def vitals(self, timeout: float) -> dict[str, list[Any]]:
        return {}

    def breaker(self, origin: str, timeout: float) -> str | None:
        self.asked.append((origin, timeout))
        return self.state


@pytest.fixture
def app_with(engine: Engine, settings: Settings) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(dispatcher: Any) -> TestClient:
        client = TestClient(create_app(settings, engine, dispatcher))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def register(client: TestClient, key: str) -> str:
    response = client.post(
        BASE, json={"url": "https://a.example:8443/x", "events": ["opened"]},
        headers={"X-API-Key": key},
    )  # fmt: skip
    assert response.status_code == 201
    return str(response.json()["id"])


@pytest.mark.parametrize(
    ("state", "shown"),
    [("closed", "closed"), ("open", "open"), ("half_open", "half_open"), (None, "unknown")],
)
def test_the_breaker_is_the_dispatchers_view_or_unknown(
    app_with: Any, api_key: str, state: str | None, shown: str
) -> None:
    dispatcher = FakeDispatcher(state)
    client = app_with(dispatcher)
    hook = register(client, api_key)
    response = client.get(f"{BASE}{hook}/stats/", headers={"X-API-Key": api_key})
    assert response.status_code == 200, response.text
    assert response.json()["breaker"] == shown
    assert dispatcher.asked == [("https://a.example:8443", 1.0)]


def test_the_stats_call_without_a_dispatcher(client: TestClient, api_key: str) -> None:
    hook = register(client, api_key)
    for path in (f"{BASE}{hook}/stats/", f"{BASE}{hook}/stats"):
        response = client.get(path, headers={"X-API-Key": api_key})
        assert response.status_code == 200, response.text
        assert response.json() == {
            "window_seconds": 86400, "attempts": 0, "succeeded": 0, "failed": 0,
            "success_rate": None, "p50_ms": None, "p95_ms": None, "last_success_at": None,
            "last_failure": None, "pending": 0, "breaker": "unknown",
        }  # fmt: skip


@pytest.mark.parametrize("window", ["59", "2592001", "0", "-60", "1.5", "day", ""])
def test_a_window_out_of_bounds_is_422(client: TestClient, api_key: str, window: str) -> None:
    hook = register(client, api_key)
    response = client.get(f"{BASE}{hook}/stats/?window={window}", headers={"X-API-Key": api_key})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "window"]


@pytest.mark.parametrize("window", ["60", "2592000"])
def test_the_window_bounds_are_accepted(client: TestClient, api_key: str, window: str) -> None:
    hook = register(client, api_key)
    response = client.get(f"{BASE}{hook}/stats/?window={window}", headers={"X-API-Key": api_key})
    assert response.status_code == 200
    assert response.json()["window_seconds"] == int(window)


def test_another_accounts_endpoint_is_404(client: TestClient, api_key: str, other_key: str) -> None:
    hook = register(client, api_key)
    assert client.get(f"{BASE}{hook}/stats/", headers={"X-API-Key": other_key}).status_code == 404
    assert client.get(f"{BASE}nope/stats/", headers={"X-API-Key": api_key}).status_code == 404


# --- retention ----------------------------------------------------------------------------------


def stat_minutes(engine: Engine) -> list[datetime]:
    with Session(engine) as session:
        return sorted(
            session.execute(
                select(col(EndpointStat.start)).where(col(EndpointStat.span) == MINUTE)
            ).scalars()
        )


@pytest.mark.parametrize("retention_days", [7, 30, 45])
def test_retention_keeps_the_rollup_for_the_longest_window_or_the_retention(
    engine: Engine, retention_days: int
) -> None:
    now = utcnow()
    ages = [1, 6, 8, 29, 31, 44, 46, 90]
    with Session(engine) as session:
        endpoint_stats.record(
            session, [ok(now - timedelta(days=d), 5, "ep") for d in ages], now=now
        )
        session.commit()
    purger = Purger(engine, PurgePolicy(max_rows=2), wall=lambda: now)
    purged = purger.run_pass(now - timedelta(days=retention_days), sleep=lambda _: None)
    kept_days = max(30, retention_days)
    kept = [d for d in ages if d < kept_days]
    assert purged.stats == 2 * (len(ages) - len(kept))  # a minute's row and an hour's each
    assert stat_minutes(engine) == sorted(minute_of(now - timedelta(days=d)) for d in kept)
    with Session(engine) as session:
        rows = session.execute(select(func.count()).select_from(EndpointStat)).scalar_one()
    assert rows == 2 * len(kept)
