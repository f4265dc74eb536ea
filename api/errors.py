"""The one place where domain errors become HTTP responses.

Every error body is JSON ``{"detail": ...}``; field errors use FastAPI's list
form, ``[{"loc": [...], "msg": ..., "type": ...}]``, so clients parse one shape.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from models.errors import InvalidInput, NotFound


def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotFound)
    return JSONResponse({"detail": f"{exc.resource} not found"}, status_code=404)


def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidInput)
    detail = [{"loc": list(exc.loc), "msg": exc.message, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=422)


def install(app: FastAPI) -> None:
    """Register the handlers of domain errors on ``app``."""
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(InvalidInput, _invalid)
