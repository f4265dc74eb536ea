"""Events: the ingestion schema, the table, the outbox write, and the event view.

An accepted event is stored once, as the exact JSON body its deliveries send
(so every retry and every endpoint gets the same bytes), together with one
delivery per subscribed, enabled endpoint of the account, in one transaction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, TypeAdapter, field_validator
from pydantic import Field as PydanticField
from sqlalchemy import Text, insert, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col

from models.base import UTCDateTime, new_id, utcnow
from models.deliveries import DELIVERY, Attempt, Delivery, DeliveryStatus
from models.endpoints import Endpoint
from models.errors import NotFound
from models.event_types import EventType

MAX_BATCH = 1000


# A syntactic check only: recipients come from our own email platform, which
# has already delivered to them; full RFC 5321 validation cost 80 us per event.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


def _check_email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError("is not an email address (expected local@domain.tld)")
    return value


def _check_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=value.tzinfo or UTC).astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


def _check_json(value: dict[str, Any] | None) -> dict[str, Any] | None:
    # Sent as strict JSON in UTF-8: no NaN or Infinity, no unpaired surrogates.
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except ValueError as exc:
        raise ValueError(f"is not representable as strict JSON ({exc})") from None
    return value


def _new_event_id() -> str:
    return f"evt-{new_id()}"


class EventIn(BaseModel):
    """One event as the email platform submits it."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = PydanticField(
        default=None,
        min_length=1,
        max_length=100,
        description="Stable id; `evt-<uuid4>` is assigned when absent. Resubmitting it is a no-op.",
        examples=["evt-6f1c2d4e-8a7b-4c3d-9e2f-1a0b3c4d5e6f"],
    )
    type: EventType
    recipient: Annotated[str, AfterValidator(_check_email)] = PydanticField(
        max_length=320, examples=["user@example.com"]
    )
    sent_email_id: str | None = PydanticField(default=None, max_length=200)
    campaign_id: str | None = PydanticField(default=None, max_length=200)
    metadata: Annotated[dict[str, Any] | None, AfterValidator(_check_json)] = PydanticField(
        default=None, examples=[{"user_agent": "Mozilla/5.0...", "ip": "203.0.113.42"}]
    )
    timestamp: Annotated[datetime | None, AfterValidator(_check_utc)] = PydanticField(
        default=None, description="ISO 8601; now (UTC) when absent; no zone means UTC."
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        # The id travels in the ``webhook-id`` header and in ``GET .../events/{id}/``.
        if value is not None and not all("!" <= c <= "~" and c != "/" for c in value):
            raise ValueError("must be printable ASCII without spaces or '/'")
        return value


EVENT_BATCH = TypeAdapter(
    Annotated[list[EventIn], PydanticField(min_length=1, max_length=MAX_BATCH)]
)


class Accepted(BaseModel):
    """The answer to an ingestion: which ids were new, which were seen before."""

    accepted: list[str]
    duplicates: list[str]
    deliveries: int


class AttemptOut(BaseModel):
    """One delivery attempt as the event view shows it."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    """An event's delivery to one endpoint."""

    endpoint_id: str
    status: DeliveryStatus
    next_attempt_at: datetime | None
    attempts: list[AttemptOut]


class EventOut(BaseModel):
    """An event, its payload exactly as sent, and its deliveries."""

    id: str
    type: EventType
    accepted_at: datetime
    payload: dict[str, Any]
    deliveries: list[DeliveryOut]


class Event(SQLModel, table=True):
    """An accepted event; ``body`` is the payload exactly as every delivery sends it."""

    account_id: str = Field(foreign_key="account.id", primary_key=True, max_length=36)
    id: str = Field(primary_key=True, max_length=100)
    type: str = Field(max_length=20)
    body: str = Field(sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


def _timestamp(value: datetime | None, now: datetime) -> str:
    at = now if value is None else value.replace(tzinfo=value.tzinfo or UTC).astimezone(UTC)
    return at.isoformat(timespec="milliseconds" if at.microsecond else "seconds").replace(
        "+00:00", "Z"
    )


def payload_body(event: EventIn, event_id: str, now: datetime) -> str:
    """The JSON body every delivery of ``event`` sends: the seven public fields, compact."""
    payload = {
        "id": event_id,
        "type": event.type.value,
        "recipient": event.recipient,
        "sent_email_id": event.sent_email_id,
        "campaign_id": event.campaign_id,
        "metadata": event.metadata if event.metadata is not None else {},
        "timestamp": _timestamp(event.timestamp, now),
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Ingested:
    """What one ingestion stored."""

    accepted: list[str]
    duplicates: list[str]
    deliveries: int


def ingest(session: Session, account_id: str, events: list[EventIn]) -> Ingested:
    """Store new events and their deliveries in one transaction, and commit.

    An id the account already submitted (before, or earlier in this batch) is
    a duplicate and creates nothing. A concurrent ingestion of the same id is
    caught by the primary key, and the batch is then retried once.
    """
    try:
        return _ingest(session, account_id, events)
    except IntegrityError:
        session.rollback()
        return _ingest(session, account_id, events)


def _ingest(session: Session, account_id: str, events: list[EventIn]) -> Ingested:
    now = utcnow()
    ids = [e.id or _new_event_id() for e in events]
    known = set(
        session.execute(
            select(col(Event.id)).where(col(Event.account_id) == account_id, col(Event.id).in_(ids))
        ).scalars()
    )
    accepted: list[str] = []
    duplicates: list[str] = []
    rows: list[dict[str, Any]] = []
    for event, event_id in zip(events, ids, strict=True):
        if event_id in known:
            duplicates.append(event_id)
            continue
        known.add(event_id)
        accepted.append(event_id)
        rows.append(
            {
                "account_id": account_id,
                "id": event_id,
                "type": event.type.value,
                "body": payload_body(event, event_id, now),
                "created_at": now,
            }
        )
    deliveries = _outbox(session, account_id, rows, now)
    if rows:
        session.execute(insert(Event.__table__), rows)  # type: ignore[attr-defined]
    if deliveries:
        session.execute(insert(DELIVERY), deliveries)
    session.commit()
    return Ingested(accepted, duplicates, len(deliveries))


def _outbox(
    session: Session, account_id: str, events: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """One delivery row per event and subscribed, enabled endpoint."""
    if not events:
        return []
    endpoints = session.execute(
        select(col(Endpoint.id), col(Endpoint.events)).where(
            col(Endpoint.account_id) == account_id, col(Endpoint.enabled).is_(True)
        )
    ).all()
    rows = []
    for event in events:
        priority = EventType(event["type"]).priority
        for endpoint_id, subscribed in endpoints:
            if event["type"] in subscribed:
                rows.append(
                    {
                        "account_id": account_id,
                        "event_id": event["id"],
                        "endpoint_id": endpoint_id,
                        "priority": priority,
                        "status": DeliveryStatus.PENDING,
                        "attempts": 0,
                        "due_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
    return rows


def get_event(session: Session, account_id: str, event_id: str) -> EventOut:
    """The account's event ``event_id`` with its deliveries and their attempts."""
    event = session.get(Event, (account_id, event_id))
    if event is None:
        raise NotFound("event", event_id)
    deliveries = (
        session.execute(
            select(Delivery)
            .where(col(Delivery.account_id) == account_id, col(Delivery.event_id) == event_id)
            .order_by(col(Delivery.id))
        )
        .scalars()
        .all()
    )
    attempts: dict[int, list[AttemptOut]] = {d.id: [] for d in deliveries}
    if attempts:
        for attempt in session.execute(
            select(Attempt)
            .where(col(Attempt.delivery_id).in_(list(attempts)))
            .order_by(col(Attempt.id))
        ).scalars():
            attempts[attempt.delivery_id].append(
                AttemptOut.model_validate(attempt, from_attributes=True)
            )
    return EventOut(
        id=event.id,
        type=EventType(event.type),
        accepted_at=event.created_at,
        payload=json.loads(event.body),
        deliveries=[
            DeliveryOut(
                endpoint_id=d.endpoint_id,
                status=d.status,
                next_attempt_at=d.due_at if d.status == DeliveryStatus.PENDING else None,
                attempts=attempts[d.id],
            )
            for d in deliveries
        ],
    )
