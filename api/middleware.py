"""ASGI middleware: trailing slashes, JSON bodies and body limits, before routing.

All run before routing, so every route gets them without knowing.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class OptionalTrailingSlash:
    """Serve ``/api/x`` exactly as ``/api/x/``: no redirect, one route.

    The public docs write every path with a trailing slash; clients often drop
    it, and a redirect would turn their POST into a GET in some HTTP clients.
    """

    def __init__(self, app: ASGIApp, prefix: str = "/api/", exclude: tuple[str, ...] = ()) -> None:
        self.app = app
        self.prefix = prefix
        self.exclude = exclude

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if (
                path.startswith(self.prefix)
                and not path.endswith("/")
                and not path.startswith(self.exclude)
            ):
                scope = {**scope, "path": path + "/"}
                if scope.get("raw_path"):
                    scope["raw_path"] = scope["raw_path"] + b"/"
        await self.app(scope, receive, send)


class AssumeJson:
    """Read every ``/api/`` request body as JSON, whatever its Content-Type says.

    ``curl -d`` sends ``application/x-www-form-urlencoded`` unless told
    otherwise; the API speaks only JSON, so the body is parsed as JSON and a
    body that is not JSON gets a 422 that says so, rather than a puzzling one.
    """

    def __init__(self, app: ASGIApp, prefix: str = "/api/") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


class BodyLimit:
    """Answer 413 to request bodies over a limit, before anything is parsed or stored.

    Applies to paths under ``prefix`` (every ``/api/`` operation documents its
    413); ``limits`` maps path prefixes to byte limits (longest prefix wins),
    ``default`` applies to the rest. The body is read here, up to the limit, and
    handed on whole: chunked bodies without a Content-Length cannot sneak
    past, and the handler never sees a body cut short.
    """

    def __init__(
        self,
        app: ASGIApp,
        default: int,
        limits: dict[str, int] | None = None,
        prefix: str = "/",
    ) -> None:
        self.app = app
        self.default = default
        self.prefix = prefix
        self.limits = sorted((limits or {}).items(), key=lambda kv: -len(kv[0]))

    def limit_for(self, path: str) -> int:
        """The byte limit that applies to ``path``."""
        return next((n for prefix, n in self.limits if path.startswith(prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, limit)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _reject(send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, replay([whole], then=receive), send)


def replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A ``receive`` that yields ``messages``, then defers to ``then`` (or says the client left)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


async def _reject(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "detail": [
                {
                    "loc": ["body"],
                    "msg": f"request body exceeds the limit of {limit} bytes",
                    "type": "too_large",
                }
            ]
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
