"""Deliveries and attempts: the outbox rows the dispatcher claims, leases and settles.

A delivery is *open* while it is ``pending`` (due at ``due_at``) or
``delivering`` (leased to the dispatcher until ``due_at``). One partial index
over open rows, ordered by priority then due time, serves every claim: a due
pending row and an expired lease are claimed alike, so work held by a dead
actor comes back without any special path. Settled rows (``succeeded``,
``failed``, ``cancelled``) leave that index and cost the claim nothing.

The dispatcher moves work as :class:`Job` and :class:`Result` values: plain,
picklable, batched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlmodel import Field, Session, SQLModel, col

from models.base import UTCDateTime, utcnow

# SQLite autoincrements only INTEGER PRIMARY KEY; elsewhere rows may outnumber 2**31.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")
CHUNK = 500  # ids per IN (...) list


class DeliveryStatus(StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


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
        Index("ix_delivery_endpoint", "endpoint_id", "status"),
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


# Core tables, for executemany statements that bypass the ORM's unit of work.
DELIVERY = Delivery.__table__  # type: ignore[attr-defined]
ATTEMPT = Attempt.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed delivery with everything needed to attempt it."""

    delivery_id: int
    event_id: str
    endpoint_id: str
    url: str
    origin: str
    secret: str
    rate_limit: float | None
    priority: int
    attempts: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Result:
    """How a job left the dispatcher: settled, rescheduled, or handed back unattempted.

    ``status`` is the delivery's new status; ``due_at`` is set when it is
    ``pending`` again. ``attempted`` is False when the job was only released
    (a parked lane, a forgotten endpoint): no attempt is recorded or counted.
    """

    job: Job
    status: DeliveryStatus
    due_at: datetime | None
    attempted: bool = True
    at: datetime | None = None
    status_code: int | None = None
    error: str | None = None
    duration_ms: int = 0
    gone: bool = False


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def claim(
    session: Session,
    *,
    now: datetime,
    limit: int,
    lease: timedelta,
    exclude_origins: Iterable[str] = (),
    room: Callable[[str], int] | None = None,
) -> list[Job]:
    """Lease up to ``limit`` due deliveries, high priority first, and commit.

    Due means pending and due, or leased and expired. ``exclude_origins`` are
    hosts that already hold their share of the dispatcher's capacity;
    ``room(origin)``, if given, is how many more an origin may take now: rows
    past it stay pending, so no host overshoots its share.
    """
    from models.endpoints import Endpoint
    from models.events import Event

    if limit <= 0:
        return []
    query = (
        select(
            col(Delivery.id),
            col(Delivery.event_id),
            col(Endpoint.id),
            col(Endpoint.url),
            col(Endpoint.origin),
            col(Endpoint.secret),
            col(Endpoint.rate_limit),
            col(Delivery.priority),
            col(Delivery.attempts),
            col(Event.body),
        )
        .join(Endpoint, col(Endpoint.id) == col(Delivery.endpoint_id))
        .join(
            Event,
            (col(Event.account_id) == col(Delivery.account_id))
            & (col(Event.id) == col(Delivery.event_id)),
        )
        .where(
            col(Delivery.status).in_(list(OPEN)),
            col(Delivery.due_at) <= now,
            col(Endpoint.enabled).is_(True),
        )
        .order_by(col(Delivery.priority), col(Delivery.due_at))
        .limit(limit)
    )
    excluded = list(exclude_origins)
    if excluded:
        query = query.where(col(Endpoint.origin).not_in(excluded))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=Delivery, skip_locked=True)
    rows = session.execute(query).all()
    jobs = [
        Job(
            delivery_id=r[0],
            event_id=r[1],
            endpoint_id=r[2],
            url=r[3],
            origin=r[4],
            secret=r[5],
            rate_limit=r[6],
            priority=r[7],
            attempts=r[8],
            body=r[9].encode(),
        )
        for r in rows
    ]
    if room is not None:
        left: dict[str, int] = {}
        kept = []
        for job in jobs:
            if job.origin not in left:
                left[job.origin] = room(job.origin)
            if left[job.origin] > 0:
                left[job.origin] -= 1
                kept.append(job)
        jobs = kept
    for ids in chunks([j.delivery_id for j in jobs]):
        session.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(ids))
            .values(status=DeliveryStatus.DELIVERING, due_at=now + lease, updated_at=now)
        )
    session.commit()
    return jobs


def renew(session: Session, delivery_ids: Sequence[int], *, until: datetime) -> None:
    """Extend the leases of deliveries the dispatcher still holds, and commit."""
    for ids in chunks(delivery_ids):
        session.execute(
            update(Delivery)
            .where(col(Delivery.id).in_(ids), col(Delivery.status) == DeliveryStatus.DELIVERING)
            .values(due_at=until)
        )
    session.commit()


def record(session: Session, results: Sequence[Result], *, now: datetime) -> None:
    """Write attempts and new statuses of a batch of results (no commit).

    Only leased deliveries move: one cancelled meanwhile stays cancelled.
    """
    attempts = [
        {
            "delivery_id": r.job.delivery_id,
            "at": r.at or now,
            "status_code": r.status_code,
            "error": (r.error or "")[:500] or None,
            "duration_ms": r.duration_ms,
        }
        for r in results
        if r.attempted
    ]
    if attempts:
        session.execute(insert(ATTEMPT), attempts)
    if results:
        session.execute(
            update(DELIVERY)
            .where(
                DELIVERY.c.id == bindparam("b_id"),
                DELIVERY.c.status == DeliveryStatus.DELIVERING,
            )
            .values(
                status=bindparam("b_status"),
                attempts=bindparam("b_attempts"),
                due_at=func.coalesce(bindparam("b_due", type_=UTCDateTime), DELIVERY.c.due_at),
                updated_at=now,
            ),
            [
                {
                    "b_id": r.job.delivery_id,
                    "b_status": r.status,
                    "b_attempts": r.job.attempts + (1 if r.attempted else 0),
                    "b_due": r.due_at,
                }
                for r in results
            ],
        )


def cancel_open(session: Session, endpoint_ids: Sequence[str], *, now: datetime) -> None:
    """Cancel every open delivery of these endpoints (no commit)."""
    for ids in chunks(endpoint_ids):
        session.execute(
            update(Delivery)
            .where(col(Delivery.endpoint_id).in_(ids), col(Delivery.status).in_(list(OPEN)))
            .values(status=DeliveryStatus.CANCELLED, updated_at=now)
        )


def count_by_status(session: Session) -> dict[str, int]:
    """How many deliveries stand in each status (for health and tests)."""
    rows = session.execute(
        select(col(Delivery.status), func.count()).group_by(col(Delivery.status))
    ).all()
    return {str(status): int(n) for status, n in rows}
