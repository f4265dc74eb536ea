"""The service's counters, kept in the database by the transactions that write what they count.

Attempts, finished deliveries, purged rows and actor restarts are added here
in the same transaction as the rows they count: committed together, or not
at all. So the counters equal the rows (retention deletes rows, and counts
what it deletes), survive the restart of any process, and read the same from
every API replica. ``/metrics`` (``api/metrics.py``) reads them.

Counting in the memory of the actors instead would lose what was counted
since the last scrape whenever an actor died, and split cancellations, which
the API makes too, between processes.

One row per ``(name, key)``; ``key`` holds the label values (``success``,
``success:250`` for a histogram bucket). Rows are upserted in sorted order:
two PostgreSQL transactions then never wait for each other's counter rows in
opposite orders.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from functools import lru_cache

from sqlalchemy import BigInteger
from sqlmodel import Field, Session, SQLModel

from models.driver import Driver, driver
from models.jobs import DeliveryStatus, Result

Key = tuple[str, str]

ATTEMPTS = "attempts"
ATTEMPT_MS_BUCKET = "attempt_ms_bucket"
ATTEMPT_MS_SUM = "attempt_ms_sum"
FINISHED = "finished"
PURGED = "purged"
ACTOR_RESTARTS = "actor_restarts"

SUCCESS, FAILURE = "success", "failure"
DURATION_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 15_000, 30_000)
"""Upper bounds of the attempt-duration buckets, in milliseconds (a last one is unbounded).

Fixed: stored counts are per bucket, so changing them needs a migration of the rows.
15 s is the default attempt timeout."""
INF = "inf"
FINISHED_STATUSES = (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED, DeliveryStatus.CANCELLED)


class StoredCounter(SQLModel, table=True):
    """One counter's value."""

    __tablename__ = "counter"

    name: str = Field(primary_key=True, max_length=40)
    key: str = Field(primary_key=True, max_length=40)
    value: int = Field(default=0, sa_type=BigInteger)


def bucket_of(duration_ms: int) -> str:
    """The key part of the smallest bucket that holds ``duration_ms``."""
    for bound in DURATION_BOUNDS_MS:
        if duration_ms <= bound:
            return str(bound)
    return INF


def tally_attempts(results: Iterable[Result]) -> Counter[Key]:
    """What a batch of results adds to the attempt counters (released jobs add nothing)."""
    counts: Counter[Key] = Counter()
    for r in results:
        if not r.attempted:
            continue
        result = SUCCESS if r.status is DeliveryStatus.SUCCEEDED else FAILURE
        counts[ATTEMPTS, result] += 1
        counts[ATTEMPT_MS_BUCKET, f"{result}:{bucket_of(r.duration_ms)}"] += 1
        counts[ATTEMPT_MS_SUM, result] += r.duration_ms
    return counts


def tally_finished(moved: Mapping[DeliveryStatus, int]) -> Counter[Key]:
    """What deliveries moved to a final status add to the finished counters."""
    return Counter({(FINISHED, str(s)): n for s, n in moved.items() if s in FINISHED_STATUSES})


@lru_cache(maxsize=4)
def _upsert_sql(db: Driver) -> str:
    m = db.mark
    return (
        f"INSERT INTO counter (name, key, value) VALUES ({m}, {m}, {m})"
        " ON CONFLICT (name, key) DO UPDATE SET value = counter.value + excluded.value"
    )


def add(session: Session, counts: Mapping[Key, int]) -> None:
    """Add ``counts`` to the counters, in the session's transaction (no commit)."""
    rows = [(name, key, n) for (name, key), n in sorted(counts.items()) if n]
    if rows:
        connection, db = driver(session)
        connection.exec_driver_sql(_upsert_sql(db), rows)


def read(session: Session) -> dict[Key, int]:
    """Every counter's value."""
    connection, _ = driver(session)
    rows = connection.exec_driver_sql("SELECT name, key, value FROM counter")
    return {(name, key): int(value) for name, key, value in rows}
