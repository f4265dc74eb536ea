"""The one place where errors become HTTP responses, and the shapes they have.

Every error body is JSON ``{"detail": ...}``: a sentence (:class:`ErrorMessage`:
401, 404, 409, 429, 503) or FastAPI's list of field errors (:class:`FieldErrors`: 422,
413), ``[{"loc": [...], "msg": ..., "type": ...}]``, so clients parse one shape.
The OpenAPI document declares them with these models (see ``api.routing``).

A database that does not answer (down, restarting, failing over, a pool with
no connection to give within its timeout, a PostgreSQL deadlock or
serialization failure that aborted the transaction) is the service's bad
moment, not the caller's mistake: 503 with ``Retry-After``, never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import exc as sa
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from api.portal.links import PREFIX as PORTAL
from api.portal.security import page
from models.errors import Conflict, InvalidInput, NotFound, TooMany, Unavailable


class ErrorMessage(BaseModel):
    """An error that concerns the whole request, said in a sentence."""

    detail: str


class FieldError(BaseModel):
    """One refused part of the request: where (``loc``), why (``msg``) and a code (``type``).

    ``loc`` starts with where the value was: ``body``, ``query``, ``path`` or
    ``header``; then the field names and array indexes down to it.
    """

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class FieldErrors(BaseModel):
    """Every refused part of the request (FastAPI's validation error shape)."""

    detail: list[FieldError]


def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotFound)
    return JSONResponse({"detail": f"{exc.resource} not found"}, status_code=404)


def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidInput)
    detail = [{"loc": list(exc.loc), "msg": exc.message, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer, with a 405's ``Allow`` naming every method the document lists for the path.

    Each method of a path is a route of its own, and the 405 of the router
    names only the methods of the first route whose path matched.
    """
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = _documented_methods(request.app, request.scope["path"])
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
    return await http_exception_handler(request, exc)


def _documented_methods(app: FastAPI, path: str) -> set[str]:
    """The methods of ``path`` in ``app``'s OpenAPI document, and HEAD with GET, as served."""
    for template, operations in app.openapi()["paths"].items():
        if compile_path(template)[0].match(path):
            methods = {method.upper() for method in operations}
            return methods | {"HEAD"} if "GET" in methods else methods
    return set()


def _conflict(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Conflict)
    return JSONResponse({"detail": exc.reason}, status_code=409)


def come_back_later(status_code: int, exc: TooMany | Unavailable) -> JSONResponse:
    """The answer to an error that says when to retry: ``detail`` and ``Retry-After``."""
    return JSONResponse(
        {"detail": exc.reason},
        status_code=status_code,
        headers={"Retry-After": str(exc.retry_after)},
    )


def _come_back(status_code: int) -> Callable[[Request, Exception], JSONResponse]:
    """A handler of an error that says when to retry (:func:`come_back_later`)."""

    def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TooMany | Unavailable)
        return come_back_later(status_code, exc)

    return handle


DATABASE_DOWN = (sa.OperationalError, sa.InterfaceError, sa.TimeoutError)
"""What a database that does not answer raises, rather than one that refuses a statement."""

log = logging.getLogger(__name__)


def _database_down(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: the database did not answer: %s", request.method, request.url.path, exc)
    if request.url.path.startswith(f"{PORTAL}/"):  # a person's browser: a page, not JSON
        response = page(request, "unavailable.html", status_code=503)
        response.headers["Retry-After"] = "1"
        return response
    reason = f"the database did not answer ({type(exc).__name__}); retry"
    return come_back_later(503, Unavailable(reason))


def install(app: FastAPI) -> None:
    """Register the handlers of HTTP and domain errors on ``app``."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(InvalidInput, _invalid)
    app.add_exception_handler(Unavailable, _come_back(503))
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(TooMany, _come_back(429))
    for error in DATABASE_DOWN:
        app.add_exception_handler(error, _database_down)
