"""An endpoint's health statistics: the rollup by minute and hour, kept as results are recorded.

``GET .../webhook-endpoints/{id}/stats/`` must answer in well under 100 ms for an
endpoint with a million attempts in its window, which no query of the attempt
rows does. So every batch of results the scheduler records also adds, in the
same transaction and one statement, to two :class:`EndpointStat` rows per
endpoint: its minute's and its hour's, each with attempts, successes, a
histogram of durations and the latest success and failure. A window's
statistics then sum its whole hours and the minutes before the first of
them: at most 720 + 59 rows, whatever the traffic, and equal to the attempt
rows, both written by one commit.

Why these choices:

- Minutes: the shortest window is 60 s, and a window's edge is a minute at
  worst (it counts the whole minute its start falls in).
- Hours too: 30 days of minutes are 43,200 rows, which SQLite summed in
  100-180 ms on this machine under load; 30 days of hours are 720.
- A histogram of fixed buckets, not the durations: p50 and p95 are read from
  it, interpolated within their bucket (:func:`percentile`), which is as exact
  as an operator needs at a fixed cost. The bounds are fixed; changing them
  needs a migration of the rows.
- The latest success and failure are kept per row too, so the newest ones
  are a backward walk of the primary key, however old.

Retention (``models.retention``) deletes rows older than the longest window
or the retention period, whichever is longer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import BigInteger, Index
from sqlmodel import Field, Session, SQLModel

from models.base import UTCDateTime
from models.driver import Driver, driver
from models.jobs import DeliveryStatus, Result

MIN_WINDOW = 60
MAX_WINDOW = 30 * 24 * 3600
"""The longest window, in seconds: the rollup is kept at least this long."""
DEFAULT_WINDOW = 24 * 3600

BOUNDS_MS = (10, 25, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 30_000)
"""Upper bounds of the duration buckets (ms); one more bucket holds everything longer."""
BUCKETS = [f"h{i:02d}" for i in range(len(BOUNDS_MS) + 1)]


class EndpointStat(SQLModel, table=True):
    """What one endpoint's attempts of one minute, or of one hour, added up to."""

    __tablename__ = "endpoint_stat"
    # Retention deletes by age, across endpoints.
    __table_args__ = (Index("ix_endpoint_stat_start", "start"),)

    endpoint_id: str = Field(primary_key=True, max_length=36)
    span: int = Field(primary_key=True)
    """Seconds the row covers: 60 or 3600."""
    start: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    attempts: int = Field(sa_type=BigInteger)
    succeeded: int = Field(sa_type=BigInteger)
    h00: int = Field(default=0, sa_type=BigInteger)
    h01: int = Field(default=0, sa_type=BigInteger)
    h02: int = Field(default=0, sa_type=BigInteger)
    h03: int = Field(default=0, sa_type=BigInteger)
    h04: int = Field(default=0, sa_type=BigInteger)
    h05: int = Field(default=0, sa_type=BigInteger)
    h06: int = Field(default=0, sa_type=BigInteger)
    h07: int = Field(default=0, sa_type=BigInteger)
    h08: int = Field(default=0, sa_type=BigInteger)
    h09: int = Field(default=0, sa_type=BigInteger)
    h10: int = Field(default=0, sa_type=BigInteger)
    h11: int = Field(default=0, sa_type=BigInteger)
    h12: int = Field(default=0, sa_type=BigInteger)
    h13: int = Field(default=0, sa_type=BigInteger)
    h14: int = Field(default=0, sa_type=BigInteger)
    h15: int = Field(default=0, sa_type=BigInteger)
    last_success_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_failure_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_failure_status: int | None = None
    last_failure_error: str | None = Field(default=None, max_length=500)


# --- pure: what a batch adds, and percentiles ----------------------------------------------


def bucket_index(duration_ms: int) -> int:
    """The histogram bucket of ``duration_ms``."""
    for index, bound in enumerate(BOUNDS_MS):
        if duration_ms <= bound:
            return index
    return len(BOUNDS_MS)


MINUTE, HOUR = 60, 3600


def minute_of(at: datetime) -> datetime:
    """The start of the UTC minute ``at`` falls in."""
    return at.astimezone(UTC).replace(second=0, microsecond=0)


def hour_of(at: datetime) -> datetime:
    """The start of the UTC hour ``at`` falls in."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass
class Tally:
    """What the attempts of one endpoint in one minute (or hour) add to its rollup row."""

    attempts: int = 0
    succeeded: int = 0
    histogram: list[int] | None = None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_failure_status: int | None = None
    last_failure_error: str | None = None

    def add(self, result: Result, at: datetime) -> None:
        if self.histogram is None:
            self.histogram = [0] * len(BUCKETS)
        self.attempts += 1
        self.histogram[bucket_index(result.duration_ms)] += 1
        if result.status is DeliveryStatus.SUCCEEDED:
            self.succeeded += 1
            if self.last_success_at is None or at >= self.last_success_at:
                self.last_success_at = at
        elif self.last_failure_at is None or at >= self.last_failure_at:
            self.last_failure_at = at
            self.last_failure_status = result.status_code
            self.last_failure_error = result.error[:500] if result.error else None


def tally(results: Sequence[Result], now: datetime) -> dict[tuple[str, int, datetime], Tally]:
    """Per (endpoint, span, start), what ``results`` add to its minute and to its hour;
    released jobs add nothing.

    An attempt counts at its own time (``Result.at``, else ``now``), as its row is written.
    """
    tallies: dict[tuple[str, int, datetime], Tally] = {}
    for r in results:
        if not r.attempted:
            continue
        at = now if r.at is None else r.at
        for key in (
            (r.job.endpoint_id, MINUTE, minute_of(at)),
            (r.job.endpoint_id, HOUR, hour_of(at)),
        ):
            found = tallies.get(key)
            if found is None:
                found = tallies[key] = Tally()
            found.add(r, at)
    return tallies


def percentile(histogram: Sequence[int], q: float) -> int | None:
    """The ``q`` quantile (0 < q <= 1) of the durations counted in ``histogram``, in ms.

    Interpolated linearly within the bucket it falls in (the first bucket
    starts at 0 ms); in the last, unbounded bucket, that bucket's lower bound.
    None when nothing was counted.
    """
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(histogram):
        if count and below + count >= rank:
            low = 0 if index == 0 else BOUNDS_MS[index - 1]
            if index == len(BOUNDS_MS):
                return low
            high = BOUNDS_MS[index]
            return round(low + (high - low) * (rank - below) / count)
        below += count
    return BOUNDS_MS[-1]  # unreachable: rank <= total


# --- the rollup write: one statement per batch -----------------------------------------------

_COLUMNS = [
    ("endpoint_id", "text"),
    ("span", "integer"),
    ("start", "timestamptz"),
    ("attempts", "bigint"),
    ("succeeded", "bigint"),
    *[(name, "bigint") for name in BUCKETS],
    ("last_success_at", "timestamptz"),
    ("last_failure_at", "timestamptz"),
    ("last_failure_status", "integer"),
    ("last_failure_error", "text"),
]


def _newer(column: str, stamp: str) -> str:
    # The incoming value when its time is newer (NULL > x is NULL: the stored one stays).
    return (
        f"{column} = CASE WHEN endpoint_stat.{stamp} IS NULL"
        f" OR excluded.{stamp} > endpoint_stat.{stamp}"
        f" THEN excluded.{column} ELSE endpoint_stat.{column} END"
    )


@lru_cache(maxsize=4)
def _upsert_sql(db: Driver) -> str:
    names = ", ".join(name for name, _ in _COLUMNS)
    if db.postgresql:
        arrays = ", ".join(f"{db.list_mark}::{kind}[]" for _, kind in _COLUMNS)
        source = f"SELECT * FROM unnest({arrays})"
    else:
        source = f"VALUES ({db.marks(len(_COLUMNS))})"
    sums = [f"{c} = endpoint_stat.{c} + excluded.{c}" for c in ("attempts", "succeeded", *BUCKETS)]
    latest = [
        _newer("last_success_at", "last_success_at"),
        _newer("last_failure_status", "last_failure_at"),
        _newer("last_failure_error", "last_failure_at"),
        _newer("last_failure_at", "last_failure_at"),  # last: the others read the old one
    ]
    return (
        f"INSERT INTO endpoint_stat ({names}) {source}"
        " ON CONFLICT (endpoint_id, span, start) DO UPDATE SET " + ", ".join(sums + latest)
    )


def record(session: Session, results: Sequence[Result], *, now: datetime) -> None:
    """Add a batch of results to the rollup, in one statement (no commit).

    Rows are written in key order, so that two PostgreSQL transactions never
    wait for each other's rows in opposite orders.
    """
    tallies = tally(results, now)
    if not tallies:
        return
    connection, db = driver(session)
    time = db.time
    rows = [
        (
            endpoint_id,
            span,
            time(start),
            t.attempts,
            t.succeeded,
            *(t.histogram or [0] * len(BUCKETS)),
            time(t.last_success_at),
            time(t.last_failure_at),
            t.last_failure_status,
            t.last_failure_error,
        )
        for (endpoint_id, span, start), t in sorted(tallies.items())
    ]
    if db.postgresql:
        connection.exec_driver_sql(
            _upsert_sql(db), tuple(list(column) for column in zip(*rows, strict=True))
        )
    else:
        connection.exec_driver_sql(_upsert_sql(db), rows)


# --- the statistics of a window --------------------------------------------------------------


BreakerView = Literal["closed", "open", "half_open", "unknown"]


class LastFailure(BaseModel):
    """The most recent failed attempt."""

    at: datetime
    status_code: int | None = PydanticField(
        description="The HTTP status answered; null for a timeout or a connection error."
    )
    error: str | None


class EndpointStats(BaseModel):
    """An endpoint's attempts over a window, and how it stands now."""

    window_seconds: int
    attempts: int
    succeeded: int
    failed: int
    success_rate: float | None = PydanticField(
        description="succeeded / attempts; null without attempts in the window."
    )
    p50_ms: int | None = PydanticField(
        description="Median attempt duration, estimated from a histogram; null without attempts."
    )
    p95_ms: int | None
    last_success_at: datetime | None = PydanticField(
        description="The latest successful attempt, in or before the window (null: none kept)."
    )
    last_failure: LastFailure | None
    pending: int = PydanticField(description="Deliveries not yet finished (pending or in flight).")
    breaker: BreakerView = PydanticField(
        description="The dispatcher's circuit breaker for the endpoint's host now;"
        " `unknown` when the dispatcher did not answer within 1 s."
    )


@lru_cache(maxsize=4)
def _window_sql(db: Driver) -> str:
    # The whole hours, then the minutes before the first: two ranges of the primary key.
    m = db.mark
    columns = ("attempts", "succeeded", *BUCKETS)
    picked = ", ".join(columns)
    return (
        f"SELECT {', '.join(f'sum({c})' for c in columns)} FROM ("
        f"SELECT {picked} FROM endpoint_stat"
        f" WHERE endpoint_id = {m} AND span = {HOUR} AND start >= {m}"
        f" UNION ALL SELECT {picked} FROM endpoint_stat"
        f" WHERE endpoint_id = {m} AND span = {MINUTE} AND start >= {m} AND start < {m}"
        ") AS w"
    )


@lru_cache(maxsize=4)
def _latest_sql(db: Driver) -> tuple[str, str]:
    m = db.mark
    # The hours' rows hold their minutes' latest: fewer rows to walk back.
    latest = (
        " FROM endpoint_stat WHERE endpoint_id = {m} AND span = " + str(HOUR) + " AND {col}"
        " IS NOT NULL ORDER BY start DESC LIMIT 1"
    )
    return (
        "SELECT last_success_at" + latest.format(m=m, col="last_success_at"),
        "SELECT last_failure_at, last_failure_status, last_failure_error"
        + latest.format(m=m, col="last_failure_at"),
    )


@lru_cache(maxsize=4)
def _pending_sql(db: Driver) -> str:
    return (
        f"SELECT count(*) FROM delivery WHERE endpoint_id = {db.mark}"
        " AND status IN ('pending', 'delivering')"
    )


def _aware(value: Any) -> datetime | None:
    # SQLite gives naive UTC text or datetimes through the driver; PostgreSQL aware ones.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def window_stats(
    session: Session, endpoint_id: str, *, window: int, now: datetime, breaker: BreakerView
) -> EndpointStats:
    """The statistics of ``endpoint_id`` over the ``window`` seconds to ``now``.

    The window starts at the minute ``now - window`` falls in. The caller has
    checked the endpoint is the account's; ``breaker`` is the dispatcher's answer.
    """
    connection, db = driver(session)
    since = minute_of(now - timedelta(seconds=window))
    first_hour = hour_of(since)
    if first_hour < since:
        first_hour += timedelta(hours=1)
    hours, minutes = db.time(first_hour), db.time(since)
    sums = connection.exec_driver_sql(
        _window_sql(db), (endpoint_id, hours, endpoint_id, minutes, hours)
    ).one()
    attempts, succeeded, *histogram = (int(v or 0) for v in sums)
    success_sql, failure_sql = _latest_sql(db)
    success = connection.exec_driver_sql(success_sql, (endpoint_id,)).first()
    failure = connection.exec_driver_sql(failure_sql, (endpoint_id,)).first()
    pending = connection.exec_driver_sql(_pending_sql(db), (endpoint_id,)).scalar_one()
    failed_at = None if failure is None else _aware(failure[0])
    return EndpointStats(
        window_seconds=window,
        attempts=attempts,
        succeeded=succeeded,
        failed=attempts - succeeded,
        success_rate=round(succeeded / attempts, 4) if attempts else None,
        p50_ms=percentile(histogram, 0.5),
        p95_ms=percentile(histogram, 0.95),
        last_success_at=None if success is None else _aware(success[0]),
        last_failure=(
            None
            if failure is None or failed_at is None
            else LastFailure(at=failed_at, status_code=failure[1], error=failure[2])
        ),
        pending=int(pending),
        breaker=breaker,
    )


@lru_cache(maxsize=4)
def _purge_sql(db: Driver) -> str:
    m = db.mark
    return (
        f"DELETE FROM endpoint_stat WHERE start < {m} AND (endpoint_id, span, start) IN"
        f" (SELECT endpoint_id, span, start FROM endpoint_stat WHERE start < {m} LIMIT {m})"
    )


def purge(session: Session, *, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` rollup rows that start before ``cutoff``; how many (no commit).

    An hour that starts before ``cutoff`` goes whole: the rollup is kept for
    ``cutoff`` less up to an hour, never more.
    """
    connection, db = driver(session)
    at = db.time(cutoff)
    return int(connection.exec_driver_sql(_purge_sql(db), (at, at, limit)).rowcount)
