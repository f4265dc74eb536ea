"""The delivery log: an account's deliveries, newest first, filtered; one in full; a retry.

Pages are walked by keyset, newest first by creation time, then by id:
the cursor is the last delivery shown, ``(created_at, id)``, opaque to
clients (URL-safe base64 of its microseconds and id, 16 bytes, 22
characters: every string of :data:`CURSOR_PATTERN` is one, so a cursor the
schema allows is never refused). New deliveries are created later, so a
walk that follows ``next_cursor`` while deliveries keep arriving neither
skips nor repeats one. Ordered by time rather than by id alone so that
``since`` and ``until`` are ranges of the same indexes: with id order, a
window a week back scanned every newer row (over a second on 1,000,000).

Each page costs three statements whatever its filters: the deliveries (with
their event's type, joined by the event's primary key), then per delivery the
count of attempts and the last one. The indexes it walks are declared on
:class:`models.deliveries.Delivery` (account, account and status, endpoint,
endpoint and status, each then creation time and id).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import func, select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from models.deliveries import Attempt, Delivery
from models.endpoints import Endpoint
from models.errors import Conflict, InvalidInput, NotFound
from models.event_types import EventType
from models.events import AttemptOut, Event
from models.jobs import DeliveryStatus

MAX_LIMIT = 250
# Past any id a BIGINT holds: a larger one is no delivery, and no database compares it.
_MAX_ID = 2**63 - 1
# 16 bytes in unpadded base64: 21 characters of 6 bits, then one holding the last 2.
CURSOR_PATTERN = "^[A-Za-z0-9_-]{21}[AQgw]$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last microsecond a stored time can have (see models.events.Instant).
_MAX_US = (datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // timedelta(
    microseconds=1
)
_CURSOR = re.compile(CURSOR_PATTERN)


class LastAttempt(AttemptOut):
    """The latest attempt of a delivery."""


class DeliveryItem(BaseModel):
    """One delivery of one event to one endpoint, as the log lists it."""

    id: str = PydanticField(description="Stable id of the delivery.", examples=["1042"])
    event_id: str = PydanticField(examples=["evt-6f1c2d4e-8a7b-4c3d-9e2f-1a0b3c4d5e6f"])
    event_type: EventType
    endpoint_id: str
    status: DeliveryStatus
    attempt_count: int = PydanticField(description="Attempts made so far.", examples=[3])
    created_at: datetime
    next_attempt_at: datetime | None = PydanticField(
        description="When the next attempt is due, while the delivery is pending."
    )
    last_attempt: LastAttempt | None


class DeliveryDetail(DeliveryItem):
    """A delivery with its payload as sent and every attempt, oldest first."""

    payload: dict[str, Any]
    attempts: list[AttemptOut]


class DeliveryPage(BaseModel):
    """One page of the log, newest first; follow ``next_cursor`` for older ones."""

    results: list[DeliveryItem]
    next_cursor: str | None = PydanticField(
        description="Pass as `cursor` for the next page; null on the last one.",
        examples=["AAZOewkMKgAAAAAAAAAEEg"],
    )


def encode_cursor(created_at: datetime, delivery_id: int) -> str:
    """The opaque cursor that continues after the delivery ``(created_at, delivery_id)``."""
    us = (created_at - _EPOCH) // timedelta(microseconds=1)
    raw = us.to_bytes(8, "big") + delivery_id.to_bytes(8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The ``(created_at, id)`` a cursor continues after; InvalidInput naming ``cursor``."""
    if not _CURSOR.fullmatch(cursor):
        raise InvalidInput(("query", "cursor"), "is not a cursor this API gave (use next_cursor)")
    raw = base64.urlsafe_b64decode(cursor + "==")
    # Values past any stored one are clamped: everything stored is older.
    us = min(int.from_bytes(raw[:8], "big"), _MAX_US)
    return _EPOCH + timedelta(microseconds=us), min(int.from_bytes(raw[8:], "big"), _MAX_ID)


def parse_id(delivery_id: str) -> int:
    """A delivery id from a path; NotFound for anything no delivery can have."""
    if delivery_id.isascii() and delivery_id.isdigit() and 0 < int(delivery_id) <= _MAX_ID:
        return int(delivery_id)
    raise NotFound("delivery", delivery_id)


def _columns() -> tuple[Any, ...]:
    d = Delivery
    return (
        col(d.id),
        col(d.event_id),
        col(Event.type),
        col(d.endpoint_id),
        col(d.status),
        col(d.created_at),
        col(d.due_at),
    )


def _joined() -> Any:
    return select(*_columns()).join(
        Event,
        (col(Event.account_id) == col(Delivery.account_id))
        & (col(Event.id) == col(Delivery.event_id)),
    )


def list_deliveries(
    session: Session,
    account_id: str,
    *,
    limit: int,
    cursor: str | None = None,
    endpoint_id: str | None = None,
    status: DeliveryStatus | None = None,
    event_type: EventType | None = None,
    event_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> DeliveryPage:
    """One page of the account's deliveries, newest first, matching every filter given.

    ``since`` is inclusive and ``until`` exclusive, on the delivery's creation.
    """
    # No id holds NUL, and PostgreSQL refuses to compare one.
    if "\x00" in (endpoint_id or "") + (event_id or ""):
        return DeliveryPage(results=[], next_cursor=None)
    query = _joined().where(col(Delivery.account_id) == account_id)
    if cursor is not None:
        at, last_id = decode_cursor(cursor)
        # The range bound alone is what an index can seek; the OR finishes the keyset.
        query = query.where(
            col(Delivery.created_at) <= at,
            (col(Delivery.created_at) < at) | (col(Delivery.id) < last_id),
        )
    if endpoint_id is not None:
        query = query.where(col(Delivery.endpoint_id) == endpoint_id)
    if status is not None:
        query = query.where(col(Delivery.status) == status.value)
    if event_type is not None:
        # A lookup of each row's event by its key, not a condition of the join: SQLite
        # then built a Bloom filter over every event of the account first (170-320 ms
        # a page on 1,000,000 deliveries).
        own = aliased(Event)
        of_event = (
            select(col(own.type))
            .where(
                col(own.account_id) == col(Delivery.account_id),
                col(own.id) == col(Delivery.event_id),
            )
            .correlate(Delivery)
            .scalar_subquery()
        )
        query = query.where(of_event == event_type.value)
    if event_id is not None:
        query = query.where(col(Delivery.event_id) == event_id)
    if since is not None:
        query = query.where(col(Delivery.created_at) >= since)
    if until is not None:
        query = query.where(col(Delivery.created_at) < until)
    rows = session.execute(
        query.order_by(col(Delivery.created_at).desc(), col(Delivery.id).desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    counts, last = _attempt_summaries(session, [r[0] for r in rows])
    return DeliveryPage(
        results=[_item(r, counts.get(r[0], 0), last.get(r[0])) for r in rows],
        next_cursor=encode_cursor(rows[-1][5], rows[-1][0]) if more else None,
    )


def _attempt_summaries(
    session: Session, delivery_ids: list[int]
) -> tuple[dict[int, int], dict[int, LastAttempt]]:
    """Per delivery, how many attempts it has and its latest one (two statements)."""
    if not delivery_ids:
        return {}, {}
    summary = session.execute(
        select(col(Attempt.delivery_id), func.count(), func.max(col(Attempt.id)))
        .where(col(Attempt.delivery_id).in_(delivery_ids))
        .group_by(col(Attempt.delivery_id))
    ).all()
    counts = {int(r[0]): int(r[1]) for r in summary}
    latest = [int(r[2]) for r in summary]
    last: dict[int, LastAttempt] = {}
    if latest:
        for attempt in session.execute(
            select(Attempt).where(col(Attempt.id).in_(latest))
        ).scalars():
            last[attempt.delivery_id] = LastAttempt.model_validate(attempt, from_attributes=True)
    return counts, last


def _item(row: Sequence[Any], attempt_count: int, last: LastAttempt | None) -> DeliveryItem:
    delivery_id, event_id, event_type, endpoint_id, status, created_at, due_at = row[:7]
    status = DeliveryStatus(status)
    return DeliveryItem(
        id=str(delivery_id),
        event_id=event_id,
        event_type=EventType(event_type),
        endpoint_id=endpoint_id,
        status=status,
        attempt_count=attempt_count,
        created_at=created_at,
        next_attempt_at=due_at if status == DeliveryStatus.PENDING else None,
        last_attempt=last,
    )


def get_delivery(session: Session, account_id: str, delivery_id: str) -> DeliveryDetail:
    """The account's delivery with its payload and every attempt, oldest first."""
    number = parse_id(delivery_id)
    row = session.execute(
        _joined()
        .add_columns(col(Event.body))
        .where(col(Delivery.id) == number, col(Delivery.account_id) == account_id)
    ).first()
    if row is None:
        raise NotFound("delivery", delivery_id)
    attempts = [
        AttemptOut.model_validate(a, from_attributes=True)
        for a in session.execute(
            select(Attempt).where(col(Attempt.delivery_id) == number).order_by(col(Attempt.id))
        ).scalars()
    ]
    last = LastAttempt.model_validate(attempts[-1].model_dump()) if attempts else None
    item = _item(row, len(attempts), last)
    return DeliveryDetail(**dict(item), payload=json.loads(row[7]), attempts=attempts)


def retry(session: Session, account_id: str, delivery_id: str, *, now: datetime) -> DeliveryItem:
    """Make the delivery pending and due at ``now``, whatever it ended as, and commit.

    Conflict while it is being attempted (``delivering``: its result is coming),
    when its endpoint is disabled (enable it first) or was deleted. One more
    attempt is made; its schedule continues from the attempts already made, so
    a delivery that had exhausted it is ``failed`` again after one failing try.
    Never deduplicated: each call that succeeds makes one more attempt due.
    """
    number = parse_id(delivery_id)
    found = session.execute(
        select(col(Delivery.status), col(Endpoint.enabled))
        .select_from(Delivery)
        .outerjoin(Endpoint, col(Endpoint.id) == col(Delivery.endpoint_id))
        .where(col(Delivery.id) == number, col(Delivery.account_id) == account_id)
    ).first()
    if found is None:
        raise NotFound("delivery", delivery_id)
    status, enabled = DeliveryStatus(found[0]), found[1]
    if enabled is None:
        raise Conflict("the endpoint of this delivery was deleted: it cannot be retried")
    if not enabled:
        raise Conflict("the endpoint is disabled: enable it first, then retry")
    if status == DeliveryStatus.DELIVERING:
        raise Conflict("the delivery is being attempted now: retry once it has settled")
    moved = session.execute(
        Delivery.__table__.update()  # type: ignore[attr-defined]
        .where(col(Delivery.id) == number, col(Delivery.status) == status.value)
        .values(status=DeliveryStatus.PENDING.value, due_at=now, updated_at=now)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise Conflict("the delivery changed meanwhile: read it again and retry")
    session.commit()
    row = session.execute(_joined().where(col(Delivery.id) == number)).one()
    counts, last = _attempt_summaries(session, [number])
    return _item(row, counts.get(number, 0), last.get(number))
