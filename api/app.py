"""``create_app(settings)``: the FastAPI application, built per process or per test."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine

from api import errors, openapi
from api.deps import DispatcherHandle
from api.fast_ingest import IngestFastPath
from api.key_cache import KeyCache
from api.metrics import IngestTimer, Metrics
from api.middleware import AssumeJson, BodyLimit, OptionalTrailingSlash
from api.portal import deliveries as portal_deliveries
from api.portal import operations as portal_operations
from api.portal import pages as portal
from api.portal.links import PREFIX as PORTAL
from api.routes import (
    deliveries,
    endpoint_operations,
    endpoint_recovery,
    endpoints,
    events,
    health,
    metrics,
    portal_sessions,
)
from api.routing import operation_id
from api.wakeups import Waker
from dispatcher.probe import ProbeLimiter
from dispatcher.settings import Settings
from models.db import make_engine, reader
from models.group_commit import GroupCommit

ENDPOINT_BODY_LIMIT = 64 * 1024
EVENTS_BODY_LIMIT = 1024 * 1024
PORTAL_BODY_LIMIT = 64 * 1024
PORTAL_STATIC = Path(__file__).parent / "portal" / "static"


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While serving, keep what start-up built out of the cyclic collector's sight.

    Modules, routes, schemas and engines (over 100,000 objects) live as long as
    the process, yet every full collection walked them all again: about 7 us of
    CPU per ingested event. Garbage made by requests is collected as before.
    At the end, the group commit's writer thread is let go.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        app.state.ingestion.close()


def create_app(
    settings: Settings, engine: Engine | None = None, dispatcher: DispatcherHandle | None = None
) -> FastAPI:
    """Build the API on ``settings``; ``engine`` defaults to one on its database URL.

    Without a ``dispatcher`` the API still accepts and stores everything; the
    deliveries wait in the database for a dispatcher to claim them.
    """
    app = FastAPI(
        title="SentinMail webhooks",
        version="0.1.0",
        description="Register HTTPS endpoints and receive SentinMail email events on them.",
        redirect_slashes=False,
        lifespan=_lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine or make_engine(settings.database_url)
    app.state.reader = reader(app.state.engine)
    app.state.dispatcher = dispatcher
    app.state.metrics = Metrics(app.state.reader, dispatcher)
    app.state.keys = KeyCache(settings.key_cache_seconds)
    app.state.key_lookups = {}  # key hash -> the lookup in flight (api.deps)
    app.state.probes = ProbeLimiter()  # test events, per process
    app.state.ingestion = GroupCommit(
        app.state.engine,
        max_waiting_events=settings.max_waiting_events,
        committed=None if dispatcher is None else Waker(dispatcher).committed,
        waiting_changed=app.state.metrics.ingest.waiting,
        refused=app.state.metrics.ingest.saturated,
    )
    errors.install(app)
    openapi.install(app)
    # Events first: routes are matched in order, and ingestion is the hot path (its
    # match came after every endpoint route's: ~10 us of a single-event post).
    app.include_router(events.router)
    app.include_router(endpoints.router)
    app.include_router(endpoint_operations.router)
    app.include_router(endpoint_recovery.router)
    app.include_router(deliveries.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(portal_sessions.router)
    app.include_router(portal.router)
    app.include_router(portal_operations.router)
    app.include_router(portal_deliveries.router)
    app.mount(f"{PORTAL}/static", StaticFiles(directory=PORTAL_STATIC), name="portal_static")
    app.add_middleware(
        BodyLimit,
        default=ENDPOINT_BODY_LIMIT,
        limits={"/api/emails/events/": EVENTS_BODY_LIMIT},
        prefix="/api/",
    )
    # The portal's forms: nothing a page sends comes near this.
    app.add_middleware(BodyLimit, default=PORTAL_BODY_LIMIT, prefix=f"{PORTAL}/")
    app.add_middleware(AssumeJson)
    app.add_middleware(OptionalTrailingSlash)
    app.add_middleware(OptionalTrailingSlash, prefix=f"{PORTAL}/", exclude=(f"{PORTAL}/static/",))
    # The usual POST of events skips everything above (api.fast_ingest); timed all the same.
    app.add_middleware(
        IngestFastPath, path=events.router.prefix, limit=EVENTS_BODY_LIMIT, state=app.state
    )
    app.add_middleware(IngestTimer, metrics=app.state.metrics.ingest, path=events.router.prefix)
    return app
