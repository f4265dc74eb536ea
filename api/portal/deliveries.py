"""The portal's delivery log and delivery pages: the log's filters, a delivery in full, Retry.

Each calls ``models.delivery_log`` as ``/api/emails/deliveries/`` does, scoped
to the signed-in account; a retry wakes the dispatcher as the API's does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from sqlmodel import Session

from api.deps import SessionDep
from api.portal.links import PREFIX
from api.portal.security import PortalRoute, ViewerDep, notice, page, see
from models import delivery_log
from models import endpoints as endpoints_store
from models.base import utcnow
from models.errors import Conflict, InvalidInput, NotFound
from models.event_types import EventType
from models.jobs import DeliveryStatus

router = APIRouter(prefix=PREFIX, route_class=PortalRoute, include_in_schema=False)

PAGE_SIZE = 50
FILTERS = ("status", "event_type", "endpoint_id", "event_id", "since", "until")


def _time(raw: str) -> datetime:
    """A ``datetime-local`` field's value (no offset), read as UTC; ValueError otherwise."""
    at = datetime.fromisoformat(raw)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def parse_filters(query: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The log's filters from the page's query, as ``list_deliveries`` takes them, and refusals."""
    given = {name: query.get(name, "").strip() for name in FILTERS}
    errors: dict[str, str] = {}
    filters: dict[str, Any] = {}
    if given["status"]:
        try:
            filters["status"] = DeliveryStatus(given["status"])
        except ValueError:
            errors["status"] = "must be one of " + ", ".join(s.value for s in DeliveryStatus)
    if given["event_type"]:
        try:
            filters["event_type"] = EventType(given["event_type"])
        except ValueError:
            errors["event_type"] = "must be one of " + ", ".join(t.value for t in EventType)
    for name in ("endpoint_id", "event_id"):
        if given[name]:
            filters[name] = given[name][:200]
    for name in ("since", "until"):
        if given[name]:
            try:
                filters[name] = _time(given[name])
            except ValueError:
                errors[name] = "must be a date and time, such as 2026-04-02T14:30"
    return filters, errors


@router.get("/deliveries/")
def deliveries_page(request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    """The delivery log, newest first, with the API's filters and cursor paging."""
    query = dict(request.query_params)
    filters, errors = parse_filters(query)
    cursor = query.get("cursor") or None
    page_of = delivery_log.DeliveryPage(results=[], next_cursor=None)
    if not errors:
        try:
            page_of = delivery_log.list_deliveries(
                session, viewer.account_id, limit=PAGE_SIZE, cursor=cursor, **filters
            )
        except InvalidInput as exc:
            errors[str(exc.loc[-1])] = exc.message
    _, endpoints = endpoints_store.list_endpoints(session, viewer.account_id, limit=200, offset=0)
    kept = {name: query[name] for name in FILTERS if query.get(name)}
    return page(
        request,
        "deliveries.html",
        {
            "deliveries": page_of.results,
            "next_cursor": page_of.next_cursor,
            "cursor": cursor,
            "filters": {name: query.get(name, "") for name in FILTERS},
            "filtered": bool(kept),
            "query_without_cursor": urlencode(kept),
            "errors": errors,
            "statuses": [s.value for s in DeliveryStatus],
            "event_types": [t.value for t in EventType],
            "endpoints": endpoints,
            "urls": {e.id: e.url for e in endpoints},
        },
        status_code=422 if errors else 200,
    )


def _delivery_page(
    request: Request,
    session: Session,
    account_id: str,
    delivery_id: str,
    *,
    retry_error: str | None = None,
    status_code: int = 200,
) -> Response:
    delivery = delivery_log.get_delivery(session, account_id, delivery_id)
    try:
        endpoint = endpoints_store.get_endpoint(session, account_id, delivery.endpoint_id)
    except NotFound:  # deleted since
        endpoint = None
    context = {
        "delivery": delivery,
        "endpoint": endpoint,
        "payload_json": json.dumps(delivery.payload, indent=2, ensure_ascii=False),
        "retry_error": retry_error,
        "notice": notice(request),
    }
    return page(request, "delivery.html", context, status_code)


@router.get("/deliveries/{delivery_id}/")
def delivery_page(
    delivery_id: str, request: Request, viewer: ViewerDep, session: SessionDep
) -> Response:
    """One delivery: its payload, every attempt with the receiver's answer, and Retry."""
    return _delivery_page(request, session, viewer.account_id, delivery_id)


@router.post("/deliveries/{delivery_id}/retry/")
def retry_delivery(
    delivery_id: str, request: Request, viewer: ViewerDep, session: SessionDep
) -> Response:
    """One more attempt now, as ``POST .../retry/`` does; a refusal (409) beside the button."""
    try:
        delivery_log.retry(session, viewer.account_id, delivery_id, now=utcnow())
    except Conflict as exc:
        reason = exc.reason[:1].upper() + exc.reason[1:] + "."
        return _delivery_page(
            request, session, viewer.account_id, delivery_id, retry_error=reason, status_code=409
        )
    dispatcher = request.app.state.dispatcher
    if dispatcher is not None:
        dispatcher.wake()
    return see(f"/deliveries/{delivery_id}/", "retried")
