"""Endpoint statistics: the p95 of ``GET .../{id}/stats/`` for an endpoint of a million attempts.

``python -m benchmarks.endpoint_stats [--attempts 1000000] [--days 30] [--calls 200]
[--database-url URL]``

Builds an endpoint with ``--attempts`` attempts spread evenly over the last
``--days`` days, as the service stores them: the attempt rows (on 1,000
deliveries) and the statistics rollup, written by ``models.endpoint_stats.record``
in batches of 1,000 results as the scheduler writes them (their time is
reported: the rollup's cost on the hot path). Then calls the stats operation
through the app (in process, no dispatcher: ``breaker`` answers ``unknown``
at once) ``--calls`` times for each window, 1 day and 30 days, and reports
p50 and p95. The target is p95 under 100 ms.

SQLite in a fresh file by default; ``--database-url`` names a PostgreSQL
server, where a fresh database is created and dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from api.app import create_app
from benchmarks.harness import RESULTS, machine, percentile, write_result
from dispatcher.settings import Settings
from models import accounts, endpoint_stats, endpoints, migrate
from models.db import make_engine
from models.driver import driver, insert_rows
from models.endpoints import EndpointCreate
from models.event_types import EventType
from models.events import EventIn, ingest
from models.jobs import DeliveryStatus, Job, Result

BATCH = 1000
DELIVERIES = 1000
WINDOWS = {"1d": 86_400, "30d": endpoint_stats.MAX_WINDOW}


def _fresh_database(server: str | None, tmp: Path) -> tuple[str, Any]:
    """A migrated, empty database and how to drop it."""
    if server is None:
        url = f"sqlite:///{tmp}/stats.db"
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        return url, lambda: None
    name = f"sentinmail_bench_stats_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def _populate(engine: Any, attempts: int, days: float, now: datetime) -> dict[str, Any]:
    """The account, its endpoint with ``attempts`` attempts, and what writing them cost."""
    with Session(engine) as session:
        api_key, key = accounts.create_key(session, "bench")
        account = api_key.account_id
    with Session(engine) as session:
        endpoint = endpoints.create_endpoint(
            session,
            account,
            EndpointCreate(url="https://bench.example/hook", events=[EventType.OPENED]),
        )
        endpoint_id = endpoint.id
    with Session(engine) as session:
        events = [
            EventIn(id=f"evt-{i}", type=EventType.OPENED, recipient="u@example.com")
            for i in range(DELIVERIES)
        ]
        ingest(session, account, events)
    with Session(engine) as session:
        connection, db = driver(session)
        delivery_ids = [
            row[0]
            for row in connection.exec_driver_sql(
                f"SELECT id FROM delivery WHERE endpoint_id = {db.mark} ORDER BY id",
                (endpoint_id,),
            )
        ]
    span = timedelta(days=days).total_seconds()
    step = span / attempts
    rollup_seconds: list[float] = []
    started = time.perf_counter()
    written = 0
    while written < attempts:
        count = min(BATCH, attempts - written)
        results: list[Result] = []
        rows: list[tuple[Any, ...]] = []
        for i in range(written, written + count):
            at = now - timedelta(seconds=span - i * step)
            delivery_id = delivery_ids[i % len(delivery_ids)]
            ok = i % 10 != 0  # one attempt in ten fails
            duration = 20 + (i * 7919) % 400 if ok else 15_000
            job = Job(delivery_id, f"evt-{i % DELIVERIES}", endpoint_id, "u", "o", "s", None,
                      1, 0, b"")  # fmt: skip
            results.append(
                Result(job, DeliveryStatus.SUCCEEDED if ok else DeliveryStatus.PENDING, None,
                       at=at, status_code=200 if ok else 503, duration_ms=duration)
            )  # fmt: skip
            rows.append((delivery_id, None, 200 if ok else 503, None, duration))
        with Session(engine) as session:
            connection, db = driver(session)
            rows = [
                (d, db.time(r.at), c, e, ms)
                for (d, _, c, e, ms), r in zip(rows, results, strict=True)
            ]
            insert_rows(
                connection,
                db,
                "attempt",
                {"delivery_id": "bigint", "at": "timestamptz", "status_code": "integer",
                 "error": "text", "duration_ms": "integer"},
                rows,
            )  # fmt: skip
            began = time.perf_counter()
            endpoint_stats.record(session, results, now=now)
            rollup_seconds.append(time.perf_counter() - began)
            session.commit()
        written += count
    return {
        "key": key,
        "endpoint_id": endpoint_id,
        "populate_s": round(time.perf_counter() - started, 1),
        "rollup_ms_per_batch_p50": round(1000 * percentile(rollup_seconds, 50), 2),
        "rollup_ms_per_batch_p95": round(1000 * percentile(rollup_seconds, 95), 2),
    }


def _counted(engine: Any) -> int:
    """Attempts the rollup's minute rows count, in all."""
    with Session(engine) as session:
        connection, _ = driver(session)
        total = connection.exec_driver_sql(
            f"SELECT sum(attempts) FROM endpoint_stat WHERE span = {endpoint_stats.MINUTE}"
        ).scalar_one()
    return int(total or 0)


def run(*, attempts: int, days: float, calls: int, database_url: str | None) -> dict[str, Any]:
    """Populate, then time the stats call; the result."""
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = _fresh_database(database_url, Path(tmp))
        engine = make_engine(url)
        try:
            now = datetime.now(UTC)
            populated = _populate(engine, attempts, days, now)
            headers = {"X-API-Key": populated.pop("key")}
            path = f"/api/emails/webhook-endpoints/{populated.pop('endpoint_id')}/stats/"
            windows: dict[str, Any] = {}
            with TestClient(create_app(Settings(database_url=url), engine)) as client:
                for label, window in WINDOWS.items():
                    latencies: list[float] = []
                    answer: dict[str, Any] = {}
                    for _ in range(calls):
                        began = time.perf_counter()
                        response = client.get(f"{path}?window={window}", headers=headers)
                        latencies.append(1000 * (time.perf_counter() - began))
                        assert response.status_code == 200, response.text
                        answer = response.json()
                    windows[label] = {
                        "attempts": answer["attempts"],
                        "p50_ms": round(percentile(latencies, 50), 2),
                        "p95_ms": round(percentile(latencies, 95), 2),
                        "max_ms": round(max(latencies), 2),
                    }
            counted = _counted(engine)
        finally:
            engine.dispose()
            drop()
    return {
        **info,
        "database": make_url(url).get_backend_name(),
        "attempts": attempts,
        "days": days,
        "calls": calls,
        **populated,
        "windows": windows,
        # Every attempt in the rollup's minutes once (what the hours hold is the same sums).
        "lost": max(0, attempts - counted),
        "duplicates": max(0, counted - attempts),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0, help="over how many days, to now")
    parser.add_argument("--calls", type=int, default=200, help="stats calls per window")
    parser.add_argument(
        "--database-url", default=None, help="a PostgreSQL server (default: a fresh SQLite file)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    options = vars(parser.parse_args())
    results_dir = options.pop("results_dir")
    write_result("endpoint_stats", run(**options), results_dir)


if __name__ == "__main__":
    main()
