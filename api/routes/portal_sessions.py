"""``/api/emails/portal-sessions/``: mint a single-use link into the customer portal."""

from __future__ import annotations

from fastapi import Request, status

from api.deps import AccountDep, SessionDep, SettingsDep
from api.portal.links import link_url
from api.routing import resource_router
from models import portal_sessions as store
from models.base import utcnow
from models.portal_sessions import PortalLink

router = resource_router("/api/emails/portal-sessions", "portal")


@router.post("/", status_code=status.HTTP_201_CREATED, response_model=PortalLink)
def create_portal_session(
    request: Request, account: AccountDep, session: SessionDep, settings: SettingsDep
) -> PortalLink:
    """A link into the portal for the caller's account: single-use, valid for 10 minutes.

    Opening it in a browser starts a portal session of 8 hours (an HttpOnly,
    SameSite=Strict cookie) and the link stops working. Mint one per visit, at
    the moment the customer asks for it; never send it by email.
    """
    token, expires = store.mint_link(session, account.id, now=utcnow())
    base = settings.public_url or str(request.base_url)
    return PortalLink(url=link_url(base, token), expires_at=expires)
