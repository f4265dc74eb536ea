"""The delivery log on a big account, and recovery of a big window.

Fills one account with ``--deliveries`` (1,000,000) deliveries: events spread
over 14 days, five endpoints, the five types (40/30/20/7/3 %), statuses as a
healthy service has them (95 % succeeded, 3 % failed, 1.5 % pending, 0.5 %
cancelled), one attempt per delivery that was attempted; and a second account
with a tenth as many, so that every query has a stranger's rows to skip.
Then times the first page (50) of each filter combination ``--repeat`` times,
and a 20-page walk along ``next_cursor`` for a few of them: the query
function behind ``GET /api/emails/deliveries/`` (``models.delivery_log``),
its SQL and its pydantic items, without HTTP.

``--recover N`` then times the recovery of a window holding N events of a
sixth endpoint that was disabled while they came (``models.recovery``, the
function behind ``POST .../recover/``), with its commits per chunk, while a
thread claims and settles due deliveries as the scheduler does.

    .venv/bin/python -m benchmarks.deliveries_log [--deliveries 1000000] [--recover 100000]
    .venv/bin/python -m benchmarks.deliveries_log --database-url postgresql+psycopg://... \\
        --create-database

Writes ``benchmarks/results/deliveries_log.json`` (and ``.<backend>.json``).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlmodel import Session

import models.tables  # noqa: F401 - every table in the metadata
from benchmarks import load
from benchmarks.harness import RESULTS, machine, percentile, write_result
from models import accounts, deliveries, delivery_log, migrate, recovery
from models.db import make_engine
from models.driver import driver, insert_rows
from models.endpoints import Endpoint, new_secret
from models.events import insert_deliveries
from models.jobs import DeliveryStatus, Result

ACCOUNT, STRANGER = "big", "stranger"
TYPES = [("delivered", 40), ("opened", 30), ("clicked", 20), ("bounced", 7), ("unsubscribed", 3)]
STATUSES = [("succeeded", 950), ("failed", 30), ("pending", 15), ("cancelled", 5)]
ENDPOINTS = 5
SPAN = timedelta(days=14)
CHUNK = 20_000
_EVENT_COLUMNS = {
    "account_id": "text", "id": "text", "type": "text", "body": "text", "created_at": "timestamptz"
}  # fmt: skip
_ATTEMPT_COLUMNS = {
    "delivery_id": "bigint", "at": "timestamptz", "status_code": "integer", "error": "text",
    "duration_ms": "integer", "response_body": "text",
}  # fmt: skip


def _weighted(pairs: list[tuple[str, int]], rng: random.Random, n: int) -> list[str]:
    return rng.choices([p[0] for p in pairs], [p[1] for p in pairs], k=n)


def _endpoint(session: Session, account: str, index: int, types: list[str]) -> str:
    endpoint = Endpoint(
        account_id=account,
        url=f"https://hooks{index}.example/{account}",
        origin=f"https://hooks{index}.example:443",
        events=types,
        secret=new_secret(),
    )
    session.add(endpoint)
    session.commit()
    return endpoint.id


def fill(
    engine: Engine, account: str, label: str, count: int, start: datetime, rng: random.Random
) -> list[str]:
    """``count`` deliveries of ``account`` (``count / 5`` events to five endpoints)."""
    all_types = [t for t, _ in TYPES]
    with Session(engine) as session:
        endpoints = [_endpoint(session, account, i, all_types) for i in range(ENDPOINTS)]
    events = count // ENDPOINTS
    step = SPAN / max(events, 1)
    made = 0
    with Session(engine) as session:
        while made < events:
            n = min(CHUNK, events - made)
            connection, db = driver(session)
            types = _weighted(TYPES, rng, n)
            event_rows, delivery_rows = [], []
            for k in range(n):
                event_id = f"evt-{label}-{made + k:08d}"
                at = db.time(start + step * (made + k))
                event_rows.append((account, event_id, types[k], f'{{"id":"{event_id}"}}', at))
                for endpoint_id, status in zip(
                    endpoints, _weighted(STATUSES, rng, ENDPOINTS), strict=True
                ):
                    attempts = 0 if status in ("pending", "cancelled") else 1
                    due = db.time(start + SPAN + timedelta(hours=1)) if status == "pending" else at
                    delivery_rows.append(
                        (account, event_id, endpoint_id, 1, status, attempts, due, at, at)
                    )
            insert_rows(connection, db, "event", _EVENT_COLUMNS, event_rows)
            insert_deliveries(connection, db, delivery_rows)
            connection.exec_driver_sql(
                "INSERT INTO attempt (delivery_id, at, status_code, error, duration_ms,"
                " response_body) SELECT id, created_at,"
                " CASE WHEN status = 'failed' THEN 500 ELSE 200 END,"
                " CASE WHEN status = 'failed' THEN 'HTTP 500' END, 40,"
                " CASE WHEN status = 'failed' THEN '{\"error\": \"down\"}' ELSE 'OK' END"
                f" FROM delivery WHERE account_id = {db.mark} AND attempts = 1"
                f" AND event_id >= {db.mark} AND event_id <= {db.mark}",
                (account, event_rows[0][1], event_rows[-1][1]),
            )
            session.commit()
            made += n
    return endpoints


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times: list[float] = []
    result = None
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - began) * 1000)
    return times, result


def summary(times: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(times, 50), 2),
        "p95_ms": round(percentile(times, 95), 2),
        "max_ms": round(max(times), 2),
    }


def combinations(endpoint: str, start: datetime) -> dict[str, dict[str, Any]]:
    middle = start + SPAN / 2
    return {
        "none": {},
        "endpoint": {"endpoint_id": endpoint},
        "status=failed": {"status": DeliveryStatus.FAILED},
        "status=pending": {"status": DeliveryStatus.PENDING},
        "status=succeeded": {"status": DeliveryStatus.SUCCEEDED},
        "status=delivering (none)": {"status": DeliveryStatus.DELIVERING},
        "event_type=unsubscribed": {"event_type": "unsubscribed"},
        "event_type=delivered": {"event_type": "delivered"},
        "event_id": {"event_id": f"evt-{ACCOUNT}-00001234"},
        "since (last day)": {"since": start + SPAN - timedelta(days=1)},
        "until (7 days ago)": {"until": middle},
        "since+until (1 day, 7 days ago)": {"since": middle - timedelta(days=1), "until": middle},
        "since+until (1 hour, 13 days ago)": {
            "since": start + timedelta(hours=23),
            "until": start + timedelta(days=1),
        },
        "endpoint+status=failed": {"endpoint_id": endpoint, "status": DeliveryStatus.FAILED},
        "endpoint+event_type=bounced": {"endpoint_id": endpoint, "event_type": "bounced"},
        "status=failed+event_type=unsubscribed": {
            "status": DeliveryStatus.FAILED,
            "event_type": "unsubscribed",
        },
        "endpoint+status=failed+event_type=unsubscribed": {
            "endpoint_id": endpoint,
            "status": DeliveryStatus.FAILED,
            "event_type": "unsubscribed",
        },
        "status=failed+until (7 days ago)": {"status": DeliveryStatus.FAILED, "until": middle},
        "endpoint+since+until (1 day)": {
            "endpoint_id": endpoint,
            "since": middle - timedelta(days=1),
            "until": middle,
        },
    }


WALKED = ["none", "status=failed", "event_type=unsubscribed", "endpoint+status=failed"]


def measure_log(
    engine: Engine, account: str, endpoint: str, start: datetime, repeat: int
) -> dict[str, Any]:
    from models.event_types import EventType

    out: dict[str, Any] = {}
    with Session(engine) as session:
        for name, raw in combinations(endpoint, start).items():
            filters = dict(raw)
            if "event_type" in filters:
                filters["event_type"] = EventType(filters["event_type"])

            def page(filters: dict[str, Any] = filters, cursor: str | None = None) -> Any:
                return delivery_log.list_deliveries(
                    session, account, limit=50, cursor=cursor, **filters
                )

            times, first = timed(page, repeat)
            row: dict[str, Any] = {**summary(times), "results": len(first.results)}
            if name in WALKED:
                walk: list[float] = []
                cursor = None
                for _ in range(20):
                    began = time.perf_counter()
                    shown = page(cursor=cursor)
                    walk.append((time.perf_counter() - began) * 1000)
                    cursor = shown.next_cursor
                    if cursor is None:
                        break
                row["walk_20_pages"] = {**summary(walk), "pages": len(walk)}
            out[name] = row
            session.rollback()  # a fresh snapshot per combination
    return out


@contextmanager
def dispatcher_busy(engine: Engine) -> Iterator[dict[str, int]]:
    """A thread that claims due deliveries and settles them, as the scheduler does."""
    stop = threading.Event()
    counts = {"claims": 0, "settled": 0}

    def run() -> None:
        while not stop.is_set():
            now = datetime.now(UTC)
            with Session(engine) as session:
                jobs = deliveries.due(session, now=now, limit=500)
                deliveries.lease(
                    session,
                    [j.delivery_id for j in jobs],
                    now=now,
                    until=now + timedelta(seconds=60),
                )
                session.commit()
                results = [
                    Result(j, DeliveryStatus.SUCCEEDED, None, at=now, status_code=200) for j in jobs
                ]
                deliveries.record(session, results, now=now)
                session.commit()
            counts["claims"] += 1
            counts["settled"] += len(jobs)
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(30)


def measure_recover(
    engine: Engine, account: str, events: int, rng: random.Random
) -> dict[str, Any]:
    """Recover a window of ``events`` events a disabled endpoint missed, while delivering."""
    # Before the filled span: the window holds only these events.
    start = datetime.now(UTC) - SPAN - timedelta(days=3)
    with Session(engine) as session:
        endpoint_id = _endpoint(session, account, 99, [t for t, _ in TYPES])
    with Session(engine) as session:
        connection, db = driver(session)
        step = timedelta(days=1) / events
        for base in range(0, events, CHUNK):
            n = min(CHUNK, events - base)
            rows = [
                (account, f"evt-missed-{base + k:08d}", t, "{}", db.time(start + step * (base + k)))
                for k, t in enumerate(_weighted(TYPES, rng, n))
            ]
            insert_rows(connection, db, "event", _EVENT_COLUMNS, rows)
            session.commit()
            connection, db = driver(session)
    commits: list[int] = []
    with dispatcher_busy(engine) as busy, Session(engine) as session:
        endpoint = session.get(Endpoint, endpoint_id)
        assert endpoint is not None
        began = time.perf_counter()
        made = recovery.recover(
            session,
            endpoint,
            since=start,
            until=start + timedelta(days=1, seconds=1),
            now=datetime.now(UTC),
            committed=commits.append,
        )
        seconds = time.perf_counter() - began
        began = time.perf_counter()
        again = recovery.recover(
            session,
            endpoint,
            since=start,
            until=start + timedelta(days=1, seconds=1),
            now=datetime.now(UTC),
        )
        second = time.perf_counter() - began
    return {
        "events": events,
        "deliveries": made,
        "seconds": round(seconds, 2),
        "chunks": len(commits),
        "chunk_size": recovery.CHUNK,
        "second_call_deliveries": again,
        "second_call_seconds": round(second, 2),
        "settled_meanwhile": busy["settled"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--create-database", action="store_true")
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20, help="timings of each first page")
    parser.add_argument("--recover", type=int, default=100_000, help="events in the window")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    options = parser.parse_args()
    rng = random.Random(20261202)
    with tempfile.TemporaryDirectory() as tmp:
        url = options.database_url or f"sqlite:///{tmp}/log.db"
        if options.create_database and options.database_url:
            load.create_database(url)
        engine = make_engine(url)
        try:
            migrate.upgrade(engine)
            with Session(engine) as session:
                big = accounts.create_key(session, ACCOUNT)[0].account_id
                stranger = accounts.create_key(session, STRANGER)[0].account_id
            start = datetime.now(UTC) - SPAN
            began = time.perf_counter()
            endpoints = fill(engine, big, ACCOUNT, options.deliveries, start, rng)
            fill(engine, stranger, STRANGER, options.deliveries // 10, start, rng)
            fill_s = time.perf_counter() - began
            with engine.begin() as connection:
                connection.execute(text("ANALYZE"))
            result: dict[str, Any] = {
                "database": engine.dialect.name,
                "deliveries": options.deliveries,
                "fill_s": round(fill_s, 1),
                "log": measure_log(engine, big, endpoints[0], start, options.repeat),
            }
            if options.recover:
                result["recover"] = measure_recover(engine, stranger, options.recover, rng)
            result["machine"] = machine()
        finally:
            engine.dispose()
            if options.create_database and options.database_url:
                load.drop_database(url)
    write_result("deliveries_log", result, options.results_dir)


if __name__ == "__main__":
    main()
