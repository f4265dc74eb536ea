"""Retention: expired finished rows go, in small transactions; open and recent rows stay."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlmodel import Session, col
from typer.testing import CliRunner

from dispatcher import cli
from dispatcher.retention import PurgePace, PurgePolicy, Purger, parse_duration
from models import counters
from models.base import utcnow
from models.db import make_engine
from models.deliveries import Attempt, Delivery
from models.event_types import EventType
from models.events import Event, EventIn, ingest
from models.jobs import DeliveryStatus
from models.retention import Chunk, purge_chunk
from tests.conftest import PG_SERVER, emptied
from tests.test_scheduler import make_account, make_endpoint

DAYS_30 = timedelta(days=30)
OLD = timedelta(days=40)


def add_events(engine: Engine, account: str, ids: list[str]) -> None:
    with Session(engine) as session:
        events = [EventIn(id=i, type=EventType.OPENED, recipient="u@example.com") for i in ids]
        ingest(session, account, events)


def age(
    engine: Engine,
    ids: list[str],
    *,
    accepted: timedelta,
    changed: timedelta | None = None,
    status: DeliveryStatus = DeliveryStatus.SUCCEEDED,
    attempts: int = 1,
) -> None:
    """Make these events as old as ``accepted``, their deliveries ``status`` since ``changed``."""
    now = utcnow()
    changed_at = now - (accepted if changed is None else changed)
    with Session(engine) as session:
        session.execute(
            update(Event).where(col(Event.id).in_(ids)).values(created_at=now - accepted)
        )
        session.execute(
            update(Delivery)
            .where(col(Delivery.event_id).in_(ids))
            .values(status=status, updated_at=changed_at)
        )
        delivery_ids = session.execute(
            select(col(Delivery.id)).where(col(Delivery.event_id).in_(ids))
        ).scalars()
        session.add_all(
            Attempt(delivery_id=d, at=changed_at, status_code=200, duration_ms=5)
            for d in delivery_ids
            for _ in range(attempts)
        )
        session.commit()


def remaining(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.execute(select(col(Event.id))).scalars())


def count(engine: Engine, table: type[Event] | type[Delivery] | type[Attempt]) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def account(engine: Engine) -> str:
    account = make_account(engine)
    make_endpoint(engine, account, "https://a.example/hook")
    make_endpoint(engine, account, "https://b.example/hook")
    return account


def test_expired_finished_rows_go_open_and_recent_ones_stay(engine: Engine, account: str) -> None:
    add_events(engine, account, ["done", "failed", "cancelled", "open", "leased", "recent"])
    add_events(engine, account, ["retried-lately", "mixed"])
    age(engine, ["done"], accepted=OLD, attempts=3)
    age(engine, ["failed"], accepted=OLD, status=DeliveryStatus.FAILED)
    age(engine, ["cancelled"], accepted=OLD, status=DeliveryStatus.CANCELLED)
    age(engine, ["open"], accepted=OLD, status=DeliveryStatus.PENDING)
    age(engine, ["leased"], accepted=OLD, status=DeliveryStatus.DELIVERING)
    age(engine, ["recent"], accepted=timedelta(days=29))
    # Accepted long ago, but its last attempt was within the retention.
    age(engine, ["retried-lately"], accepted=OLD, changed=timedelta(days=2))
    age(engine, ["mixed"], accepted=OLD)
    with Session(engine) as session:  # one of its two deliveries still open
        delivery = session.execute(
            select(Delivery).where(col(Delivery.event_id) == "mixed")
        ).scalars()
        next(iter(delivery)).status = DeliveryStatus.PENDING
        session.commit()
    attempts_before = count(engine, Attempt)

    purged = Purger(engine).run_pass(utcnow() - DAYS_30, sleep=lambda _: None)

    assert remaining(engine) == {"open", "leased", "recent", "retried-lately", "mixed"}
    assert (purged.events, purged.deliveries, purged.attempts) == (3, 6, 2 * 3 + 2 + 2)
    assert count(engine, Attempt) == attempts_before - purged.attempts
    with Session(engine) as session:
        orphans = session.execute(
            text(
                "SELECT count(*) FROM delivery d WHERE NOT EXISTS (SELECT 1 FROM event e"
                " WHERE e.account_id = d.account_id AND e.id = d.event_id)"
            )
        ).scalar_one()
        stored = counters.read(session)
    assert orphans == 0
    assert {k: v for k, v in stored.items() if k[0] == counters.PURGED} == {
        (counters.PURGED, "event"): 3,
        (counters.PURGED, "delivery"): 6,
        (counters.PURGED, "attempt"): 10,
    }


def test_an_expired_event_without_deliveries_goes(engine: Engine) -> None:
    account = make_account(engine)  # no endpoint: its events make no delivery
    add_events(engine, account, ["lonely", "young"])
    age(engine, ["lonely"], accepted=OLD)
    Purger(engine).run_pass(utcnow() - DAYS_30, sleep=lambda _: None)
    assert remaining(engine) == {"young"}


def test_the_purge_is_chunked_and_holds_nothing_between_chunks(
    engine: Engine, account: str
) -> None:
    ids = [f"e{i:03}" for i in range(120)]
    add_events(engine, account, ids)
    age(engine, ids, accepted=OLD)  # 120 events, 240 deliveries, 240 attempts
    policy = PurgePolicy(max_rows=50, duty=0.5)
    written: list[str] = []

    def meanwhile(_rest: float) -> None:
        # Another writer commits between two chunks: the purge holds no transaction now.
        name = f"between-{len(written)}"
        add_events(engine, account, [name])
        written.append(name)

    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(
            Purger(engine, policy).run_pass(utcnow() - DAYS_30, sleep=meanwhile)
        )
    )
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    purged = result[0]
    assert purged.rows == 600  # type: ignore[attr-defined]
    assert purged.largest_chunk <= policy.max_rows  # type: ignore[attr-defined]
    assert purged.chunks >= 600 // policy.max_rows  # type: ignore[attr-defined]
    assert remaining(engine) == set(written)


def test_a_pass_skips_kept_events_once_and_reaches_the_expired_ones_behind_them(
    engine: Engine, account: str
) -> None:
    kept = [f"k{i:02}" for i in range(30)]
    gone = [f"g{i:02}" for i in range(10)]
    add_events(engine, account, kept)
    add_events(engine, account, gone)
    age(engine, kept, accepted=OLD + timedelta(days=1), status=DeliveryStatus.PENDING)
    age(engine, gone, accepted=OLD)
    purged = Purger(engine, PurgePolicy(max_rows=21)).run_pass(  # at most 7 events a chunk
        utcnow() - DAYS_30, sleep=lambda _: None
    )
    assert remaining(engine) == set(kept)
    assert (purged.examined, purged.events) == (40, 10)


@pytest.mark.postgres
@pytest.mark.skipif(not PG_SERVER, reason="SQLite runs one write transaction at a time")
def test_a_delivery_reopened_meanwhile_keeps_its_event(postgres_database: str) -> None:
    engine = make_engine(emptied(postgres_database))
    account = make_account(engine)
    make_endpoint(engine, account)
    add_events(engine, account, ["reopening", "reopened", "plain"])
    age(engine, ["reopening", "reopened", "plain"], accepted=OLD)
    with engine.connect() as retry:
        # A manual retry reopened one delivery and committed; another is reopening, not committed.
        retry.execute(text("UPDATE delivery SET status = 'pending' WHERE event_id = 'reopened'"))
        retry.commit()
        retry.execute(text("UPDATE delivery SET status = 'pending' WHERE event_id = 'reopening'"))
        with Session(engine) as session:
            # Were the purge to wait for the retry's lock, it would fail here, not hang.
            session.execute(text("SET LOCAL lock_timeout = '5s'"))
            chunk = purge_chunk(session, cutoff=utcnow() - DAYS_30, after=None, limit=100)
            session.commit()
        retry.commit()
    assert chunk.events == 1
    assert remaining(engine) == {"reopening", "reopened"}
    engine.dispose()


@pytest.mark.parametrize(
    ("chunk", "seconds", "policy", "limit", "rest", "next_limit"),
    [
        # a pass's last chunk: fewer events than asked -> idle until the next pass
        (Chunk(3, events=3, deliveries=3, attempts=3), 0.01, PurgePolicy(), 100, 60.0, 200),
        # a full chunk at duty 0.1 rests nine times as long as it took; at 0.5 as long
        (Chunk(100, events=100, deliveries=100, attempts=100), 0.05, PurgePolicy(), 100, 0.45, 200),
        (Chunk(100, events=100, deliveries=100, attempts=100), 0.05, PurgePolicy(duty=0.5), 100, 0.05, 200),
        # heavy events (20 rows each, then 100): the next chunk shrinks to max_rows' worth
        (Chunk(100, events=100, deliveries=1000, attempts=900), 0.05, PurgePolicy(), 100, 0.45, 100),
        (Chunk(100, events=100, deliveries=4000, attempts=5900), 0.05, PurgePolicy(), 100, 0.45, 20),
        # events all kept (nothing deleted): each still costs its look-up
        (Chunk(100), 0.05, PurgePolicy(), 100, 0.45, 200),
        # never past max_events, never under one
        (Chunk(800, events=800), 0.05, PurgePolicy(), 800, 0.45, 1000),
        (Chunk(1, events=1, deliveries=5000), 0.05, PurgePolicy(), 1, 0.45, 1),
    ],
)  # fmt: skip
def test_purge_pace(
    chunk: Chunk, seconds: float, policy: PurgePolicy, limit: int, rest: float, next_limit: int
) -> None:
    pace = PurgePace(policy, limit)
    assert pace.after(chunk, seconds) == pytest.approx(rest)
    assert pace.limit == next_limit


def test_the_first_chunk_assumes_a_hundred_rows_an_event() -> None:
    assert PurgePace(PurgePolicy(max_rows=2_000)).limit == 20
    assert PurgePace(PurgePolicy(max_rows=2)).limit == 1


@pytest.mark.parametrize(
    ("retention", "idle"),
    [(timedelta(days=30), 60.0), (timedelta(seconds=60), 6.0), (timedelta(seconds=5), 1.0)],
)
def test_passes_run_at_least_ten_times_a_retention(retention: timedelta, idle: float) -> None:
    assert PurgePolicy.for_retention(retention).idle == idle


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45), ("2w", 14 * 86400),
     ("1d12h", 129600), ("1.5h", 5400), (" 7D ", 7 * 86400)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "-1d", "0s", "1d 2", "1 day"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_db_purge_by_hand_prints_what_it_removed(
    database_url: str, engine: Engine, account: str
) -> None:
    add_events(engine, account, ["old", "older", "new"])
    age(engine, ["old"], accepted=timedelta(days=3))
    age(engine, ["older"], accepted=timedelta(days=10), attempts=2)
    invoke = CliRunner().invoke
    result = invoke(cli.app, ["--database-url", database_url, "db", "purge", "--older-than", "5d"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith(
        "removed 1 events, 2 deliveries and 4 attempts older than 5 days"
    )
    assert remaining(engine) == {"old", "new"}
    result = invoke(cli.app, ["--database-url", database_url, "db", "purge"])  # 30 days
    assert result.exit_code == 0, result.output
    assert remaining(engine) == {"old", "new"}
    result = invoke(cli.app, ["--database-url", database_url, "db", "purge", "--older-than", "5"])
    assert result.exit_code == 2
    assert "not a duration" in result.output


def test_db_purge_with_retention_off_removes_nothing(
    database_url: str, engine: Engine, account: str
) -> None:
    add_events(engine, account, ["ancient"])
    age(engine, ["ancient"], accepted=timedelta(days=400))
    result = CliRunner().invoke(
        cli.app, ["--database-url", database_url, "db", "purge"],
        env={"SENTINMAIL_RETENTION_DAYS": "0"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "retention is off" in result.stdout
    assert remaining(engine) == {"ancient"}
