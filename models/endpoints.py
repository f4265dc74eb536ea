"""Webhook endpoints: the table, the API schemas, and every query on them.

One model family per resource: ``EndpointCreate`` / ``EndpointReplace`` /
``EndpointPatch`` in, ``EndpointPublic`` / ``EndpointWithSecret`` out, and the
``Endpoint`` table. Every query takes the caller's account, so another
account's endpoint is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
    field_validator,
)
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Index, func, text
from sqlmodel import Field, Session, SQLModel, col, select

from models.base import UTCDateTime, new_id, utcnow
from models.custom_headers import CustomHeaders
from models.deliveries import cancel_open
from models.driver import driver
from models.errors import InvalidInput, NotFound
from models.event_types import EventType

MAX_URL_LENGTH = 2048
DISABLED = text("enabled IS FALSE")
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# A customer's own secret: 24 to 64 bytes, as Standard Webhooks defines it.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
# 24 to 62 bytes are 8 to 20 groups of four and an optional tail; 63 or 64, 21 groups
# and an optional two-character tail: the pattern publishes the exact rule.
_B64 = "[A-Za-z0-9+/]"
SECRET_PATTERN = (
    f"^whsec_(?:(?:{_B64}{{4}}){{8,20}}(?:{_B64}{{2}}==|{_B64}{{3}}=)?"
    f"|(?:{_B64}{{4}}){{21}}(?:{_B64}{{2}}==)?)$"
)
_SECRET = re.compile(SECRET_PATTERN)
MAX_SECRET_LENGTH = 100
MAX_GRACE_SECONDS = 7 * 24 * 3600
DEFAULT_GRACE_SECONDS = 24 * 3600
MAX_RATE_LIMIT = 100_000

# What an endpoint URL may be, as one pattern that the OpenAPI document publishes
# and validation enforces: an absolute URL with a DNS name or IPv4 address for
# host (no credentials, no IPv6 literal), an optional port from 1 to 65535, and
# RFC 3986 characters after it, with no fragment. ``_check_url`` explains the
# common mistakes first; the pattern is the rule.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_REST = r"[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*"
_AFTER_SCHEME = rf"://{_LABEL}(?:\.{_LABEL})*(?::{_PORT})?(?:[/?]{_REST})?$"
HTTPS_URL_PATTERN = f"^https{_AFTER_SCHEME}"
# Development mode also takes http:// (the app publishes this one then).
HTTP_URL_PATTERN = f"^https?{_AFTER_SCHEME}"
_URL = re.compile(HTTP_URL_PATTERN)


def new_secret(raw: bytes | None = None) -> str:
    """Return a fresh endpoint secret, ``whsec_`` + base64 of 32 random bytes.

    The Standard Webhooks form: ``standardwebhooks.Webhook`` and Svix's
    libraries take it as it is.
    """
    if raw is None:
        raw = secrets.token_bytes(SECRET_BYTES)
    return SECRET_PREFIX + base64.b64encode(raw).decode("ascii")


def _check_secret(secret: str) -> str:
    """A ``whsec_`` secret of 24 to 64 random bytes in standard base64."""
    if not _SECRET.fullmatch(secret):
        raise ValueError("must be whsec_ followed by the standard base64 of 24 to 64 bytes")
    raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"must encode {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(raw)}"
        )
    return secret


def _whole_number(value: Any) -> Any:
    """An integer as JSON Schema has it: 60 and 60.0 alike, never "60", 1.5 or true."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number of seconds")
    return value


def _check_url(url: str) -> str:
    """Structural URL checks; whether ``http://`` is allowed is decided per request."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials (user:password@)")
    if parts.fragment or url.endswith("#"):
        raise ValueError("must not contain a fragment (#...)")
    if not _URL.fullmatch(url):
        raise ValueError(
            "must be an absolute https:// URL with a DNS name or IPv4 address for host,"
            " an optional port (1-65535), and only RFC 3986 characters (percent-encode others)"
        )
    return url


def _fold_events(events: list[EventType]) -> list[EventType]:
    return list(dict.fromkeys(events))  # duplicates folded, order kept


def _not_nullable(schema: dict[str, Any]) -> None:
    # Published as its type alone: absent means unchanged, and null is refused
    # (by ``_not_null``). Typed ``X | None`` so that errors name the field, with
    # no union branch appended to their ``loc``.
    schema.pop("default", None)
    (kind,) = [branch for branch in schema.pop("anyOf") if branch != {"type": "null"}]
    schema.update(kind)


EndpointUrl = Annotated[
    str,
    PydanticField(
        max_length=MAX_URL_LENGTH,
        examples=["https://yourapp.com/webhooks/sentinmail"],
        json_schema_extra={"pattern": HTTPS_URL_PATTERN},
    ),
    AfterValidator(_check_url),
]
EventList = Annotated[
    list[EventType],
    PydanticField(
        min_length=1, examples=[["delivered", "opened", "clicked", "bounced", "unsubscribed"]]
    ),
    AfterValidator(_fold_events),
]
RateLimit = Annotated[
    float | None,
    Strict(),
    PydanticField(gt=0, le=MAX_RATE_LIMIT, description="Requests per second to this endpoint."),
]
# Only JSON true and false: lax validation would take 0, 1, "yes" and "off".
StrictBool = Annotated[bool, Strict()]


class EndpointReplace(BaseModel):
    """Body of ``PUT``: the URL and the subscribed event types, both required.

    ``headers``, when given, replaces every custom header; left out, they stay.
    """

    model_config = ConfigDict(extra="forbid")

    url: EndpointUrl
    events: EventList
    headers: CustomHeaders | None = PydanticField(None, json_schema_extra=_not_nullable)

    @field_validator("headers", mode="before")
    @classmethod
    def _headers_not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null (send {} to remove every header)")
        return value


class EndpointCreate(EndpointReplace):
    """Body of ``POST``: as ``PUT``, plus an optional rate limit (headers optional too)."""

    rate_limit: RateLimit = None


class EndpointPatch(BaseModel):
    """Body of ``PATCH``: any subset of the mutable fields; only ``rate_limit`` may be null."""

    model_config = ConfigDict(extra="forbid")

    url: EndpointUrl | None = PydanticField(None, json_schema_extra=_not_nullable)
    events: EventList | None = PydanticField(None, json_schema_extra=_not_nullable)
    enabled: StrictBool | None = PydanticField(None, json_schema_extra=_not_nullable)
    rate_limit: RateLimit = None
    headers: CustomHeaders | None = PydanticField(None, json_schema_extra=_not_nullable)

    @field_validator("url", "events", "enabled", "headers", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Left out means unchanged; null would erase a field every endpoint has.
        if value is None:
            raise ValueError("may not be null")
        return value


class EndpointPublic(BaseModel):
    """An endpoint as listed: everything but its secret."""

    id: str
    url: str
    events: list[EventType]
    enabled: bool
    disabled_reason: str | None
    rate_limit: float | None
    headers: dict[str, str] = PydanticField(
        description="Custom headers sent with every delivery.",
        examples=[{"Authorization": "Bearer 8c1f0b5e"}],
    )
    previous_secret_expires_at: datetime | None = PydanticField(
        description="Until then, deliveries are signed with the secret before the last"
        " rotation too (a second `v1,` signature); null when only `secret` signs."
    )
    created_at: datetime
    updated_at: datetime

    @field_validator("headers", mode="before")
    @classmethod
    def _no_headers(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("previous_secret_expires_at")
    @classmethod
    def _still_signing(cls, value: datetime | None) -> datetime | None:
        # Shown while the previous secret still signs; a time past says nothing more.
        return value if value is not None and value > utcnow() else None


class EndpointWithSecret(EndpointPublic):
    """An endpoint with the secret its deliveries are signed with."""

    secret: str = PydanticField(examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])


class SecretRotation(BaseModel):
    """Body of ``rotate-secret``: how long the old secret keeps signing, and maybe the new one."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: Annotated[int, BeforeValidator(_whole_number), Strict()] = PydanticField(
        DEFAULT_GRACE_SECONDS,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="Seconds the current secret keeps signing beside the new one (0: drop it"
        " now). A previous secret still in its grace period is dropped either way.",
    )
    secret: (
        Annotated[
            str,
            PydanticField(pattern=SECRET_PATTERN, max_length=MAX_SECRET_LENGTH),
            AfterValidator(_check_secret),
        ]
        | None
    ) = PydanticField(
        None,
        json_schema_extra=_not_nullable,
        description="Your own new secret: whsec_ and the base64 of 24 to 64 random bytes."
        " A fresh one of 32 bytes when left out.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )

    @field_validator("secret", mode="before")
    @classmethod
    def _secret_not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null (leave it out for a generated secret)")
        return value


class EndpointPage(BaseModel):
    """One page of endpoints, newest first."""

    count: int
    next: str | None
    previous: str | None
    results: list[EndpointPublic]


class Endpoint(SQLModel, table=True):
    """A customer's HTTPS endpoint and the event types it subscribes to."""

    __table_args__ = (
        Index("ix_endpoint_account_id", "account_id", "created_at"),
        # /metrics counts disabled endpoints at every scrape: from this, not the table.
        Index("ix_endpoint_disabled", "id", sqlite_where=DISABLED, postgresql_where=DISABLED),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    account_id: str = Field(foreign_key="account.id", max_length=36)
    url: str = Field(max_length=MAX_URL_LENGTH)
    events: list[str] = Field(sa_type=JSON)
    # The routing key: endpoints on one origin share one lane, limit and breaker.
    origin: str = Field(max_length=300)
    secret: str = Field(default_factory=new_secret, max_length=MAX_SECRET_LENGTH)
    # The secret before the last rotation, signing beside ``secret`` until it expires.
    previous_secret: str | None = Field(default=None, max_length=MAX_SECRET_LENGTH)
    previous_secret_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # None when there are none: the claim then has nothing to decode.
    headers: dict[str, str] | None = Field(default=None, sa_type=JSON(none_as_null=True))
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=500)
    rate_limit: float | None = None
    # Start of the current run of failures; None while the endpoint succeeds.
    failing_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Whether this run of failures was announced (endpoint.failing): once per run.
    failing_notified: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    def signing_previous(self, now: datetime) -> str | None:
        """The secret before the last rotation if it still signs at ``now`` (the claim's rule)."""
        expires = self.previous_secret_expires_at
        return self.previous_secret if expires is not None and expires > now else None


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``, lower-cased, with the port always explicit."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def require_scheme(url: str, *, allow_http: bool) -> None:
    """Refuse ``http://`` unless the service runs in development mode."""
    if not allow_http and urlsplit(url).scheme != "https":
        raise InvalidInput(
            ("body", "url"), "must be an absolute https:// URL (http:// is allowed only in --dev)"
        )


def create_endpoint(session: Session, account_id: str, data: EndpointCreate) -> Endpoint:
    """Store a new endpoint for the account and commit."""
    endpoint = Endpoint(
        account_id=account_id,
        url=data.url,
        origin=origin_of(data.url),
        events=[e.value for e in data.events],
        rate_limit=data.rate_limit,
        headers=data.headers or None,
    )
    session.add(endpoint)
    session.commit()
    session.refresh(endpoint)
    return endpoint


def get_endpoint(session: Session, account_id: str, endpoint_id: str) -> Endpoint:
    """The account's endpoint ``endpoint_id``; NotFound for anyone else's."""
    if "\x00" in endpoint_id:  # no id holds NUL, and PostgreSQL refuses to compare one
        raise NotFound("endpoint", endpoint_id)
    endpoint = session.exec(
        select(Endpoint).where(Endpoint.id == endpoint_id, Endpoint.account_id == account_id)
    ).first()
    if endpoint is None:
        raise NotFound("endpoint", endpoint_id)
    return endpoint


def list_endpoints(
    session: Session, account_id: str, *, limit: int, offset: int
) -> tuple[int, list[Endpoint]]:
    """The total count and one page of the account's endpoints, newest first."""
    mine = Endpoint.account_id == account_id
    count = session.exec(select(func.count()).select_from(Endpoint).where(mine)).one()
    page = session.exec(
        select(Endpoint)
        .where(mine)
        .order_by(col(Endpoint.created_at).desc(), col(Endpoint.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return count, list(page)


def update_endpoint(
    session: Session, account_id: str, endpoint_id: str, changes: dict[str, Any]
) -> Endpoint:
    """Apply ``changes`` (already validated field values) and commit."""
    endpoint = get_endpoint(session, account_id, endpoint_id)
    for field, value in changes.items():
        if field == "events":
            value = [EventType(e).value for e in value]
        if field == "headers":
            value = dict(value) or None
        setattr(endpoint, field, value)
    if "url" in changes:
        endpoint.origin = origin_of(endpoint.url)
    if changes.get("enabled") is True:
        endpoint.disabled_reason = None
        endpoint.failing_since = None
        endpoint.failing_notified = False
    if changes.get("enabled") is False:
        endpoint.disabled_reason = "disabled through the API"
        cancel_open(session, [endpoint.id], now=utcnow())
    endpoint.updated_at = utcnow()
    session.add(endpoint)
    session.commit()
    session.refresh(endpoint)
    return endpoint


def rotate_secret(
    session: Session,
    account_id: str,
    endpoint_id: str,
    *,
    grace: timedelta,
    secret: str | None,
    now: datetime,
) -> Endpoint:
    """Give the endpoint a new secret; the current one signs beside it for ``grace``, and commit.

    A previous secret still in its grace period is dropped: never more than two.
    """
    endpoint = get_endpoint(session, account_id, endpoint_id)
    if grace > timedelta(0):
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = now + grace
    else:
        endpoint.previous_secret = endpoint.previous_secret_expires_at = None
    endpoint.secret = secret or new_secret()
    endpoint.updated_at = now
    session.add(endpoint)
    session.commit()
    session.refresh(endpoint)
    return endpoint


def delete_endpoint(session: Session, account_id: str, endpoint_id: str) -> None:
    """Delete the account's endpoint and commit."""
    endpoint = get_endpoint(session, account_id, endpoint_id)
    cancel_open(session, [endpoint.id], now=utcnow())
    session.delete(endpoint)
    session.commit()


def record_health(
    session: Session,
    *,
    succeeded: set[str],
    failed: set[str],
    gone: set[str],
    now: datetime,
    disable_after: timedelta,
) -> list[str]:
    """Track each endpoint's run of failures; disable the gone and the long-failing.

    Returns the ids disabled now (no commit). An endpoint that both succeeded
    and failed in one batch counts as succeeding: it is not down.

    Runs for every batch of results, so its statements go straight to the
    driver (see :mod:`models.driver`), and write only rows that
    change: a healthy endpoint's row is not rewritten by every success.
    """
    failed = failed - succeeded
    if not (succeeded or failed or gone):
        return []
    connection, db = driver(session)
    m, ids = db.mark, db.in_list("text")
    if succeeded:
        connection.exec_driver_sql(
            # A success ends the run, and its announcement: the next run is announced again.
            f"UPDATE endpoint SET failing_since = NULL, failing_notified = FALSE"
            f" WHERE id {ids} AND failing_since IS NOT NULL",
            (db.values(sorted(succeeded)),),
        )
    if failed:
        connection.exec_driver_sql(
            f"UPDATE endpoint SET failing_since = {m} WHERE id {ids} AND failing_since IS NULL",
            (db.time(now), db.values(sorted(failed))),
        )
    disabled: list[str] = []
    disable = (
        f"UPDATE endpoint SET enabled = FALSE, disabled_reason = {m}, updated_at = {m}"
        f" WHERE id {ids} AND enabled IS TRUE"
    )
    reasons = [
        (gone, "", (), "the endpoint answered 410 Gone"),
        (
            failed,
            f" AND failing_since <= {m}",
            (db.time(now - disable_after),),
            f"no successful delivery for {disable_after} (since the first failure)",
        ),
    ]
    for endpoint_ids, condition, values, reason in reasons:
        if not endpoint_ids:
            continue
        hit = connection.exec_driver_sql(
            disable + condition + " RETURNING id",
            (reason, db.time(now), db.values(sorted(endpoint_ids)), *values),
        )
        disabled.extend(hit.scalars())
    if disabled:
        cancel_open(session, disabled, now=now)
    return disabled


def mark_failing(
    session: Session, failed: set[str], *, now: datetime, failing_after: timedelta
) -> list[str]:
    """Of the ``failed`` endpoints, those whose run of failures is now ``failing_after`` old
    and not yet announced: marked announced, and returned (no commit).

    Once per run: a success clears the mark (:func:`record_health`). Disabled
    endpoints are left out (they are announced as disabled instead).
    """
    if not failed:
        return []
    connection, db = driver(session)
    m = db.mark
    hit = connection.exec_driver_sql(
        f"UPDATE endpoint SET failing_notified = TRUE WHERE id {db.in_list('text')}"
        f" AND enabled IS TRUE AND failing_notified IS FALSE AND failing_since <= {m}"
        " RETURNING id",
        (db.values(sorted(failed)), db.time(now - failing_after)),
    )
    return sorted(hit.scalars())


def describe(
    session: Session, endpoint_ids: Sequence[str]
) -> dict[str, tuple[str, str, str | None]]:
    """``(account id, url, disabled reason)`` of each of these endpoints, by id."""
    if not endpoint_ids:
        return {}
    connection, db = driver(session)
    rows = connection.exec_driver_sql(
        f"SELECT id, account_id, url, disabled_reason FROM endpoint WHERE id {db.in_list('text')}",
        (db.values(sorted(endpoint_ids)),),
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}
