"""Where a portal link points, and the cookie it becomes once opened."""

from __future__ import annotations

PREFIX = "/portal"
ENTER = f"{PREFIX}/enter"
COOKIE = "sentinmail_portal"
CSRF_FIELD = "csrf_token"


def link_url(base: str, token: str) -> str:
    """The link a customer opens: ``base`` (the service's URL) and the link's token."""
    return f"{base.rstrip('/')}{ENTER}/{token}"
