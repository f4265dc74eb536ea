"""Deliveries and attempts: the outbox rows the dispatcher claims, leases and settles.

A delivery is *open* while it is ``pending`` (due at ``due_at``) or
``delivering`` (leased to the dispatcher until ``due_at``). One partial index
over open rows, ordered by priority then due time, serves every claim: a due
pending row and an expired lease are claimed alike, so work held by a dead
actor comes back without any special path. Settled rows (``succeeded``,
``failed``, ``cancelled``) leave that index and cost the claim nothing.

The dispatcher moves work as :class:`models.jobs.Job` and
:class:`models.jobs.Result` values, which this module claims and records.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    CursorResult,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    text,
    update,
)
from sqlmodel import Field, Session, SQLModel, col

from models import counters
from models.base import UTCDateTime, utcnow
from models.driver import Driver, driver
from models.event_types import Priority
from models.jobs import DeliveryStatus, Job, Result

# SQLite autoincrements only INTEGER PRIMARY KEY; elsewhere rows may outnumber 2**31.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")
CHUNK = 500  # ids per IN (...) list


OPEN = (DeliveryStatus.PENDING, DeliveryStatus.DELIVERING)
OPEN_CLAUSE = text("status IN ('pending', 'delivering')")


class Delivery(SQLModel, table=True):
    """One event to one endpoint, until it succeeds, fails for good, or is cancelled."""

    __table_args__ = (
        ForeignKeyConstraint(["account_id", "event_id"], ["event.account_id", "event.id"]),
        Index(
            "ix_delivery_open",
            "priority",
            "due_at",
            sqlite_where=OPEN_CLAUSE,
            postgresql_where=OPEN_CLAUSE,
        ),
        Index("ix_delivery_event", "account_id", "event_id"),
        # The delivery log (models.delivery_log) walks these newest first, by creation
        # time then id; the endpoint-and-status one also serves cancel_open.
        Index("ix_delivery_endpoint", "endpoint_id", "status", "created_at", "id"),
        Index("ix_delivery_log", "account_id", "created_at", "id"),
        Index("ix_delivery_log_status", "account_id", "status", "created_at", "id"),
        Index("ix_delivery_log_endpoint", "endpoint_id", "created_at", "id"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BIG_ID)
    account_id: str = Field(max_length=36)
    event_id: str = Field(max_length=100)
    # Not a foreign key: a deleted endpoint's deliveries stay, cancelled, as history.
    endpoint_id: str = Field(max_length=36)
    priority: int
    status: DeliveryStatus = Field(sa_type=String(16))
    attempts: int = 0
    due_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Attempt(SQLModel, table=True):
    """One HTTP attempt of a delivery and how it ended."""

    id: int | None = Field(default=None, primary_key=True, sa_type=BIG_ID)
    delivery_id: int = Field(foreign_key="delivery.id", index=True, sa_type=BIG_ID)
    at: datetime = Field(sa_type=UTCDateTime)
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    duration_ms: int
    # The first KiB of the receiver's answer, as text: its own error message, shown in the log.
    response_body: str | None = Field(default=None, sa_type=Text)


# Core tables, for executemany statements that bypass the ORM's unit of work.
DELIVERY = Delivery.__table__  # type: ignore[attr-defined]


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the hot path: plain SQL, straight to the driver (see models.driver) ---------------------


# Written as the partial index's own predicate, in literals: a bound parameter
# would keep SQLite (and a generic PostgreSQL plan) from using ix_delivery_open.
_OPEN_SQL = "d." + OPEN_CLAUSE.text
# Every priority, so that the index is searched by (priority, due_at <= now) ranges
# instead of read in full: leases not yet expired would otherwise all be scanned.
_PRIORITIES_SQL = ", ".join(str(int(p)) for p in sorted(Priority))
_DELIVERING = DeliveryStatus.DELIVERING.value


@lru_cache(maxsize=16)
def _claim_sql(db: Driver, excluding: bool) -> str:
    # Columns in the order of Job's fields.
    m = db.mark
    return (
        "SELECT d.id, d.event_id, e.id, e.url, e.origin, e.secret, e.rate_limit,"
        " d.priority, d.attempts, v.body,"
        # The previous secret only while it still signs: the worker signs twice for it.
        f" CASE WHEN e.previous_secret_expires_at > {m} THEN e.previous_secret END,"
        " e.headers"
        " FROM delivery AS d"
        " JOIN endpoint AS e ON e.id = d.endpoint_id"
        " JOIN event AS v ON v.account_id = d.account_id AND v.id = d.event_id"
        f" WHERE {_OPEN_SQL} AND d.priority IN ({_PRIORITIES_SQL}) AND d.due_at <= {m}"
        " AND e.enabled IS TRUE"
        + (f" AND NOT (e.origin {db.in_list('text')})" if excluding else "")
        + f" ORDER BY d.priority, d.due_at LIMIT {m}"
        + (" FOR UPDATE OF d SKIP LOCKED" if db.postgresql else "")
    )


@lru_cache(maxsize=8)
def _lease_sql(db: Driver) -> str:
    m = db.mark
    return (
        f"UPDATE delivery SET status = '{_DELIVERING}', due_at = {m}, updated_at = {m}"
        f" WHERE id {db.in_list('bigint')}"
    )


@lru_cache(maxsize=8)
def _renew_sql(db: Driver) -> str:
    return (
        f"UPDATE delivery SET due_at = {db.mark}"
        f" WHERE id {db.in_list('bigint')} AND status = '{_DELIVERING}'"
    )


@lru_cache(maxsize=8)
def _record_sql(db: Driver) -> tuple[str, str]:
    """INSERT of attempts, UPDATE of deliveries: per row (SQLite) or of arrays (PostgreSQL)."""
    m = db.mark
    if db.postgresql:
        a = db.list_mark
        return (
            "INSERT INTO attempt (delivery_id, at, status_code, error, duration_ms, response_body)"
            f" SELECT * FROM unnest({a}::bigint[], {a}::timestamptz[], {a}::integer[],"
            f" {a}::text[], {a}::integer[], {a}::text[])",
            # ``leased`` is the status a row must still have, given as data: as a
            # constant, and with statistics from before the claims, the planner
            # takes no row to be delivering and scans them all for every id.
            f"UPDATE delivery AS d SET status = u.status, attempts = u.attempts,"
            f" due_at = coalesce(u.due_at, d.due_at), updated_at = {m}"
            f" FROM unnest({a}::bigint[], {a}::text[], {a}::integer[], {a}::timestamptz[],"
            f" {a}::text[]) AS u (id, status, attempts, due_at, leased)"
            " WHERE d.id = u.id AND d.status = u.leased RETURNING u.status",
        )
    return (
        "INSERT INTO attempt (delivery_id, at, status_code, error, duration_ms, response_body)"
        f" VALUES ({m}, {m}, {m}, {m}, {m}, {m})",
        f"UPDATE delivery SET status = {m}, attempts = {m}, due_at = coalesce({m}, due_at),"
        f" updated_at = {m} WHERE id = {m} AND status = '{_DELIVERING}'",
    )


def due(session: Session, *, now: datetime, limit: int, excluding: Sequence[str] = ()) -> list[Job]:
    """Up to ``limit`` due deliveries as jobs, high priority first, oldest first within one.

    Due means pending and due, or leased and expired; only enabled endpoints'
    deliveries, and none of the origins in ``excluding``. On PostgreSQL the rows
    are locked (``FOR UPDATE SKIP LOCKED``) till the transaction ends, so that
    concurrent claims take different rows. Lease them (:func:`lease`) before
    searching again: the next search would otherwise find them again.
    """
    if limit <= 0:
        return []
    connection, db = driver(session)
    at = db.time(now)
    params: tuple[Any, ...] = (at, at)
    if excluding:
        params += (db.values(excluding),)
    rows = connection.exec_driver_sql(_claim_sql(db, bool(excluding)), (*params, limit))
    return [
        Job(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9].encode(), r[10],
            () if r[11] is None else _headers(r[11]),
        )
        for r in rows
    ]  # fmt: skip


def _headers(stored: str | dict[str, str]) -> tuple[tuple[str, str], ...]:
    """An endpoint's headers as a job carries them (JSON text on SQLite, a dict from psycopg)."""
    if isinstance(stored, str):
        return _parsed_headers(stored)
    return tuple(stored.items())


@lru_cache(maxsize=1024)
def _parsed_headers(text: str) -> tuple[tuple[str, str], ...]:
    # Every job of an endpoint carries the same text: decoded once.
    parsed = json.loads(text)
    return () if parsed is None else tuple(parsed.items())


def lease(session: Session, delivery_ids: Sequence[int], *, now: datetime, until: datetime) -> None:
    """Lease these deliveries to the dispatcher until ``until`` (no commit)."""
    if delivery_ids:
        connection, db = driver(session)
        connection.exec_driver_sql(
            _lease_sql(db), (db.time(until), db.time(now), db.values(delivery_ids))
        )


def renew(session: Session, delivery_ids: Sequence[int], *, until: datetime) -> None:
    """Extend the leases of deliveries the dispatcher still holds, and commit."""
    if delivery_ids:
        connection, db = driver(session)
        connection.exec_driver_sql(_renew_sql(db), (db.time(until), db.values(delivery_ids)))
    session.commit()


def record(
    session: Session, results: Sequence[Result], *, now: datetime
) -> Counter[DeliveryStatus]:
    """Write attempts and new statuses of a batch of results (no commit).

    Only leased deliveries move: one cancelled meanwhile stays cancelled. Of two
    results for one delivery, the first counts (it is no longer leased for the second).
    Returns how many deliveries moved to each status (what the finished counters add).
    """
    if not results:
        return Counter()
    connection, db = driver(session)
    time = db.time
    at = time(now)
    attempted = [r for r in results if r.attempted]
    insert_attempts, update_deliveries = _record_sql(db)
    # The UPDATE would apply an arbitrary one of the rows of a repeated id (PostgreSQL),
    # or be split by status (SQLite): keep the first, as row-by-row updates in order do.
    moved = list({r.job.delivery_id: r for r in reversed(results)}.values())
    if db.postgresql:
        # One statement each, over arrays.
        if attempted:
            connection.exec_driver_sql(
                insert_attempts,
                (
                    [r.job.delivery_id for r in attempted],
                    [at if r.at is None else time(r.at) for r in attempted],
                    [r.status_code for r in attempted],
                    [r.error[:500] if r.error else None for r in attempted],
                    [r.duration_ms for r in attempted],
                    [r.response_body for r in attempted],
                ),
            )
        updated = connection.exec_driver_sql(
            update_deliveries,
            (
                at,
                [r.job.delivery_id for r in moved],
                [str(r.status) for r in moved],
                [r.job.attempts + r.attempted for r in moved],
                [time(r.due_at) for r in moved],
                [_DELIVERING] * len(moved),
            ),
        )
        return Counter(DeliveryStatus(status) for status in updated.scalars())
    if attempted:
        connection.exec_driver_sql(
            insert_attempts,
            [
                (
                    r.job.delivery_id,
                    at if r.at is None else time(r.at),
                    r.status_code,
                    r.error[:500] if r.error else None,
                    r.duration_ms,
                    r.response_body,
                )
                for r in attempted
            ],
        )
    # One executemany per new status: its rowcount is how many moved there.
    by_status: dict[DeliveryStatus, list[tuple[Any, ...]]] = {}
    for r in moved:
        by_status.setdefault(r.status, []).append(
            (str(r.status), r.job.attempts + r.attempted, time(r.due_at), at, r.job.delivery_id)
        )
    counts: Counter[DeliveryStatus] = Counter()
    for status, rows in by_status.items():
        counts[status] = connection.exec_driver_sql(update_deliveries, rows).rowcount
    return counts


def cancel_open(session: Session, endpoint_ids: Sequence[str], *, now: datetime) -> None:
    """Cancel every open delivery of these endpoints, and count them (no commit)."""
    cancelled = 0
    for ids in chunks(endpoint_ids):
        done: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(Delivery)
            .where(col(Delivery.endpoint_id).in_(ids), col(Delivery.status).in_(list(OPEN)))
            .values(status=DeliveryStatus.CANCELLED, updated_at=now)
        )
        cancelled += done.rowcount
    counters.add(session, counters.tally_finished({DeliveryStatus.CANCELLED: cancelled}))
