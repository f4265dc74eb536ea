"""``/api/emails/events/``: ingest events (the outbox write) and show one with its deliveries."""

from __future__ import annotations

import json

from fastapi import Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from api.deps import (
    API_KEY_HEADER,
    API_KEY_SCHEME,
    AccountDep,
    SessionDep,
    get_account,
    get_ingestion,
)
from api.metrics import IngestMetrics, get_ingest_metrics
from api.routing import SHARED_RESPONSES, not_found, resource_router
from models import events as store
from models.events import EVENT_BATCH, Accepted, EventBatch, EventIn, EventOut
from models.group_commit import GroupCommit

router = resource_router("/api/emails/events", "events")

# Its "$defs" stay inside it, so its "$ref"s point there from the document's root.
_BODY_SCHEMA = TypeAdapter(EventIn | EventBatch).json_schema(
    ref_template="#/paths/~1api~1emails~1events~1/post/requestBody/content/application~1json"
    "/schema/$defs/{model}"
)
_EXAMPLE = {
    "type": "opened",
    "recipient": "user@example.com",
    "sent_email_id": "sent-uuid-here",
    "campaign_id": "camp-uuid-here",
    "metadata": {"user_agent": "Mozilla/5.0...", "ip": "203.0.113.42"},
    "timestamp": "2026-04-02T14:30:00Z",
}


async def event_batch(request: Request) -> list[EventIn]:
    """The body as a list of events: one object, or an array of up to 1,000.

    Validated whole before anything is stored; errors name the index (for an
    array) and the field.
    """
    body = await request.body()
    events = valid_events(body)
    return _parse_and_validate(body) if events is None else events


def valid_events(body: bytes) -> list[EventIn] | None:
    """The events of a valid body, parsed and validated by pydantic in one pass; else None.

    The fast way for the usual body. Whatever it refuses goes through
    :func:`_parse_and_validate`, which explains why.
    """
    start = body.lstrip()[:1]
    try:
        if start == b"[":
            return EVENT_BATCH.validate_json(body)
        if start == b"{":
            return [EventIn.model_validate_json(body)]
    except ValidationError:
        pass
    return None


def _parse_and_validate(body: bytes) -> list[EventIn]:
    """The events in ``body``, or a 422 naming what is wrong and where."""
    try:
        parsed = json.loads(body)
    # ValueError also covers integers past Python's digit limit (4,300).
    except (ValueError, RecursionError) as exc:
        raise RequestValidationError(
            [{"loc": ["body"], "msg": f"not JSON: {exc}", "type": "json_invalid"}]
        ) from None
    try:
        if isinstance(parsed, list):
            return EVENT_BATCH.validate_python(parsed)
        return [EventIn.model_validate(parsed)]
    except ValidationError as exc:
        raise RequestValidationError(
            [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        ) from None


@router.post(
    "/",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _BODY_SCHEMA, "example": _EXAMPLE}},
        },
        "security": [{API_KEY_SCHEME: []}],
    },
    responses={
        202: {
            "links": {
                "GetEvent": {
                    "operationId": "get_event",
                    "parameters": {"event_id": "$response.body#/accepted/0"},
                    "description": "Follow the first event accepted.",
                }
            }
        },
        413: {**SHARED_RESPONSES[413], "description": "Request body over 1 MiB."},
        503: {
            **SHARED_RESPONSES[503],
            "description": "Nothing is acknowledged: the database did not answer or commit "
            "(an event that was stored after all comes back as a duplicate), or ingestion is "
            "saturated, too many events waiting for the database (nothing of the request was "
            "stored). Retry after the seconds in `Retry-After`.",
        },
    },
)
async def ingest_events(request: Request) -> Response:
    """Accept events for delivery to every subscribed, enabled endpoint of the account.

    202 means the events and their deliveries are committed: nothing accepted
    is lost. Delivery happens afterwards; follow it with ``GET /api/emails/events/{id}/``.
    Concurrent requests share a commit, and each is answered once it has returned.
    When too many events already wait for the database, the request is refused at
    once (503) rather than queued.
    """
    # The caller, the events and the group commit (models.group_commit) are got by
    # hand rather than as FastAPI dependencies: resolving those cost 32 us of the
    # ~95 us this app spends on a single-event post (in-process, commit stubbed).
    # The key first: a stranger's body is not even read. The document's security
    # requirement is declared above.
    # The usual request does not come here: api.fast_ingest answers it with accept().
    account = await get_account(request, request.headers.get(API_KEY_HEADER))
    events = await event_batch(request)
    answer = await accept(get_ingestion(request), get_ingest_metrics(request), account.id, events)
    return Response(answer, status.HTTP_202_ACCEPTED, media_type="application/json")


async def accept(
    ingestion: GroupCommit, metrics: IngestMetrics, account_id: str, events: list[EventIn]
) -> bytes:
    """Commit ``events`` of ``account_id`` with the group; count them; the 202's body.

    Raises :class:`models.errors.Unavailable` if they were not committed.
    """
    result = await ingestion.ingest(account_id, events)
    metrics.accepted(events, result)  # committed: a 202 is decided
    # Serialized here: FastAPI would validate the answer again.
    accepted = Accepted(
        accepted=result.accepted, duplicates=result.duplicates, deliveries=result.deliveries
    )
    return accepted.model_dump_json().encode()


@router.get("/{event_id}/", response_model=EventOut, responses=not_found("event"))
def get_event(event_id: str, account: AccountDep, session: SessionDep) -> EventOut:
    """The event, its payload as sent, and per endpoint its delivery and attempts."""
    return store.get_event(session, account.id, event_id)
