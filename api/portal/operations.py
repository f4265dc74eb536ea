"""The endpoint page's operations: Send test event, Recover since…, Rotate.

Each goes through the JSON API's own operation (``api.routes.endpoint_recovery``)
for the signed-in account, so the portal's test event is the API's: same
signing, transport, SSRF guard, timeout and limit of 10 a minute. The answer
is the endpoint's page with the result, or the refusal, beside the form.
Rotate calls ``models.endpoints.rotate_secret`` as ``rotate-secret/`` does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.deps import SessionDep, SettingsDep
from api.portal import forms
from api.portal.links import PREFIX
from api.portal.pages import endpoint_page_response
from api.portal.security import PortalRoute, Viewer, ViewerDep, form_of
from api.routes.endpoint_recovery import RecoverIn, recover_endpoint, send_test_event
from dispatcher.probe import ProbeIn
from models import endpoints as store
from models.accounts import Account
from models.base import utcnow
from models.endpoints import SecretRotation
from models.errors import Conflict, InvalidInput, TooMany

router = APIRouter(prefix=PREFIX, route_class=PortalRoute, include_in_schema=False)


def _account(viewer: Viewer) -> Account:
    """The signed-in account, as the API's operations take it (only its id is read)."""
    return Account(id=viewer.account_id, name=viewer.account_name)


def _rendered(
    request: Request, session: Session, viewer: Viewer, endpoint_id: str, **results: Any
) -> Response:
    endpoint = store.get_endpoint(session, viewer.account_id, endpoint_id)
    return endpoint_page_response(request, session, endpoint, **results)


@router.post("/endpoints/{endpoint_id}/test/")
async def send_test(
    endpoint_id: str,
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """Send one test event of the chosen type; show the receiver's answer (or why none came)."""
    chosen = forms.text(form_of(request), "type") or "delivered"
    results: dict[str, Any] = {"test_type": chosen}
    status_code = 200
    try:
        probe = ProbeIn.model_validate({"type": chosen})
        results["test_result"] = await send_test_event(
            request, endpoint_id, _account(viewer), session, settings, probe
        )
    except ValidationError:
        results["test_error"] = "Choose one of the five event types."
        status_code = 422
    except TooMany as exc:
        results["test_error"] = (
            f"At most 10 test events a minute per endpoint: try again in {exc.retry_after} s."
        )
        status_code = 429
    return await run_in_threadpool(
        _rendered, request, session, viewer, endpoint_id, status_code=status_code, **results
    )


def _instant(raw: str) -> str:
    """A ``datetime-local`` field (no offset: UTC) as the RFC 3339 text the API takes."""
    at = datetime.fromisoformat(raw)
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@router.post("/endpoints/{endpoint_id}/recover/")
def recover(endpoint_id: str, request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    """Recover the window given, as ``POST .../recover/`` does; refusals beside their fields."""
    form = form_of(request)
    values = {"since": forms.text(form, "since"), "until": forms.text(form, "until")}
    errors: dict[str, str] = {}
    body: dict[str, str] = {}
    for name, raw in values.items():
        if not raw:
            if name == "since":
                errors[name] = "Give the time from which to recover."
            continue
        try:
            body[name] = _instant(raw)
        except ValueError:
            errors[name] = "Must be a date and time, such as 2026-04-02T14:30."
    status_code = 422
    recovered = None
    if not errors:
        try:
            window = forms.validated(RecoverIn, body)
            recovered = recover_endpoint(
                endpoint_id, window, _account(viewer), session, request.app.state.dispatcher
            ).deliveries
            status_code = 200
        except forms.FormErrors as exc:
            errors = exc.errors
        except InvalidInput as exc:
            errors = forms.errors_of(exc)
        except Conflict as exc:
            errors = {"form": exc.reason[:1].upper() + exc.reason[1:] + "."}
            status_code = 409
    return _rendered(
        request,
        session,
        viewer,
        endpoint_id,
        status_code=status_code,
        recovered=recovered,
        recover_errors=errors,
        recover_values=values,
    )


@router.post("/endpoints/{endpoint_id}/rotate/")
def rotate(endpoint_id: str, request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    """A new secret, the old one signing beside it for the grace chosen; the new one shown."""
    raw = forms.text(form_of(request), "grace_seconds")
    try:
        rotation = forms.validated(
            SecretRotation, {"grace_seconds": int(raw) if raw.isdigit() else raw}
        )
    except forms.FormErrors:
        return _rendered(
            request,
            session,
            viewer,
            endpoint_id,
            status_code=422,
            rotate_error="Choose how long the old secret keeps signing: 0 to 7 days.",
        )
    store.rotate_secret(
        session,
        viewer.account_id,
        endpoint_id,
        grace=timedelta(seconds=rotation.grace_seconds),
        secret=None,
        now=utcnow(),
    )
    dispatcher = request.app.state.dispatcher
    if dispatcher is not None:  # queued jobs carry the old secrets: they come back signed anew
        dispatcher.forget([endpoint_id])
    return _rendered(request, session, viewer, endpoint_id, rotated=True)
