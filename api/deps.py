"""Request dependencies as ``Annotated`` aliases: session, settings, dispatcher, ingestion, key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.key_cache import KeyCache, Missing
from dispatcher.settings import Settings
from models.accounts import Account, authenticate, hash_key
from models.group_commit import GroupCommit

clock = time.monotonic
"""The key cache's clock (tests move it)."""

API_KEY_HEADER = "X-API-Key"
API_KEY_SCHEME = "APIKeyHeader"
"""The name of the key's security scheme in the OpenAPI document."""

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name=API_KEY_SCHEME,
    auto_error=False,
    description="Your SentinMail API key.",
)


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, on the app's engine."""
    with Session(request.app.state.engine) as session:
        yield session


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


class DispatcherHandle(Protocol):
    """What the API asks of the dispatcher (``dispatcher.launch.Dispatcher``).

    Every call is fire-and-forget but ``health``, ``vitals`` and ``breaker``, which
    answer within the time they are given: the API never waits on Ray for long.
    """

    def wake(self) -> None:
        """New deliveries were committed: claim them now."""

    def forget(self, endpoint_ids: list[str]) -> None:
        """These endpoints changed or went away: hand back their queued jobs."""

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """Whether each actor answers, with its counts and node."""

    def vitals(self, timeout: float) -> dict[str, list[Any]]:
        """Per actor kind, each actor's numbers for ``/metrics`` (None: no answer in time)."""

    def breaker(self, origin: str, timeout: float) -> str | None:
        """The circuit breaker state of ``origin`` now (None: no answer within ``timeout``)."""


# Async: FastAPI would run a plain function in its thread pool, a hop per request.
async def get_dispatcher(request: Request) -> DispatcherHandle | None:
    """The dispatcher the app was created with; None when it runs elsewhere or not at all."""
    dispatcher: DispatcherHandle | None = request.app.state.dispatcher
    return dispatcher


def get_ingestion(request: Request) -> GroupCommit:
    """The app's group commit, where each request of events waits for its commit."""
    ingestion: GroupCommit = request.app.state.ingestion
    return ingestion


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DispatcherDep = Annotated[DispatcherHandle | None, Depends(get_dispatcher)]


async def get_account(
    request: Request, key: Annotated[str | None, Security(api_key_header)]
) -> Account:
    """The account whose live key is in ``X-API-Key``; 401 otherwise.

    From the app's :class:`KeyCache` when it looked the key up in the last
    ``SENTINMAIL_KEY_CACHE_SECONDS``; otherwise looked up on a thread, in a
    read-only transaction of its own, so that authenticating never waits for
    a writer, and the request's own transaction starts after.
    """
    if not key:
        raise HTTPException(401, "missing X-API-Key header")
    cache: KeyCache = request.app.state.keys
    key_hash = hash_key(key)
    began = clock()
    cached = cache.get(key_hash, began)
    if isinstance(cached, Missing):
        account = await run_in_threadpool(_look_up, request.app.state.reader, key)
        cache.put(key_hash, account, began)
    else:
        account = cached
    if account is None:
        raise HTTPException(401, "invalid or revoked API key")
    return account


def _look_up(reader: Engine, key: str) -> Account | None:
    with Session(reader) as session:
        return authenticate(session, key)


AccountDep = Annotated[Account, Depends(get_account)]
