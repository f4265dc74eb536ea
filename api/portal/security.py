"""How every portal page is served: :class:`PortalRoute` and the :data:`ViewerDep` dependency.

By construction, for every route declared on ``pages.router``:

- a request that changes anything (any method but GET and HEAD) must carry the
  session's CSRF token in its form (``csrf_token``), or it is refused with 403
  before its handler runs; the session cookie is ``SameSite=Strict`` as well,
  so a foreign site's form does not even carry it;
- a page that needs a session (every page but the link's) answers 401, in
  words, without one;
- an id the account does not own (``NotFound`` from the models) answers the
  HTML 404 page, as the API answers its JSON 404;
- every answer forbids framing, scripts and caching
  (:data:`SECURITY_HEADERS`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from api.portal.links import COOKIE, CSRF_FIELD, PREFIX
from models import portal_sessions
from models.base import utcnow
from models.errors import NotFound

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

SAFE_METHODS = frozenset({"GET", "HEAD"})
SECURITY_HEADERS = {
    # No script at all: the pages work without one. Styles only from our own folder.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The link's URL holds its token, and pages hold secrets: tell nobody where we were.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the signed-in account and the CSRF token its forms carry."""

    account_id: str
    account_name: str
    csrf_token: str


class SignedOut(Exception):
    """No live portal session in the request's cookie."""


class CsrfRefused(Exception):
    """A state-changing request without its session's CSRF token."""


def page(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    """``template`` rendered for ``request``, with the viewer (if any) in its context."""
    viewer = getattr(request.state, "viewer", None)
    return templates.TemplateResponse(
        request, template, {"viewer": viewer, **(context or {})}, status_code=status_code
    )


# What a redirect may ask a page to say: only these sentences, never text from the URL.
NOTICES = {
    "created": "Endpoint created.",
    "saved": "Changes saved.",
    "enabled": "Endpoint enabled. Events from now on are delivered to it.",
    "disabled": "Endpoint disabled. Nothing is delivered to it until you enable it again.",
    "deleted": "Endpoint deleted.",
    "retried": "Retry scheduled: one more attempt is made now. Reload to see it.",
}


def see(path: str, notice: str | None = None) -> RedirectResponse:
    """Where a form's result is shown, under the portal (303: the browser follows with a GET)."""
    return RedirectResponse(PREFIX + path + (f"?notice={notice}" if notice else ""), 303)


def notice(request: Request) -> str | None:
    """The sentence a redirect asked the page to say, if it is one of :data:`NOTICES`."""
    return NOTICES.get(request.query_params.get("notice", ""))


def form_of(request: Request) -> FormData:
    """The form of a state-changing request (read and checked by :class:`PortalRoute`)."""
    form: FormData = request.state.form
    return form


def _look_up(request: Request, token: str) -> portal_sessions.Signed | None:
    with Session(request.app.state.reader) as session:
        return portal_sessions.signed_in(session, token, now=utcnow())


async def get_viewer(request: Request) -> Viewer:
    """The signed-in viewer; :class:`SignedOut` (a 401 page) without a live session."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignedOut
    signed = await run_in_threadpool(_look_up, request, token)
    if signed is None:
        raise SignedOut
    viewer = Viewer(
        account_id=signed.account_id,
        account_name=signed.account_name,
        csrf_token=portal_sessions.csrf_token(token),
    )
    request.state.viewer = viewer
    return viewer


ViewerDep = Annotated[Viewer, Depends(get_viewer)]


class PortalRoute(APIRoute):
    """A portal page: CSRF checked before the handler, errors as pages, security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def portal_handler(request: Request) -> Response:
            try:
                if request.method not in SAFE_METHODS:
                    request.state.form = await request.form()
                    _check_csrf(request, request.state.form)
                response = await handler(request)
            except SignedOut:
                response = page(request, "signed_out.html", status_code=401)
            except CsrfRefused:
                response = page(request, "csrf.html", status_code=403)
            except NotFound as exc:
                response = page(request, "not_found.html", {"what": exc.resource}, 404)
            response.headers.update(SECURITY_HEADERS)
            return response

        return portal_handler


def _check_csrf(request: Request, form: FormData) -> None:
    token = request.cookies.get(COOKIE)
    given = form.get(CSRF_FIELD)
    if not token or not isinstance(given, str) or not portal_sessions.csrf_matches(token, given):
        raise CsrfRefused
