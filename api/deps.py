"""Request dependencies as ``Annotated`` aliases: session, settings, dispatcher, ingestion, key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.key_cache import MISSING, KeyCache
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
    account = await _look_up_once(request, key_hash, key, began) if cached is MISSING else cached
    if account is None:
        raise HTTPException(401, "invalid or revoked API key")
    return account


async def _look_up_once(request: Request, key_hash: str, key: str, now: float) -> Account | None:
    """Look ``key`` up, or join the lookup of it already in flight.

    When a key's cache entry expires, every request carrying it misses at
    once (64 in flight: a few each for 50 keys); each used to look it up on
    its own thread, and the connections the extra lookups needed past the
    pool's five were opened, configured and closed each time: 11 % of the API
    process's samples in ``benchmarks.ingest`` (py-spy, one event per request).
    One lookup per key at a time now. A lookup is joined only while it is
    younger than the cache's ``ttl``, so the revocation bound holds for the
    requests that join it as for those the cache answers.
    """
    lookups: dict[str, tuple[float, asyncio.Future[Account | None]]] = request.app.state.key_lookups
    cache: KeyCache = request.app.state.keys
    pending = lookups.get(key_hash)
    if pending is None or now - pending[0] >= cache.ttl:
        reader = request.app.state.reader
        lookup = asyncio.ensure_future(_look_up(reader, cache, key_hash, key, now))
        pending = (now, lookup)
        lookups[key_hash] = pending

        def forget(done: asyncio.Future[Account | None], entry: object = pending) -> None:
            if lookups.get(key_hash) is entry:
                del lookups[key_hash]
            if not done.cancelled():
                done.exception()  # retrieved here too: every waiter may have gone away

        lookup.add_done_callback(forget)
    # Shielded: a request that goes away does not cancel the others' lookup.
    return await asyncio.shield(pending[1])


async def _look_up(
    reader: Engine, cache: KeyCache, key_hash: str, key: str, began: float
) -> Account | None:
    account = await run_in_threadpool(_read_key, reader, key)
    cache.put(key_hash, account, began)
    return account


def _read_key(reader: Engine, key: str) -> Account | None:
    with Session(reader) as session:
        return authenticate(session, key)


AccountDep = Annotated[Account, Depends(get_account)]
