"""``/healthz``: is the service able to do its job right now."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import DispatcherDep

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    """What answers: the database (``ok`` or the error's name) and the dispatcher's actors."""

    status: Literal["ok", "unavailable"]
    database: str
    dispatcher: dict[str, Any]


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database or a dispatcher actor fails."}},
)
def healthz(request: Request, dispatcher: DispatcherDep) -> JSONResponse:
    """200 when the database and the dispatcher answer, 503 otherwise; the body says which."""
    body: dict[str, Any] = {"status": "ok", "database": "ok"}
    try:
        # The reader: on SQLite the writers' engine takes the write turn first, and
        # would wait for ever on a writer that holds it and does not commit.
        with request.app.state.reader.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        body.update(status="unavailable", database=f"error: {type(exc).__name__}")
    if dispatcher is None:
        body["dispatcher"] = {"status": "not running in this process"}
    else:
        body["dispatcher"] = dispatcher.health()
        if body["dispatcher"]["status"] != "ok":
            body["status"] = "unavailable"
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)
