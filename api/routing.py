"""How an ``/api/`` resource declares its operations: :func:`resource_router`.

Each resource module makes its router with ``resource_router(prefix, tag)`` and
declares its operations on it as usual. Every operation then, without saying so:

- documents the errors any ``/api/`` call can answer (:data:`SHARED_RESPONSES`):
  401 without a live ``X-API-Key``, 413 for a body over the path's limit (the
  ``BodyLimit`` middleware reads every ``/api/`` body), 422 with the field errors,
  503 with ``Retry-After`` when the database does not answer;
- reads a JSON body as UTF-8 JSON (:class:`JsonRoute`): any other body gets the
  same 422 as malformed JSON, never FastAPI's undocumented 400;
- is named in the OpenAPI document by its function's name (``operationId``),
  which OpenAPI links refer to.

An operation adds only what is its own: :func:`not_found` for a resource looked
up by id, and ``links`` from its success response to what the answer opens.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from api.errors import ErrorMessage, FieldErrors

Responses = dict[int | str, dict[str, Any]]

SHARED_RESPONSES: Responses = {
    401: {"model": ErrorMessage, "description": "No live API key in `X-API-Key`."},
    413: {"model": FieldErrors, "description": "Request body over this path's size limit."},
    422: {"model": FieldErrors, "description": "A refused field, named by its `loc`."},
    503: {
        "model": ErrorMessage,
        "description": "The database did not answer; retry after the seconds in `Retry-After`.",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
}


def not_found(resource: str) -> Responses:
    """The 404 of an operation on one ``resource`` by id (also what other accounts get)."""
    return {404: {"model": ErrorMessage, "description": f"No such {resource} for this account."}}


def operation_id(route: APIRoute) -> str:
    """An operation's ``operationId``: its function's name, unique across the API."""
    return route.name


class JsonRequest(Request):
    """A request whose body, when parsed as JSON, must be UTF-8 (RFC 8259), a BOM ignored.

    Every failure to parse is a ``json.JSONDecodeError``, which FastAPI answers
    with its usual 422 (``loc: ["body", position]``, ``type: "json_invalid"``);
    anything else it would answer with a bare 400.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                text = body.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(
                    f"not UTF-8 ({exc.reason})", body.decode("latin-1"), exc.start
                ) from None
            try:
                self._json = json.loads(text)
            except json.JSONDecodeError:
                raise
            # Nesting past the recursion limit; an integer past 4,300 digits.
            except (RecursionError, ValueError) as exc:
                reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                raise json.JSONDecodeError(reason, text, 0) from None
        return self._json


class JsonRoute(APIRoute):
    """A route that hands its handler a :class:`JsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def json_handler(request: Request) -> Response:
            return await handler(JsonRequest(request.scope, request.receive))

        return json_handler


def resource_router(prefix: str, tag: str) -> APIRouter:
    """The router of one ``/api/`` resource: every operation declared on it gets the above."""
    return APIRouter(
        prefix=prefix,
        tags=[tag],
        responses=SHARED_RESPONSES,
        route_class=JsonRoute,
        generate_unique_id_function=operation_id,
    )
