"""The scheduler's database work: claims, leases, results and endpoint health.

The capacity rules themselves are the pure ledger's, tested without a
database in ``test_capacity.py``; here they are only seen through SQL: rows
past a host's room stay pending, and a claim that searches on past full hosts
leases each delivery once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, text, update
from sqlmodel import Session, col, select

from dispatcher.capacity import Capacity
from dispatcher.scheduler import Scheduler
from models import accounts, deliveries, driver, endpoints
from models.base import utcnow
from models.deliveries import Attempt, Delivery
from models.endpoints import Endpoint, EndpointCreate, origin_of
from models.event_types import EventType, Priority
from models.events import Event, EventIn, ingest
from models.jobs import DeliveryStatus, Job, Result
from tests.conftest import delivery_statuses as counts
from tests.conftest import lease_due

ALL_EVENTS = [t for t in EventType if not t.operational]  # the five email types
LEASE = timedelta(seconds=60)
DAY = timedelta(days=1)


def make_account(engine: Engine, name: str = "acme") -> str:
    """The id of a new account (with a key, as the API would have it)."""
    with Session(engine) as session:
        return accounts.create_key(session, name)[0].account_id


def make_endpoint(
    engine: Engine,
    account_id: str,
    url: str = "https://a.example/hook",
    events: list[EventType] = ALL_EVENTS,
    rate_limit: float | None = None,
) -> str:
    with Session(engine) as session:
        data = EndpointCreate(url=url, events=events, rate_limit=rate_limit)
        return endpoints.create_endpoint(session, account_id, data).id


def make_events(engine: Engine, account_id: str, *types: str, prefix: str = "evt") -> list[str]:
    """Ingest one event per type, ids ``<prefix>-0``, ``<prefix>-1``...; their ids."""
    events = [
        EventIn(id=f"{prefix}-{i}", type=EventType(t), recipient="user@example.com")
        for i, t in enumerate(types)
    ]
    with Session(engine) as session:
        return ingest(session, account_id, events).accepted


def claim(
    engine: Engine, now: datetime, limit: int = 100, exclude_origins: Sequence[str] = ()
) -> list[Job]:
    with Session(engine) as session:
        return lease_due(session, now=now, limit=limit, lease=LEASE, excluding=exclude_origins)


def set_due(engine: Engine, event_id: str, due_at: datetime) -> None:
    with Session(engine) as session:
        session.execute(
            update(Delivery).where(col(Delivery.event_id) == event_id).values(due_at=due_at)
        )
        session.commit()


def rows(engine: Engine) -> dict[int, Delivery]:
    with Session(engine) as session:
        return {d.id: d for d in session.exec(select(Delivery)).all() if d.id is not None}


def attempts_of(engine: Engine, delivery_id: int) -> list[Attempt]:
    with Session(engine) as session:
        return list(session.exec(select(Attempt).where(Attempt.delivery_id == delivery_id)).all())


def endpoint_row(engine: Engine, endpoint_id: str) -> Endpoint:
    with Session(engine) as session:
        endpoint = session.get(Endpoint, endpoint_id)
        assert endpoint is not None
        return endpoint


def settle(job: Job, now: datetime, status_code: int = 200) -> Result:
    return Result(job, DeliveryStatus.SUCCEEDED, None, at=now, status_code=status_code)


def fail(job: Job, now: datetime, status_code: int | None = 500) -> Result:
    return Result(job, DeliveryStatus.PENDING, now + DAY, at=now, status_code=status_code)


@pytest.fixture
def account(engine: Engine) -> str:
    return make_account(engine)


# --- claim ---------------------------------------------------------------------------------


def test_claim_returns_high_priority_first_even_when_low_is_older(
    engine: Engine, account: str
) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, "opened", "delivered", "clicked", prefix="low")
    make_events(engine, account, "bounced", "unsubscribed", prefix="high")
    now = utcnow()
    for i in range(3):
        set_due(engine, f"low-{i}", now - timedelta(hours=3 - i))
    first = claim(engine, now, limit=2)
    assert sorted(j.event_id for j in first) == ["high-0", "high-1"]
    assert {j.priority for j in first} == {Priority.HIGH}
    rest = claim(engine, now, limit=10)
    assert [j.event_id for j in rest] == ["low-0", "low-1", "low-2"]  # oldest first
    assert {j.priority for j in rest} == {Priority.LOW}


def test_claim_takes_the_oldest_first_within_a_priority(engine: Engine, account: str) -> None:
    make_endpoint(engine, account)
    ids = make_events(engine, account, *["opened"] * 4)
    now = utcnow()
    for event_id, age in zip(ids, [2, 4, 1, 3], strict=True):
        set_due(engine, event_id, now - timedelta(hours=age))
    assert [j.event_id for j in claim(engine, now, limit=3)] == [ids[1], ids[3], ids[0]]


def test_claim_respects_the_limit_and_leases_what_it_returns(engine: Engine, account: str) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, *["opened"] * 5)
    now = utcnow()
    jobs = claim(engine, now, limit=3)
    assert len(jobs) == 3
    stored = rows(engine)
    for job in jobs:
        row = stored[job.delivery_id]
        assert (row.status, row.due_at, row.updated_at) == (
            DeliveryStatus.DELIVERING,
            now + LEASE,
            now,
        )
    assert counts(engine) == {"delivering": 3, "pending": 2}


@pytest.mark.parametrize("limit", [0, -1])
def test_claim_with_no_room_claims_nothing(engine: Engine, account: str, limit: int) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, "opened")
    assert claim(engine, utcnow(), limit=limit) == []
    assert counts(engine) == {"pending": 1}


def test_nothing_is_claimed_before_it_is_due(engine: Engine, account: str) -> None:
    make_endpoint(engine, account)
    before = utcnow()
    make_events(engine, account, "opened")
    assert claim(engine, before - timedelta(seconds=1)) == []
    assert len(claim(engine, utcnow())) == 1


def test_a_lease_is_claimed_once_until_it_expires(engine: Engine, account: str) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, "opened", "bounced", "clicked")
    now = utcnow()
    first = claim(engine, now)
    assert len(first) == 3
    assert claim(engine, now) == []
    assert claim(engine, now + LEASE - timedelta(microseconds=1)) == []
    again = claim(engine, now + LEASE)
    assert sorted(j.delivery_id for j in again) == sorted(j.delivery_id for j in first)
    assert all(j.attempts == 0 for j in again)  # an expired lease is not an attempt
    assert {r.due_at for r in rows(engine).values()} == {now + 2 * LEASE}


def test_claim_skips_excluded_origins(engine: Engine, account: str) -> None:
    make_endpoint(engine, account, "https://a.example/hook")
    make_endpoint(engine, account, "https://B.example:8443/hook")
    make_endpoint(engine, account, "https://c.example/hook")
    make_events(engine, account, "opened", "bounced")
    jobs = claim(
        engine, utcnow(), exclude_origins=["https://a.example:443", "https://b.example:8443"]
    )
    assert len(jobs) == 2
    assert {j.origin for j in jobs} == {"https://c.example:443"}
    assert counts(engine) == {"delivering": 2, "pending": 4}


def test_claim_skips_deliveries_of_disabled_endpoints(engine: Engine, account: str) -> None:
    off = make_endpoint(engine, account, "https://a.example/")
    on = make_endpoint(engine, account, "https://b.example/")
    make_events(engine, account, "opened", "bounced")
    # As if the endpoint were disabled while this batch was being ingested.
    with Session(engine) as session:
        session.execute(update(Endpoint).where(col(Endpoint.id) == off).values(enabled=False))
        session.commit()
    now = utcnow()
    assert {j.endpoint_id for j in claim(engine, now)} == {on}
    with Session(engine) as session:
        endpoints.update_endpoint(session, account, off, {"enabled": True})
    assert {j.endpoint_id for j in claim(engine, now)} == {off}


def test_a_job_carries_the_endpoint_as_it_is_now_and_the_event_body(
    engine: Engine, account: str
) -> None:
    hook = make_endpoint(engine, account, "https://a.example/v1", rate_limit=5)
    make_events(engine, account, "bounced")
    with Session(engine) as session:
        endpoints.update_endpoint(
            session, account, hook, {"url": "https://Hooks.Example:8443/v2", "rate_limit": 2.5}
        )
    current = endpoint_row(engine, hook)
    with Session(engine) as session:
        body = session.exec(select(Event.body)).one()
    (delivery_id,) = rows(engine)
    (job,) = claim(engine, utcnow())
    assert job == Job(
        delivery_id=delivery_id,
        event_id="evt-0",
        endpoint_id=hook,
        url="https://Hooks.Example:8443/v2",
        origin="https://hooks.example:8443",
        secret=current.secret,
        rate_limit=2.5,
        priority=Priority.HIGH,
        attempts=0,
        body=body.encode(),
    )
    assert current.secret.startswith("whsec_")
    payload = json.loads(job.body)
    assert payload["id"] == "evt-0"
    assert payload["type"] == "bounced"


def test_claim_does_not_mix_accounts_up(engine: Engine, account: str) -> None:
    other = make_account(engine, "globex")
    mine = make_endpoint(engine, account, "https://a.example/")
    theirs = make_endpoint(engine, other, "https://b.example/")
    make_events(engine, account, "opened")
    make_events(engine, other, "opened")  # the same event id in another account
    jobs = {j.endpoint_id: j for j in claim(engine, utcnow())}
    assert set(jobs) == {mine, theirs}
    assert json.loads(jobs[mine].body)["id"] == json.loads(jobs[theirs].body)["id"] == "evt-0"


def test_the_claim_searches_the_open_index_by_priority_and_due_time(
    engine: Engine, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("PostgreSQL's plan depends on its statistics")
    db = driver._driver("sqlite", "pysqlite", "qmark")
    with engine.connect() as connection:
        plan = [
            row[3]
            for row in connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + deliveries._claim_sql(db, excluding=True),
                ("2026-01-01 00:00:00.000000", "2026-01-01 00:00:00.000000", "[]", 10),
            )
        ]
    # A range of the partial index per priority: neither the whole table nor
    # every lease not yet expired, and no sort.
    assert plan[0] == "SEARCH d USING INDEX ix_delivery_open (priority=? AND due_at<?)"
    assert not any("TEMP B-TREE" in step for step in plan)


# --- capacity, as the database sees it ------------------------------------------------------


def scheduler(
    engine: Engine,
    disable_after: timedelta = 5 * DAY,
    *,
    max_in_flight: int = 100,
    max_in_flight_per_host: int = 100,
    claim_batch: int = 100,
    max_in_flight_unproven_host: int = 100,
) -> Scheduler:
    capacity = Capacity(
        max_in_flight,
        max_in_flight_per_host,
        claim_batch,
        lease=LEASE,
        max_in_flight_unproven_host=max_in_flight_unproven_host,
    )
    return Scheduler(engine, capacity, disable_after)


def test_a_host_never_holds_more_than_its_cap(engine: Engine, account: str) -> None:
    make_endpoint(engine, account, "https://busy.example/")
    make_events(engine, account, *["opened"] * 10)
    s = scheduler(engine, max_in_flight=100, max_in_flight_per_host=3, claim_batch=100)
    now = utcnow()
    assert len(s.claim(now)) == 3  # not a whole batch: the rest stays pending
    assert s.claim(now) == []
    assert counts(engine) == {"delivering": 3, "pending": 7}
    assert s.in_flight == 3


def test_a_host_out_of_room_does_not_use_up_the_claim_batch(engine: Engine, account: str) -> None:
    make_endpoint(engine, account, "https://first.example/")
    make_events(engine, account, *["opened"] * 10)  # at the front of the queue
    other = make_account(engine, "globex")
    make_endpoint(engine, other, "https://later.example/")
    make_events(engine, other, *["opened"] * 3)
    s = scheduler(engine, claim_batch=5, max_in_flight_unproven_host=3)
    jobs = s.claim(utcnow())
    assert (
        sorted(j.origin for j in jobs)
        == ["https://first.example:443"] * 3 + ["https://later.example:443"] * 2
    )


def test_a_claim_that_searches_past_a_full_host_returns_each_delivery_once(
    engine: Engine, account: str
) -> None:
    # The first search returns the later host's row first and fills the first host:
    # the second search, past that host, must not find the rows the first one took.
    other = make_account(engine, "globex")
    make_endpoint(engine, other, "https://later.example/")
    make_events(engine, other, "opened", prefix="later")
    make_endpoint(engine, account, "https://first.example/")
    make_events(engine, account, *["opened"] * 4)
    s = scheduler(engine, claim_batch=5, max_in_flight_unproven_host=3)
    jobs = s.claim(utcnow())
    ids = [j.delivery_id for j in jobs]
    assert len(ids) == len(set(ids)) == 4
    assert s.in_flight == 4
    assert Counter(j.origin for j in jobs) == {
        "https://first.example:443": 3,
        "https://later.example:443": 1,
    }


def test_renew_extends_leases_so_they_are_not_reclaimed(engine: Engine, account: str) -> None:
    make_endpoint(engine, account, "https://a.example/")
    make_events(engine, account, "opened", "bounced", "clicked")
    s = scheduler(engine, max_in_flight=100, max_in_flight_per_host=100, claim_batch=100)
    now = utcnow()
    jobs = s.claim(now)
    assert len(jobs) == 3
    held, dropped = jobs[:2], jobs[2]
    s.renew([(j.delivery_id, j.origin) for j in held], now + timedelta(seconds=50))
    stored = rows(engine)
    assert {stored[j.delivery_id].due_at for j in held} == {now + timedelta(seconds=50) + LEASE}
    assert stored[dropped.delivery_id].due_at == now + LEASE

    # At the old expiry only the delivery nobody renewed comes back.
    fresh = scheduler(engine, max_in_flight=100, max_in_flight_per_host=100, claim_batch=100)
    assert [j.delivery_id for j in fresh.claim(now + LEASE)] == [dropped.delivery_id]
    back = fresh.claim(now + timedelta(seconds=50) + LEASE)
    assert sorted(j.delivery_id for j in back) == sorted(j.delivery_id for j in held)


def test_renew_leaves_settled_deliveries_alone(engine: Engine, account: str) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, "opened")
    s = scheduler(engine)
    now = utcnow()
    (job,) = s.claim(now)
    s.record([settle(job, now)], now)
    s.renew([(job.delivery_id, job.origin)], now + DAY)
    row = rows(engine)[job.delivery_id]
    assert (row.status, row.due_at) == (DeliveryStatus.SUCCEEDED, now + LEASE)


def test_concurrent_claims_take_different_rows(engine: Engine, account: str, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite's writers take turns: a second claim waits for the first")
    make_endpoint(engine, account)
    make_events(engine, account, *["opened"] * 5)
    now = utcnow()
    with Session(engine) as first, Session(engine) as second:
        mine = deliveries.due(first, now=now, limit=3)  # locked, not yet leased
        second.execute(text("SET LOCAL lock_timeout = '2s'"))  # a wait fails, not hangs
        theirs = deliveries.due(second, now=now, limit=10)
        assert len(mine) == 3
        assert len(theirs) == 2  # the rows the first claim holds are skipped, not waited for
        assert {j.delivery_id for j in mine}.isdisjoint(j.delivery_id for j in theirs)


# --- recording results -----------------------------------------------------------------------


def test_a_success_settles_the_delivery_and_records_the_attempt(
    engine: Engine, account: str
) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, "opened")
    s = scheduler(engine)
    now = utcnow()
    (job,) = s.claim(now)
    at = now + timedelta(milliseconds=5)
    done = now + timedelta(seconds=1)
    s.record(
        [Result(job, DeliveryStatus.SUCCEEDED, None, at=at, status_code=204, duration_ms=31)], done
    )
    row = rows(engine)[job.delivery_id]
    assert (row.status, row.attempts, row.updated_at) == (DeliveryStatus.SUCCEEDED, 1, done)
    (attempt,) = attempts_of(engine, job.delivery_id)
    assert (attempt.at, attempt.status_code, attempt.error, attempt.duration_ms) == (
        at,
        204,
        None,
        31,
    )


def test_a_retry_is_pending_until_its_due_time(engine: Engine, account: str) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, "opened")
    s = scheduler(engine)
    now = utcnow()
    retry_at = now + timedelta(minutes=5)
    (job,) = s.claim(now)
    s.record([Result(job, DeliveryStatus.PENDING, retry_at, status_code=503, duration_ms=3)], now)
    row = rows(engine)[job.delivery_id]
    assert (row.status, row.due_at, row.attempts) == (DeliveryStatus.PENDING, retry_at, 1)
    (attempt,) = attempts_of(engine, job.delivery_id)
    assert (attempt.at, attempt.status_code) == (now, 503)  # ``at`` defaults to the batch time
    assert s.claim(retry_at - timedelta(microseconds=1)) == []
    (again,) = s.claim(retry_at)
    assert (again.delivery_id, again.attempts) == (job.delivery_id, 1)
    s.record([Result(again, DeliveryStatus.FAILED, None, error="x" * 600)], retry_at)
    row = rows(engine)[job.delivery_id]
    assert (row.status, row.attempts) == (DeliveryStatus.FAILED, 2)
    assert [a.error for a in attempts_of(engine, job.delivery_id)] == [None, "x" * 500]


def test_a_released_job_is_not_an_attempt(engine: Engine, account: str) -> None:
    hook = make_endpoint(engine, account)
    make_events(engine, account, "opened")
    s = scheduler(engine)
    now = utcnow()
    (job,) = s.claim(now)
    later = now + timedelta(seconds=30)
    assert s.record([Result(job, DeliveryStatus.PENDING, later, attempted=False)], now) == []
    row = rows(engine)[job.delivery_id]
    assert (row.status, row.due_at, row.attempts) == (DeliveryStatus.PENDING, later, 0)
    assert attempts_of(engine, job.delivery_id) == []
    assert endpoint_row(engine, hook).failing_since is None
    assert s.in_flight == 0


def test_a_released_job_without_a_due_time_keeps_its_lease_expiry(
    engine: Engine, account: str
) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, "opened")
    now = utcnow()
    (job,) = claim(engine, now)
    with Session(engine) as session:
        deliveries.record(
            session, [Result(job, DeliveryStatus.PENDING, None, attempted=False)], now=now
        )
        session.commit()
    row = rows(engine)[job.delivery_id]
    assert (row.status, row.due_at, row.attempts) == (DeliveryStatus.PENDING, now + LEASE, 0)


@pytest.mark.parametrize("how", ["delete", "disable"])
def test_a_result_for_a_cancelled_delivery_leaves_it_cancelled(
    engine: Engine, account: str, how: str
) -> None:
    hook = make_endpoint(engine, account)
    make_events(engine, account, "opened")
    s = scheduler(engine)
    now = utcnow()
    (job,) = s.claim(now)
    with Session(engine) as session:
        if how == "delete":
            endpoints.delete_endpoint(session, account, hook)
        else:
            endpoints.update_endpoint(session, account, hook, {"enabled": False})
    s.record([settle(job, now)], now)
    row = rows(engine)[job.delivery_id]
    assert (row.status, row.attempts) == (DeliveryStatus.CANCELLED, 0)
    (attempt,) = attempts_of(engine, job.delivery_id)  # what happened is still recorded
    assert attempt.status_code == 200
    assert s.in_flight == 0


def test_a_batch_of_results_is_recorded_together(engine: Engine, account: str) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, *["opened"] * 4)
    s = scheduler(engine)
    now = utcnow()
    a, b, c, d = s.claim(now)
    s.record(
        [
            settle(a, now),
            Result(b, DeliveryStatus.PENDING, now + DAY, status_code=500),
            Result(c, DeliveryStatus.FAILED, None, error="refused"),
            Result(d, DeliveryStatus.PENDING, now, attempted=False),
        ],
        now,
    )
    assert counts(engine) == {"succeeded": 1, "pending": 2, "failed": 1}
    stored = rows(engine)
    assert [stored[j.delivery_id].attempts for j in (a, b, c, d)] == [1, 1, 1, 0]
    assert Counter(len(attempts_of(engine, j.delivery_id)) for j in (a, b, c, d)) == {1: 3, 0: 1}


def test_a_delivery_reported_twice_in_a_batch_moves_once(engine: Engine, account: str) -> None:
    hook = make_endpoint(engine, account)
    make_events(engine, account, "opened", "opened")
    s = scheduler(engine)
    now = utcnow()
    a, b = s.claim(now)
    # Held twice after a lease expired: the first result counts, both attempts are kept.
    s.record([settle(a, now), fail(a, now), fail(b, now), settle(b, now)], now)
    stored = rows(engine)
    assert (stored[a.delivery_id].status, stored[a.delivery_id].attempts) == (
        DeliveryStatus.SUCCEEDED,
        1,
    )
    assert (stored[b.delivery_id].status, stored[b.delivery_id].attempts) == (
        DeliveryStatus.PENDING,
        1,
    )
    assert stored[b.delivery_id].due_at == now + DAY
    assert len(attempts_of(engine, a.delivery_id)) == len(attempts_of(engine, b.delivery_id)) == 2
    assert endpoint_row(engine, hook).failing_since is None


def test_times_in_any_zone_are_stored_as_the_same_instants(engine: Engine, account: str) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, "opened")
    paris = timezone(timedelta(hours=2))
    now = utcnow().astimezone(paris)
    (job,) = claim(engine, now)
    assert rows(engine)[job.delivery_id].due_at == now + LEASE
    at, retry_at = now + timedelta(seconds=1), now + timedelta(minutes=5)
    with Session(engine) as session:
        deliveries.record(
            session,
            [Result(job, DeliveryStatus.PENDING, retry_at, at=at, status_code=503)],
            now=now,
        )
        session.commit()
    row = rows(engine)[job.delivery_id]
    assert (row.due_at, row.updated_at) == (retry_at, now)
    assert row.due_at.utcoffset() == timedelta(0)
    assert [a.at for a in attempts_of(engine, job.delivery_id)] == [at]
    assert claim(engine, retry_at - timedelta(microseconds=1)) == []
    assert len(claim(engine, retry_at)) == 1


def test_a_naive_time_is_refused(engine: Engine, account: str) -> None:
    make_endpoint(engine, account)
    make_events(engine, account, "opened")
    now = utcnow()
    (job,) = claim(engine, now)
    naive = now.replace(tzinfo=None)
    with Session(engine) as session, pytest.raises(ValueError, match="aware"):
        deliveries.record(session, [settle(job, naive)], now=now)
    assert rows(engine)[job.delivery_id].status == DeliveryStatus.DELIVERING


# --- endpoint health -------------------------------------------------------------------------


def test_410_gone_disables_the_endpoint_and_cancels_its_open_deliveries(
    engine: Engine, account: str
) -> None:
    gone = make_endpoint(engine, account, "https://a.example/")
    other = make_endpoint(engine, account, "https://b.example/")
    make_events(engine, account, "opened", "bounced", "clicked")
    s = scheduler(engine)
    now = utcnow()
    jobs = s.claim(now)
    on_gone = [j for j in jobs if j.endpoint_id == gone]
    s.record([settle(on_gone[0], now)], now)  # gone after a success: not about failing long
    later = now + timedelta(minutes=1)
    result = Result(on_gone[1], DeliveryStatus.FAILED, None, at=later, status_code=410, gone=True)
    assert s.record([result], later) == [gone]

    row = endpoint_row(engine, gone)
    assert row.enabled is False
    assert row.disabled_reason is not None
    assert "410" in row.disabled_reason
    assert row.updated_at == later
    stored = rows(engine)
    by_endpoint = Counter((d.endpoint_id, d.status) for d in stored.values())
    assert by_endpoint == {
        (gone, DeliveryStatus.SUCCEEDED): 1,
        (gone, DeliveryStatus.FAILED): 1,
        (gone, DeliveryStatus.CANCELLED): 1,  # the third, still leased, is cancelled
        (other, DeliveryStatus.DELIVERING): 3,
    }
    assert endpoint_row(engine, other).enabled is True
    # A second 410 for an endpoint already disabled disables nothing new.
    again = Result(on_gone[2], DeliveryStatus.FAILED, None, status_code=410, gone=True)
    assert s.record([again], later) == []


def test_failing_for_longer_than_disable_after_disables_the_endpoint(
    engine: Engine, account: str
) -> None:
    hook = make_endpoint(engine, account)
    make_events(engine, account, *["opened"] * 4)
    s = scheduler(engine, disable_after=timedelta(hours=1))
    t0 = utcnow()
    a, b, c, d = s.claim(t0)
    assert s.record([fail(a, t0)], t0) == []
    assert endpoint_row(engine, hook).failing_since == t0
    assert s.record([fail(b, t0 + timedelta(minutes=59))], t0 + timedelta(minutes=59)) == []
    assert endpoint_row(engine, hook).failing_since == t0  # the run started at the first failure
    assert endpoint_row(engine, hook).enabled is True
    t1 = t0 + timedelta(hours=1)
    assert s.record([fail(c, t1, status_code=None)], t1) == [hook]
    row = endpoint_row(engine, hook)
    assert row.enabled is False
    assert row.disabled_reason is not None
    assert "1:00:00" in row.disabled_reason
    assert rows(engine)[d.delivery_id].status == DeliveryStatus.CANCELLED


def test_a_success_resets_the_run_of_failures(engine: Engine, account: str) -> None:
    hook = make_endpoint(engine, account)
    make_events(engine, account, *["opened"] * 4)
    s = scheduler(engine, disable_after=timedelta(hours=1))
    t0 = utcnow()
    a, b, c, d = s.claim(t0)
    s.record([fail(a, t0)], t0)
    t1 = t0 + timedelta(minutes=30)
    s.record([settle(b, t1)], t1)
    assert endpoint_row(engine, hook).failing_since is None
    t2 = t0 + timedelta(minutes=61)
    assert s.record([fail(c, t2)], t2) == []
    row = endpoint_row(engine, hook)
    assert (row.enabled, row.failing_since) == (True, t2)
    assert rows(engine)[d.delivery_id].status == DeliveryStatus.DELIVERING


def test_success_and_failure_in_one_batch_counts_as_up(engine: Engine, account: str) -> None:
    hook = make_endpoint(engine, account)
    make_events(engine, account, "opened", "opened")
    s = scheduler(engine, disable_after=timedelta(0))
    now = utcnow()
    a, b = s.claim(now)
    assert s.record([fail(a, now), settle(b, now)], now) == []
    row = endpoint_row(engine, hook)
    assert (row.enabled, row.failing_since) == (True, None)


def test_re_enabling_starts_a_fresh_run(engine: Engine, account: str) -> None:
    hook = make_endpoint(engine, account)
    make_events(engine, account, "opened", "opened")
    s = scheduler(engine, disable_after=timedelta(hours=1))
    t0 = utcnow()
    first, _ = s.claim(t0)
    s.record([fail(first, t0)], t0)
    with Session(engine) as session:
        endpoints.update_endpoint(session, account, hook, {"enabled": False})
        endpoints.update_endpoint(session, account, hook, {"enabled": True})
    row = endpoint_row(engine, hook)
    assert (row.enabled, row.disabled_reason, row.failing_since) == (True, None, None)


# --- origins ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://yourapp.com/webhooks/sentinmail", "https://yourapp.com:443"),
        ("http://yourapp.com/webhooks", "http://yourapp.com:80"),
        ("https://yourapp.com:8443/webhooks", "https://yourapp.com:8443"),
        ("https://yourapp.com:443/", "https://yourapp.com:443"),
        ("http://yourapp.com:443/", "http://yourapp.com:443"),
        ("https://YourApp.COM/Path?Q=1", "https://yourapp.com:443"),
        ("HTTPS://yourapp.com", "https://yourapp.com:443"),
        ("https://hooks.yourapp.com./x", "https://hooks.yourapp.com.:443"),
        ("http://127.0.0.1:9000/hook", "http://127.0.0.1:9000"),
        ("https://[2001:DB8::1]/hook", "https://[2001:db8::1]:443"),
        ("https://[::1]:8443/hook", "https://[::1]:8443"),
        ("http://[fe80::1]/", "http://[fe80::1]:80"),
    ],
)
def test_origin_of(url: str, origin: str) -> None:
    assert origin_of(url) == origin


def test_endpoints_on_one_origin_share_it(engine: Engine, account: str) -> None:
    a = make_endpoint(engine, account, "https://Hooks.example/a")
    b = make_endpoint(engine, account, "https://hooks.example:443/b")
    assert (
        endpoint_row(engine, a).origin
        == endpoint_row(engine, b).origin
        == "https://hooks.example:443"
    )
