"""Accounts and their API keys.

A key is shown once, when it is created, and stored only as its SHA-256: keys
carry 256 random bits, so a fast hash is enough and lets every request be
authenticated with one indexed lookup. The prefix (the first characters of the
key) names a key in listings and for revocation without revealing it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlmodel import Field, Session, SQLModel, select

from models.base import UTCDateTime, new_id, utcnow
from models.errors import NotFound

KEY_PREFIX = "sk_"
PREFIX_LENGTH = len(KEY_PREFIX) + 8


class Account(SQLModel, table=True):
    """A customer of SentinMail; every endpoint and event belongs to one."""

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    name: str = Field(unique=True, max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ApiKey(SQLModel, table=True):
    """An API key of an account, stored as a hash."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    account_id: str = Field(foreign_key="account.id", index=True, max_length=36)
    prefix: str = Field(unique=True, max_length=PREFIX_LENGTH)
    key_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def find_account(session: Session, name: str) -> Account | None:
    """The account called ``name``, or None."""
    return session.exec(select(Account).where(Account.name == name)).first()


def get_or_create_account(session: Session, name: str) -> Account:
    """The account called ``name``, created if it does not exist yet."""
    account = session.exec(select(Account).where(Account.name == name)).first()
    if account is None:
        account = Account(name=name)
        session.add(account)
        session.flush()
    return account


def create_key(session: Session, account_name: str) -> tuple[ApiKey, str]:
    """Create a key for ``account_name`` (and the account if needed); commit.

    Returns the row and the plain key, which exists nowhere else afterwards.
    """
    account = get_or_create_account(session, account_name)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(account_id=account.id, prefix=plain[:PREFIX_LENGTH], key_hash=hash_key(plain))
    session.add(row)
    session.commit()
    session.refresh(row)
    return row, plain


def authenticate(session: Session, plain: str) -> Account | None:
    """The account owning the live key ``plain``, or None."""
    statement = (
        select(Account)
        .join(ApiKey)
        .where(ApiKey.key_hash == hash_key(plain), ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
    )
    return session.exec(statement).first()


def list_keys(session: Session) -> list[tuple[ApiKey, Account]]:
    """Every key with its account, oldest first."""
    statement = select(ApiKey, Account).join(Account).order_by(ApiKey.id)  # type: ignore[arg-type]
    return list(session.exec(statement).all())


def any_key_exists(session: Session) -> bool:
    """Whether any key, live or revoked, was ever created."""
    return session.exec(select(ApiKey.id).limit(1)).first() is not None


def revoke_key(session: Session, prefix: str) -> ApiKey:
    """Revoke the key with ``prefix`` (idempotent) and commit."""
    row = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    if row is None:
        raise NotFound("API key", prefix)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.commit()
        session.refresh(row)
    return row
