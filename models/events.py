"""Events: the ingestion schema, the table, the outbox write, and the event view.

An accepted event is stored once, as the exact JSON body its deliveries send
(so every retry and every endpoint gets the same bytes), together with one
delivery per subscribed, enabled endpoint of the account, in one transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
)
from pydantic import Field as PydanticField
from sqlalchemy import Connection, Index, Table, Text, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col

from models.base import UTCDateTime, new_id, utcnow
from models.deliveries import DELIVERY, Attempt, Delivery
from models.driver import Driver, driver, insert_rows
from models.errors import NotFound
from models.event_types import EmailEventType, EventType
from models.jobs import DeliveryStatus

MAX_BATCH = 1000


# A syntactic check only: recipients come from our own email platform, which
# has already delivered to them; full RFC 5321 validation cost 80 us per event.
# Whitespace is spelled out (Python's \s for text) so that the pattern the
# OpenAPI document publishes means the same in every regex dialect.
_SPACE = "\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
EMAIL_PATTERN = f"^[^@{_SPACE}]+@[^@{_SPACE}.]+(?:\\.[^@{_SPACE}.]+)+$"
_EMAIL = re.compile(EMAIL_PATTERN)
# Printable ASCII ("!" to "~") but "/": 0.4 us for a 40-character id, where a
# generator over its characters took 7 us.
EVENT_ID_PATTERN = "^[!-.0-~]*$"
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
MAX_EVENT_ID_LENGTH = 100

# RFC 3339 date-time with the offset optional (none means UTC), years 1970 to
# 9998, so that every accepted time stays within Python's once moved to UTC.
# Days are checked per month and leap year: the OpenAPI document publishes this
# pattern, and it is exactly what is accepted, with no calendar check after it.
_YEAR = r"(?:19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
_LEAP_YEAR = (
    r"(?:19(?:7[26]|8[048]|9[26])"
    r"|(?:[2-8][0-9]|9[0-8]|99)(?:0[48]|[2468][048]|[13579][26])"
    r"|(?:[2468][048]|[3579][26])00)"
)
_DATE = (
    rf"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    rf"|{_LEAP_YEAR}-02-29)"
)
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
_OFFSET = r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
TIMESTAMP_PATTERN = rf"^{_DATE}T{_TIME}{_OFFSET}?$"
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
# The same range in Unix seconds: 1970-01-01T00:00:00Z to 9998-12-31T23:59:59Z.
MAX_UNIX_TIMESTAMP = 253_370_764_799
# Built once: ``json.dumps`` with options builds an encoder on every call.
_STRICT_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _check_email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError("is not an email address (expected local@domain.tld)")
    return value


def _timestamp_input(value: object) -> object:
    """A timestamp as the schema publishes it: a string of ``TIMESTAMP_PATTERN``, or Unix seconds.

    Lax datetime parsing would take much more ("0", "2026-04-02", 1.5e9, true).
    """
    if isinstance(value, str):
        if not _TIMESTAMP.fullmatch(value):
            raise ValueError(
                "must be an RFC 3339 date-time such as 2026-04-02T14:30:00Z"
                " (offset optional, years 1970 to 9998)"
            )
        return value
    # JSON has one number type: 1775140200.0 is an integer too, as JSON Schema says.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_UNIX_TIMESTAMP:
            raise ValueError(f"must be Unix seconds from 0 to {MAX_UNIX_TIMESTAMP}")
        return datetime.fromtimestamp(value, UTC)
    raise ValueError("must be an RFC 3339 date-time string or an integer of Unix seconds")


def _check_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=value.tzinfo or UTC).astimezone(UTC)


def _check_json(value: dict[str, Any]) -> dict[str, Any]:
    # Sent as strict JSON in UTF-8: no NaN or Infinity, no unpaired surrogates.
    try:
        _STRICT_JSON.encode(value).encode()
    except ValueError as exc:
        raise ValueError(f"is not representable as strict JSON ({exc})") from None
    return value


def _instant_input(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string such as 2026-04-02T14:30:00Z")
    return _timestamp_input(value)


Instant = Annotated[
    datetime,
    BeforeValidator(_instant_input),
    AfterValidator(_check_utc),
    WithJsonSchema({"type": "string", "pattern": TIMESTAMP_PATTERN}),
]
"""A time given as RFC 3339 text (no offset means UTC), years 1970 to 9998, in UTC.

For query parameters and bodies that name a time (the delivery log's and
recovery's windows).
"""


def _new_event_id() -> str:
    return f"evt-{new_id()}"


class EventIn(BaseModel):
    """One event as the email platform submits it."""

    model_config = ConfigDict(extra="forbid")

    id: (
        Annotated[
            str,
            PydanticField(
                min_length=1,
                max_length=MAX_EVENT_ID_LENGTH,
                json_schema_extra={"pattern": EVENT_ID_PATTERN},
            ),
        ]
        | None
    ) = PydanticField(
        default=None,
        description="Stable id; `evt-<uuid4>` is assigned when absent. Resubmitting it is a no-op.",
        examples=["evt-6f1c2d4e-8a7b-4c3d-9e2f-1a0b3c4d5e6f"],
    )
    type: EmailEventType = PydanticField(
        description="What happened to the email. The operational types (`endpoint.failing`,"
        " `endpoint.disabled`) are emitted by the service only: posting one is refused."
    )
    recipient: Annotated[str, AfterValidator(_check_email)] = PydanticField(
        max_length=320, examples=["user@example.com"], json_schema_extra={"pattern": EMAIL_PATTERN}
    )
    sent_email_id: str | None = PydanticField(default=None, max_length=200)
    campaign_id: str | None = PydanticField(default=None, max_length=200)
    # The checks sit inside the optional types: an absent field costs no call.
    metadata: Annotated[dict[str, Any], AfterValidator(_check_json)] | None = PydanticField(
        default=None, examples=[{"user_agent": "Mozilla/5.0...", "ip": "203.0.113.42"}]
    )
    timestamp: (
        Annotated[
            datetime,
            BeforeValidator(_timestamp_input),
            AfterValidator(_check_utc),
            WithJsonSchema(
                {
                    "anyOf": [
                        {"type": "string", "pattern": TIMESTAMP_PATTERN},
                        {"type": "integer", "minimum": 0, "maximum": MAX_UNIX_TIMESTAMP},
                    ]
                }
            ),
        ]
        | None
    ) = PydanticField(
        default=None,
        description="RFC 3339 (no offset means UTC), years 1970 to 9998, or Unix seconds;"
        " now when absent.",
        examples=["2026-04-02T14:30:00Z"],
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        # The id travels in the ``webhook-id`` header and in ``GET .../events/{id}/``.
        if value is not None and not _EVENT_ID.fullmatch(value):
            raise ValueError("must be printable ASCII without spaces or '/'")
        return value


EventBatch = Annotated[list[EventIn], PydanticField(min_length=1, max_length=MAX_BATCH)]
EVENT_BATCH = TypeAdapter(EventBatch)


class Accepted(BaseModel):
    """The answer to an ingestion: which ids were new, which were seen before."""

    accepted: list[str]
    duplicates: list[str]
    deliveries: int


class AttemptOut(BaseModel):
    """One delivery attempt: when, the answer's status or why there was none, how long."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int
    response_body: str | None = PydanticField(
        default=None,
        description="The first KiB of the receiver's answer as text (invalid UTF-8 replaced);"
        " null when no answer came.",
        examples=['{"error": "signature mismatch"}'],
    )


class DeliveryOut(BaseModel):
    """An event's delivery to one endpoint."""

    id: str = PydanticField(
        description="The delivery's id, as the delivery log shows it.", examples=["1042"]
    )
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

    # Retention walks events oldest first, in this order (see models.retention).
    __table_args__ = (
        Index("ix_event_created", "created_at", "account_id", "id"),
        # Recovery walks one account's events of a window in this order (models.recovery).
        Index("ix_event_account_created", "account_id", "created_at", "id"),
    )

    account_id: str = Field(foreign_key="account.id", primary_key=True, max_length=36)
    id: str = Field(primary_key=True, max_length=100)
    type: str = Field(max_length=20)
    body: str = Field(sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# Core table and the columns ingestion writes, in table order.
EVENT: Table = Event.__table__  # type: ignore[attr-defined]
# The columns ingestion writes, in its rows' order, each with its PostgreSQL type.
_EVENT_COLUMNS = {
    "account_id": "text", "id": "text", "type": "text", "body": "text",
    "created_at": "timestamptz",
}  # fmt: skip
_DELIVERY_COLUMNS = {
    "account_id": "text", "event_id": "text", "endpoint_id": "text", "priority": "integer",
    "status": "text", "attempts": "integer", "due_at": "timestamptz",
    "created_at": "timestamptz", "updated_at": "timestamptz",
}  # fmt: skip
_PRIORITY = {t.value: int(t.priority) for t in EventType}
_PENDING = DeliveryStatus.PENDING.value


def _timestamp(value: datetime) -> str:
    at = value.replace(tzinfo=value.tzinfo or UTC).astimezone(UTC)
    return at.isoformat(timespec="milliseconds" if at.microsecond else "seconds").replace(
        "+00:00", "Z"
    )


def _payload_body(event: EventIn, event_id: str, default_timestamp: str) -> str:
    """The JSON body every delivery of ``event`` sends: the seven public fields, compact.

    ``default_timestamp`` is for events without one: formatted once per batch.
    """
    return _COMPACT_JSON.encode(
        {
            "id": event_id,
            "type": event.type.value,
            "recipient": event.recipient,
            "sent_email_id": event.sent_email_id,
            "campaign_id": event.campaign_id,
            "metadata": event.metadata if event.metadata is not None else {},
            "timestamp": (
                default_timestamp if event.timestamp is None else _timestamp(event.timestamp)
            ),
        }
    )


@dataclass(frozen=True)
class Ingested:
    """What one ingestion stored."""

    accepted: list[str]
    duplicates: list[str]
    deliveries: int


Submission = tuple[str, Sequence[EventIn]]
"""One request's events and the account that posted them."""


def ingest(session: Session, account_id: str, events: Sequence[EventIn]) -> Ingested:
    """Store new events and their deliveries in one transaction, and commit.

    An id the account already submitted (before, or earlier in this batch) is
    a duplicate and creates nothing. A concurrent ingestion of the same id is
    caught by the primary key, and the batch is then retried once.
    """
    return ingest_many(session, [(account_id, events)])[0]


def ingest_many(session: Session, submissions: Sequence[Submission]) -> list[Ingested]:
    """Store the events of several requests in one transaction and one commit.

    Each submission gets what :func:`ingest` would have given it had they run
    one after the other in this order: an id its account submitted before,
    in this group or earlier, is a duplicate. Nothing is stored unless
    everything is (one commit).
    """
    try:
        return _ingest_many(session, submissions)
    except IntegrityError:
        session.rollback()
        return _ingest_many(session, submissions)


def _ingest_many(session: Session, submissions: Sequence[Submission]) -> list[Ingested]:
    now = utcnow()
    connection, db = driver(session)
    named = [
        (account_id, [e.id or _new_event_id() for e in events], events)
        for account_id, events in submissions
    ]
    known = _known_ids(connection, db, [(a, i) for a, ids, _ in named for i in ids])
    accepted: list[list[str]] = []
    duplicates: list[list[str]] = []
    new: list[tuple[int, str, str, EventIn]] = []  # (submission, account, id, event)
    for index, (account_id, ids, events) in enumerate(named):
        accepted.append([])
        duplicates.append([])
        for event, event_id in zip(events, ids, strict=True):
            if (account_id, event_id) in known:
                duplicates[index].append(event_id)
                continue
            known.add((account_id, event_id))
            accepted[index].append(event_id)
            new.append((index, account_id, event_id, event))
    made = [0] * len(named)
    if new:
        created_at = db.time(now)
        # status, attempts, due_at, created_at, updated_at
        pending = (_PENDING, 0, created_at, created_at, created_at)
        default_timestamp = _timestamp(now)
        subscribed = _subscriptions(connection, db, {account for _, account, _, _ in new})
        rows: list[tuple[Any, ...]] = []
        deliveries: list[tuple[Any, ...]] = []
        for index, account_id, event_id, event in new:
            event_type = event.type.value
            body = _payload_body(event, event_id, default_timestamp)
            rows.append((account_id, event_id, event_type, body, created_at))
            priority = _PRIORITY[event_type]
            for endpoint_id, types in subscribed.get(account_id, ()):
                if event_type in types:
                    deliveries.append((account_id, event_id, endpoint_id, priority, *pending))
                    made[index] += 1
        insert_rows(connection, db, EVENT.name, _EVENT_COLUMNS, rows)
        insert_deliveries(connection, db, deliveries)
    session.commit()
    return [Ingested(*r) for r in zip(accepted, duplicates, made, strict=True)]


def insert_deliveries(connection: Connection, db: Driver, rows: Sequence[tuple[Any, ...]]) -> None:
    """INSERT delivery rows as ingestion writes them (no commit).

    Each row: account id, event id, endpoint id, priority, status, attempts,
    due_at, created_at, updated_at (times through ``db.time``). Recovery
    (``models.recovery``) creates its deliveries through here too.
    """
    insert_rows(connection, db, DELIVERY.name, _DELIVERY_COLUMNS, rows)


def payload_body(event: EventIn, event_id: str, now: datetime) -> str:
    """The JSON body a delivery of ``event`` sends, as ingestion would store it at ``now``."""
    return _payload_body(event, event_id, _timestamp(now))


@dataclass(frozen=True)
class EndpointNotice:
    """Word of an endpoint in trouble, for the account's other endpoints (an operational event)."""

    type: EventType
    endpoint_id: str
    account_id: str
    url: str
    reason: str
    last_error: dict[str, Any] | None
    """``{"at", "status_code", "error"}`` of the attempt that told, or None."""


def notice_body(notice: EndpointNotice, event_id: str, timestamp: str) -> str:
    """The JSON body every delivery of an operational event sends."""
    return _COMPACT_JSON.encode(
        {
            "id": event_id,
            "type": notice.type.value,
            "endpoint_id": notice.endpoint_id,
            "url": notice.url,
            "reason": notice.reason,
            "last_error": notice.last_error,
            "timestamp": timestamp,
        }
    )


def emit(session: Session, notices: Sequence[EndpointNotice], *, now: datetime) -> int:
    """Store operational events and their deliveries as ingestion stores events (no commit).

    Each goes to the account's other enabled endpoints subscribed to its type,
    never to the endpoint it is about. Returns how many deliveries it made.
    """
    if not notices:
        return 0
    connection, db = driver(session)
    created_at = db.time(now)
    pending = (_PENDING, 0, created_at, created_at, created_at)
    timestamp = _timestamp(now)
    subscribed = _subscriptions(connection, db, {n.account_id for n in notices})
    rows: list[tuple[Any, ...]] = []
    deliveries: list[tuple[Any, ...]] = []
    for notice in notices:
        event_id = _new_event_id()
        event_type = notice.type.value
        body = notice_body(notice, event_id, timestamp)
        rows.append((notice.account_id, event_id, event_type, body, created_at))
        for endpoint_id, types in subscribed.get(notice.account_id, ()):
            if event_type in types and endpoint_id != notice.endpoint_id:
                deliveries.append(
                    (notice.account_id, event_id, endpoint_id, _PRIORITY[event_type], *pending)
                )
    insert_rows(connection, db, EVENT.name, _EVENT_COLUMNS, rows)
    insert_rows(connection, db, DELIVERY.name, _DELIVERY_COLUMNS, deliveries)
    return len(deliveries)


def _known_ids(
    connection: Connection, db: Driver, pairs: list[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which ``(account id, event id)`` pairs are already stored.

    One statement for the whole group, over one bound value whatever its
    length: two arrays on PostgreSQL; on SQLite a JSON array of pairs joined
    through ``json_each``, so that each pair is a search of the primary key
    (a row-value ``IN (VALUES ...)`` scanned the table).
    """
    if not pairs:
        return set()
    if db.postgresql:
        a = db.list_mark
        sql = (
            "SELECT e.account_id, e.id FROM event AS e"
            f" JOIN unnest({a}::text[], {a}::text[]) AS k (account_id, id)"
            " ON e.account_id = k.account_id AND e.id = k.id"
        )
        params: tuple[Any, ...] = ([p[0] for p in pairs], [p[1] for p in pairs])
    else:
        sql = (
            f"SELECT e.account_id, e.id FROM json_each({db.mark}) AS k JOIN event AS e"
            " ON e.account_id = json_extract(k.value, '$[0]')"
            " AND e.id = json_extract(k.value, '$[1]')"
        )
        params = (json.dumps(pairs),)
    return {(row[0], row[1]) for row in connection.exec_driver_sql(sql, params)}


def _subscriptions(
    connection: Connection, db: Driver, account_ids: set[str]
) -> dict[str, list[tuple[str, frozenset[str]]]]:
    """Per account, its enabled endpoints and the event types each subscribes to."""
    sql = (
        "SELECT account_id, id, events FROM endpoint"
        f" WHERE account_id {db.in_list('text')} AND enabled IS TRUE"
    )
    found: dict[str, list[tuple[str, frozenset[str]]]] = {}
    for account_id, endpoint_id, subscribed in connection.exec_driver_sql(
        sql, (db.values(sorted(account_ids)),)
    ):
        # JSON text on SQLite, already parsed by psycopg.
        types = json.loads(subscribed) if isinstance(subscribed, str) else subscribed
        found.setdefault(account_id, []).append((endpoint_id, frozenset(types)))
    return found


def get_event(session: Session, account_id: str, event_id: str) -> EventOut:
    """The account's event ``event_id`` with its deliveries and their attempts."""
    # Only ids ingestion accepts can exist; others (a NUL, which PostgreSQL cannot
    # compare) are not looked up.
    if len(event_id) > MAX_EVENT_ID_LENGTH or not _EVENT_ID.fullmatch(event_id):
        raise NotFound("event", event_id)
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
                id=str(d.id),
                endpoint_id=d.endpoint_id,
                status=d.status,
                next_attempt_at=d.due_at if d.status == DeliveryStatus.PENDING else None,
                attempts=attempts[d.id],
            )
            for d in deliveries
        ],
    )
