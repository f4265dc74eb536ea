"""The usual ``POST /api/emails/events/``, answered before the middleware stack and routing.

Nearly every request of events is the same: a key this process looked up in
the last seconds and a valid body. For such a request, the ASGI middleware
(trailing slashes, JSON, body limits, exception handling) and
FastAPI's routing and argument resolution cost more CPU than ingesting it:
in the API process, 350 us of event-loop CPU per single-event post with
them, 150 without (2026-12-03, 64 in flight, per-thread CPU from ``/proc``;
the bare FastAPI server of ``benchmarks.bare`` spends 150 on the same
machine then). :class:`IngestFastPath` serves that request with the route's
own code (:func:`api.routes.events.accept`, the same group commit, metrics
and answer), timed by the same ``IngestTimer``. Every other request (no key
or one not in the cache, a body refused by validation or over the limit, a
client that left, another path or method) goes on to the application, its
body replayed, and is answered exactly as before: each error is still
decided in one place.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import deps
from api.errors import come_back_later
from api.middleware import replay
from api.routes.events import accept, valid_events
from models.accounts import Account, hash_key
from models.errors import Unavailable

_KEY = b"x-api-key"


class IngestFastPath:
    """ASGI middleware (only the ingestion timer is outside it): the usual POST of events.

    ``state`` is the application's (its key cache, group commit and metrics);
    ``limit`` the events' body limit. ``served`` counts the requests it answered.
    """

    def __init__(self, app: ASGIApp, *, path: str, limit: int, state: Any) -> None:
        self.app = app
        self.paths = {path.rstrip("/"), path.rstrip("/") + "/"}
        self.limit = limit
        self.state = state
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        account = self._cached_account(scope)
        if account is None:  # the application looks the key up, or answers 401
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, replay([_part(chunks, more=True), message]), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.limit:  # the application answers 413
                await self.app(scope, replay([_part(chunks, more=more)], then=receive), send)
                return
        body = b"".join(chunks)
        events = valid_events(body)
        if events is None:  # the application says what is wrong, and where
            await self.app(scope, replay([_part([body], more=False)]), send)
            return
        state = self.state
        try:
            answer = await accept(state.ingestion, state.metrics.ingest, account.id, events)
        except Unavailable as exc:
            await come_back_later(503, exc)(scope, receive, send)
            return
        self.served += 1
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    def _cached_account(self, scope: Scope) -> Account | None:
        """The live account of the request's key, if this process knows it; else None."""
        for name, value in scope["headers"]:
            if name == _KEY:  # the first, as Starlette's headers.get() takes
                found = self.state.keys.get(hash_key(value.decode("latin-1")), deps.clock())
                return found if isinstance(found, Account) else None
        return None


def _part(chunks: list[bytes], *, more: bool) -> Message:
    return {"type": "http.request", "body": b"".join(chunks), "more_body": more}
