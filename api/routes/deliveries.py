"""``/api/emails/deliveries/``: the delivery log, one delivery in full, and a retry of one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, status

from api.deps import AccountDep, DispatcherDep, SessionDep
from api.errors import ErrorMessage
from api.routing import Responses, not_found, resource_router
from models import delivery_log as store
from models.base import utcnow
from models.delivery_log import (
    CURSOR_PATTERN,
    MAX_LIMIT,
    DeliveryDetail,
    DeliveryItem,
    DeliveryPage,
)
from models.event_types import EventType
from models.events import EVENT_ID_PATTERN, MAX_EVENT_ID_LENGTH, Instant
from models.jobs import DeliveryStatus

router = resource_router("/api/emails/deliveries", "deliveries")

NOT_FOUND = not_found("delivery")
_LAST_ATTEMPT: dict[str, Any] = {
    "at": "2026-04-02T14:30:05Z",
    "status_code": 500,
    "error": "HTTP 500",
    "duration_ms": 87,
    "response_body": '{"error": "database unavailable"}',
}
_ITEM: dict[str, Any] = {
    "id": "1042",
    "event_id": "evt-6f1c2d4e-8a7b-4c3d-9e2f-1a0b3c4d5e6f",
    "event_type": "opened",
    "endpoint_id": "0b7e2f4c-5d6a-4e8b-9c1d-2e3f4a5b6c7d",
    "status": "failed",
    "attempt_count": 10,
    "created_at": "2026-04-02T14:30:00Z",
    "next_attempt_at": None,
    "last_attempt": _LAST_ATTEMPT,
}
_PAYLOAD = {
    "id": "evt-6f1c2d4e-8a7b-4c3d-9e2f-1a0b3c4d5e6f",
    "type": "opened",
    "recipient": "user@example.com",
    "sent_email_id": "sent-uuid-here",
    "campaign_id": "camp-uuid-here",
    "metadata": {"user_agent": "Mozilla/5.0...", "ip": "203.0.113.42"},
    "timestamp": "2026-04-02T14:30:00Z",
}
_BY_ID = {"delivery_id": "$response.body#/id"}
_CONFLICT: Responses = {
    409: {
        "model": ErrorMessage,
        "description": "The delivery cannot be retried now: its endpoint is disabled (enable it"
        " first) or deleted, or it is being attempted at this moment (retry once it settles).",
        "content": {
            "application/json": {
                "example": {"detail": "the endpoint is disabled: enable it first, then retry"}
            }
        },
    }
}


def _example(value: Any) -> dict[str, Any]:
    return {"content": {"application/json": {"example": value}}}


@router.get(
    "/",
    response_model=DeliveryPage,
    responses={
        200: {
            **_example({"results": [_ITEM], "next_cursor": "AAZOewkMKgAAAAAAAAAEEg"}),
            "links": {
                "GetDelivery": {
                    "operationId": "get_delivery",
                    "parameters": {"delivery_id": "$response.body#/results/0/id"},
                    "description": "Read the newest delivery of the page in full.",
                }
            },
        }
    },
)
def list_deliveries(
    account: AccountDep,
    session: SessionDep,
    endpoint_id: Annotated[
        str | None, Query(max_length=36, description="Only deliveries to this endpoint.")
    ] = None,
    status: Annotated[DeliveryStatus | None, Query(description="Only in this status.")] = None,
    event_type: Annotated[EventType | None, Query(description="Only of this event type.")] = None,
    event_id: Annotated[
        str | None,
        Query(
            max_length=MAX_EVENT_ID_LENGTH,
            pattern=EVENT_ID_PATTERN,
            description="Only of this event.",
        ),
    ] = None,
    since: Annotated[
        Instant | None,
        Query(description="Created at or after this time (RFC 3339; no offset means UTC)."),
    ] = None,
    until: Annotated[
        Instant | None,
        Query(description="Created before this time (RFC 3339; no offset means UTC)."),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Deliveries per page, 1 to {MAX_LIMIT}.")
    ] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page."),
    ] = None,
) -> DeliveryPage:
    """The account's deliveries, newest first, with their last attempt.

    Follow `next_cursor` for older pages: a walk neither skips nor repeats a
    delivery while new ones arrive (they are newer than the first page).
    """
    return store.list_deliveries(
        session,
        account.id,
        limit=limit,
        cursor=cursor,
        endpoint_id=endpoint_id,
        status=status,
        event_type=event_type,
        event_id=event_id,
        since=since,
        until=until,
    )


@router.get(
    "/{delivery_id}/",
    response_model=DeliveryDetail,
    responses={
        **NOT_FOUND,
        200: _example({**_ITEM, "payload": _PAYLOAD, "attempts": [_LAST_ATTEMPT]}),
    },
)
def get_delivery(delivery_id: str, account: AccountDep, session: SessionDep) -> DeliveryDetail:
    """One delivery, its payload as sent, and every attempt, oldest first."""
    return store.get_delivery(session, account.id, delivery_id)


@router.post(
    "/{delivery_id}/retry/",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryItem,
    responses={
        **NOT_FOUND,
        **_CONFLICT,
        202: {
            **_example({**_ITEM, "status": "pending", "next_attempt_at": "2026-04-03T09:00:00Z"}),
            "links": {
                "GetRetriedDelivery": {
                    "operationId": "get_delivery",
                    "parameters": _BY_ID,
                    "description": "Follow the delivery as it is attempted again.",
                }
            },
        },
    },
)
def retry_delivery(
    delivery_id: str, account: AccountDep, session: SessionDep, dispatcher: DispatcherDep
) -> DeliveryItem:
    """Attempt the delivery once more, now, whatever it ended as (a manual resend).

    The delivery becomes `pending`, due now; it is signed afresh (a new
    `webhook-timestamp`) with the same `webhook-id`, and goes through its host's
    lane as any delivery does. If that attempt fails, the delivery goes on with
    its retry schedule where it stood: one that had used it up is `failed` again.
    """
    item = store.retry(session, account.id, delivery_id, now=utcnow())
    if dispatcher is not None:
        dispatcher.wake()
    return item
