"""``/healthz``: is the service able to do its job right now."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import DispatcherDep, get_ingestion

router = APIRouter(tags=["operations"])


class IngestionHealth(BaseModel):
    """This API process's ingestion writer (``models.group_commit``).

    ``stuck`` once a request not yet answered has waited over 30 s: the
    database does not commit, and requests only pile up (up to the bound past
    which they are refused with 503).
    """

    status: Literal["ok", "stuck"]
    waiting_events: int
    """Events waiting for the next commit."""
    oldest_wait_s: float
    """Seconds the oldest request not yet answered has waited (0: none waits)."""


class Health(BaseModel):
    """What answers: the database (``ok`` or the error's name), the actors, ingestion's writer."""

    status: Literal["ok", "unavailable"]
    database: str
    dispatcher: dict[str, Any]
    ingestion: IngestionHealth


@router.get(
    "/healthz",
    response_model=Health,
    responses={
        503: {
            "model": Health,
            "description": "The database or a dispatcher actor fails, or the ingestion writer "
            "is stuck.",
        }
    },
)
def healthz(request: Request, dispatcher: DispatcherDep) -> JSONResponse:
    """200 when the database, the dispatcher and ingestion's writer work; 503 names which not."""
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
    body["ingestion"] = asdict(get_ingestion(request).health())
    if body["ingestion"]["status"] != "ok":
        body["status"] = "unavailable"
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)
