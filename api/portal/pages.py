"""The portal's pages: entering through a link, and the account's endpoints.

Thin, as the API's routes are: each page calls the model functions the JSON
API calls (``models.endpoints``...), scoped to the signed-in account, and
renders a template. Every change is a form POST answered with a redirect
(303) to the page that shows its result, or with the same page and the
refusals beside their fields (422).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlmodel import Session
from starlette.datastructures import FormData

from api.deps import SessionDep, SettingsDep
from api.portal import forms
from api.portal.chart import Bucket, bars_svg
from api.portal.links import COOKIE, PREFIX
from api.portal.security import PortalRoute, ViewerDep, form_of, notice, page, see
from models import endpoint_series, endpoint_stats, portal_sessions
from models import endpoints as store
from models.base import utcnow
from models.endpoint_stats import BreakerView
from models.endpoints import Endpoint, EndpointCreate, EndpointPatch, EndpointPublic
from models.errors import InvalidInput
from models.event_types import EventType

router = APIRouter(prefix=PREFIX, route_class=PortalRoute, include_in_schema=False)

PAGE_SIZE = 50
BREAKER_TIMEOUT = 1.0
# The endpoint page's statistics: (id, label, window, bars of its chart).
CHARTS = [
    ("24h", "24 h", timedelta(hours=24), 24),
    ("7d", "7 d", timedelta(days=7), 28),
]
# Rotate's choices of how long the old secret keeps signing (the API takes 0 to 7 days).
GRACES = [(0, "no time: drop it now"), (3600, "1 hour"), (86400, "24 hours"), (604800, "7 days")]
EVENT_TYPES = [t.value for t in EventType]
# A new endpoint starts with the email types ticked; the operational ones are for the
# endpoint that watches the others.
EMAIL_TYPES = [t.value for t in EventType if not t.operational]


def _forget(request: Request, endpoint_id: str) -> None:
    """As the API does after a change: queued jobs of the endpoint come back as it is now."""
    dispatcher = request.app.state.dispatcher
    if dispatcher is not None:
        dispatcher.forget([endpoint_id])


def _offset(request: Request) -> int:
    raw = request.query_params.get("offset", "0")
    return min(int(raw), 1_000_000) if raw.isdigit() else 0


# --- entering ---------------------------------------------------------------------------


@router.get("/enter/{token}/")
def enter(token: str, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Trade the link for a session cookie, then go on to the portal.

    The answer is a page that moves on by itself (a meta refresh) rather than
    a 303: a ``SameSite=Strict`` cookie is not sent on a redirect that a
    click on another site started, and the portal is opened from SentinMail's
    dashboard, another site. The page's own navigation is same-site.
    """
    opened = portal_sessions.open_link(session, token, now=utcnow())
    if opened is None:
        return page(request, "link_refused.html", status_code=403)
    session_token, expires = opened
    response = page(request, "entered.html", {"next": f"{PREFIX}/endpoints/"})
    response.set_cookie(
        COOKIE,
        session_token,
        max_age=int(portal_sessions.SESSION_LIFETIME.total_seconds()),
        expires=expires,
        path=PREFIX,
        secure=not settings.dev,
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/sign-out/")
def sign_out(request: Request, session: SessionDep) -> Response:
    """End the session: its cookie no longer opens anything, here or in any process."""
    portal_sessions.sign_out(session, request.cookies.get(COOKIE, ""))
    response = page(request, "signed_out.html", {"by_choice": True})
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


@router.get("/")
def home(viewer: ViewerDep) -> Response:
    """The portal opens on the endpoints."""
    return see("/endpoints/")


# --- endpoints --------------------------------------------------------------------------


@router.get("/endpoints/")
def endpoints_page(request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    """The account's endpoints, newest first, 50 a page."""
    offset = _offset(request)
    count, rows = store.list_endpoints(session, viewer.account_id, limit=PAGE_SIZE, offset=offset)
    rates = endpoint_series.success_rates(
        session, [e.id for e in rows], since=utcnow() - timedelta(hours=24)
    )
    return page(
        request,
        "endpoints.html",
        {
            "endpoints": rows,
            "rates": rates,
            "count": count,
            "offset": offset,
            "page_size": PAGE_SIZE,
            "notice": notice(request),
        },
    )


def _form_context(
    endpoint: Endpoint | None, values: dict[str, Any] | None, errors: dict[str, str] | None
) -> dict[str, Any]:
    """What the endpoint form shows: the submitted values if any, else the endpoint's."""
    if values is None:
        values = (
            {"url": "", "events": EMAIL_TYPES, "rate_limit": None, "headers": ""}
            if endpoint is None
            else {
                "url": endpoint.url,
                "events": endpoint.events,
                "rate_limit": endpoint.rate_limit,
                "headers": forms.headers_text(endpoint.headers),
            }
        )
    return {"values": values, "errors": errors or {}, "event_types": EVENT_TYPES}


@router.get("/endpoints/new/")
def new_endpoint_page(request: Request, viewer: ViewerDep) -> Response:
    """The form of a new endpoint (every event type ticked to start with)."""
    return page(request, "endpoint_new.html", _form_context(None, None, None))


def _submitted(form: FormData) -> dict[str, Any]:
    """The endpoint form's fields as submitted, to show again beside the reasons for refusal."""
    return {
        "url": forms.text(form, "url"),
        "events": forms.choices(form, "events"),
        "rate_limit": forms.text(form, "rate_limit"),
        "headers": form.get("headers") or "",
    }


def _endpoint_changes(
    form: Any, settings: Any, model: type[EndpointCreate] | type[EndpointPatch]
) -> dict[str, Any]:
    """The form's fields, validated as the API validates them; :class:`forms.FormErrors`."""
    data, errors = forms.endpoint_fields(form)
    try:
        body = forms.validated(model, data)
        store.require_scheme(body.url or "", allow_http=settings.dev)
    except forms.FormErrors as exc:
        raise forms.FormErrors({**exc.errors, **errors}) from None
    except InvalidInput as exc:
        raise forms.FormErrors({**forms.errors_of(exc), **errors}) from None
    if errors:
        raise forms.FormErrors(errors)
    return data


@router.post("/endpoints/new/")
def create_endpoint(
    request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Register the endpoint of the form; on refusal, the form again with the reasons."""
    form = form_of(request)
    try:
        data = _endpoint_changes(form, settings, EndpointCreate)
    except forms.FormErrors as exc:
        values = _submitted(form)
        return page(request, "endpoint_new.html", _form_context(None, values, exc.errors), 422)
    endpoint = store.create_endpoint(session, viewer.account_id, EndpointCreate(**data))
    return see(f"/endpoints/{endpoint.id}/", "created")


def endpoint_page_response(
    request: Request,
    session: Session,
    endpoint: Endpoint,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
    **results: Any,
) -> Response:
    """The endpoint's page, with what a form just did (``results``) where it belongs.

    ``results``: ``test_result`` or ``test_error`` (Send test event),
    ``recovered`` or ``recover_errors`` (Recover since…), with the values sent.
    """
    now = utcnow()
    breaker = breaker_of(request, endpoint.origin)
    context = {
        "endpoint": endpoint,
        "reveal": request.query_params.get("reveal") == "secret",
        "notice": notice(request),
        "breaker": breaker,
        "stats": [
            {
                "label": label,
                "stats": endpoint_stats.window_stats(
                    session, endpoint.id, window=int(span.total_seconds()), now=now, breaker=breaker
                ),
                "chart": bars_svg(
                    [
                        Bucket(*bucket)
                        for bucket in endpoint_series.series(
                            session, endpoint.id, until=now, span=span, buckets=buckets
                        )
                    ],
                    title=f"Attempts and failures, last {label}",
                    chart_id=f"chart-{key}",
                ),
            }
            for key, label, span, buckets in CHARTS
        ],
        "previous_until": EndpointPublic.model_validate(
            endpoint, from_attributes=True
        ).previous_secret_expires_at,
        "graces": GRACES,
        "test_types": EMAIL_TYPES,
        "can_test": True,
        "can_recover": True,
        "can_rotate": True,
        "recovered": None,
        "recover_errors": {},
        "recover_values": {},
        **_form_context(endpoint, values, errors),
        **results,
    }
    return page(request, "endpoint.html", context, status_code)


def breaker_of(request: Request, origin: str) -> BreakerView:
    """The breaker of ``origin`` as ``stats/`` reports it (``unknown``: no answer in time)."""
    dispatcher = request.app.state.dispatcher
    state = None if dispatcher is None else dispatcher.breaker(origin, BREAKER_TIMEOUT)
    return state if state in ("closed", "open", "half_open") else "unknown"


@router.get("/endpoints/{endpoint_id}/")
def endpoint_page(
    endpoint_id: str, request: Request, viewer: ViewerDep, session: SessionDep
) -> Response:
    """One endpoint: its settings (editable), its state, its secret behind "Reveal"."""
    endpoint = store.get_endpoint(session, viewer.account_id, endpoint_id)
    return endpoint_page_response(request, session, endpoint)


@router.post("/endpoints/{endpoint_id}/")
def save_endpoint(
    endpoint_id: str,
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """Save the edit form (URL, event types, rate limit), as a PATCH of those fields."""
    endpoint = store.get_endpoint(session, viewer.account_id, endpoint_id)
    form = form_of(request)
    try:
        data = _endpoint_changes(form, settings, EndpointPatch)
    except forms.FormErrors as exc:
        values = _submitted(form)
        return endpoint_page_response(
            request, session, endpoint, values=values, errors=exc.errors, status_code=422
        )
    store.update_endpoint(session, viewer.account_id, endpoint_id, data)
    _forget(request, endpoint_id)
    return see(f"/endpoints/{endpoint_id}/", "saved")


@router.post("/endpoints/{endpoint_id}/enabled/")
def set_enabled(
    endpoint_id: str, request: Request, viewer: ViewerDep, session: SessionDep
) -> Response:
    """Enable or disable the endpoint (``enabled`` is ``true`` or ``false``)."""
    enabled = forms.text(form_of(request), "enabled") == "true"
    store.update_endpoint(session, viewer.account_id, endpoint_id, {"enabled": enabled})
    _forget(request, endpoint_id)
    return see(f"/endpoints/{endpoint_id}/", "enabled" if enabled else "disabled")


@router.get("/endpoints/{endpoint_id}/delete/")
def delete_page(
    endpoint_id: str, request: Request, viewer: ViewerDep, session: SessionDep
) -> Response:
    """Ask before deleting: what goes, and a button that does it."""
    endpoint = store.get_endpoint(session, viewer.account_id, endpoint_id)
    return page(request, "endpoint_delete.html", {"endpoint": endpoint})


@router.post("/endpoints/{endpoint_id}/delete/")
def delete_endpoint(
    endpoint_id: str, request: Request, viewer: ViewerDep, session: SessionDep
) -> Response:
    """Delete the endpoint; its open deliveries are cancelled, as through the API."""
    store.delete_endpoint(session, viewer.account_id, endpoint_id)
    _forget(request, endpoint_id)
    return see("/endpoints/", "deleted")
