"""Portal sessions: the single-use link a customer opens, and the browser session it becomes.

A row is minted with a link token (valid :data:`LINK_LIFETIME`); opening the
link trades it, once, for a session token carried by a cookie (valid
:data:`SESSION_LIFETIME`). Only SHA-256 hashes of both tokens are stored (as
for API keys: they carry 256 random bits, so a fast hash is enough), so the
table leaks no credential. The trade is one conditional ``UPDATE``: of two
requests with the same link, on any number of API processes, exactly one wins.

The CSRF token of a session is derived from its session token
(:func:`csrf_token`): only the holder of the cookie can compute it, and no
process needs to remember it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import delete, update
from sqlmodel import Field, Session, SQLModel, col, select

from models.accounts import Account
from models.base import UTCDateTime, new_id

LINK_LIFETIME = timedelta(minutes=10)
SESSION_LIFETIME = timedelta(hours=8)
TOKEN_BYTES = 32


class PortalSession(SQLModel, table=True):
    """One portal link and, once opened, the browser session it became."""

    __tablename__ = "portal_session"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    account_id: str = Field(foreign_key="account.id", index=True, max_length=36)
    # The link's token hash; cleared when the link is opened, so it cannot open twice.
    link_hash: str | None = Field(default=None, unique=True, max_length=64)
    link_expires_at: datetime = Field(sa_type=UTCDateTime)
    session_hash: str | None = Field(default=None, unique=True, max_length=64)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    opened_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class PortalLink(BaseModel):
    """A single-use link into the portal (``POST /api/emails/portal-sessions/``)."""

    url: str = PydanticField(
        description="Open it in a browser within 10 minutes; it works once.",
        examples=[
            "https://api.sentinmail.app/portal/enter/3q2-7wEj4tB0bW5yZ6f1aKq8nVxL9mPzR0sTuYvHc2I"
        ],
    )
    expires_at: datetime = PydanticField(
        description="When the link stops working if unused.", examples=["2026-04-02T14:40:00Z"]
    )


@dataclass(frozen=True)
class Signed:
    """An open session: whose it is and until when."""

    account_id: str
    account_name: str
    expires_at: datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session_token: str) -> str:
    """The CSRF token of the session whose cookie holds ``session_token``."""
    return hashlib.sha256(b"sentinmail-portal-csrf\0" + session_token.encode()).hexdigest()


def csrf_matches(session_token: str, given: str) -> bool:
    """Whether ``given`` is the session's CSRF token (compared in constant time)."""
    return hmac.compare_digest(csrf_token(session_token), given)


def mint_link(session: Session, account_id: str, *, now: datetime) -> tuple[str, datetime]:
    """Store a new link for the account and commit; return its token and expiry.

    Links and sessions that can no longer be used go in the same transaction:
    the table holds only what is live.
    """
    _purge_expired(session, now=now)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = now + LINK_LIFETIME
    session.add(
        PortalSession(
            account_id=account_id, link_hash=_hash(token), link_expires_at=expires, created_at=now
        )
    )
    session.commit()
    return token, expires


def open_link(session: Session, link_token: str, *, now: datetime) -> tuple[str, datetime] | None:
    """Trade a live, unused link for a session and commit; None if it cannot be.

    Returns the session token (for the cookie) and its expiry. An expired or
    already opened link, or one that never existed, gives None alike.
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = now + SESSION_LIFETIME
    traded = session.execute(
        update(PortalSession)
        .where(
            col(PortalSession.link_hash) == _hash(link_token),
            col(PortalSession.link_expires_at) > now,
        )
        .values(link_hash=None, session_hash=_hash(token), expires_at=expires, opened_at=now)
    )
    session.commit()
    if traded.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return token, expires


def signed_in(session: Session, session_token: str, *, now: datetime) -> Signed | None:
    """The live session whose cookie holds ``session_token``, or None."""
    row = session.exec(
        select(PortalSession.account_id, Account.name, PortalSession.expires_at)
        .join(Account, col(Account.id) == col(PortalSession.account_id))
        .where(
            col(PortalSession.session_hash) == _hash(session_token),
            col(PortalSession.expires_at) > now,
        )
    ).first()
    if row is None:
        return None
    account_id, name, expires = row
    assert expires is not None
    return Signed(account_id=account_id, account_name=name, expires_at=expires)


def sign_out(session: Session, session_token: str) -> None:
    """End the session whose cookie holds ``session_token`` and commit."""
    session.execute(
        delete(PortalSession).where(col(PortalSession.session_hash) == _hash(session_token))
    )
    session.commit()


def _purge_expired(session: Session, *, now: datetime) -> None:
    session.execute(
        delete(PortalSession).where(
            col(PortalSession.link_expires_at) <= now,
            col(PortalSession.expires_at).is_(None) | (col(PortalSession.expires_at) <= now),
        )
    )
