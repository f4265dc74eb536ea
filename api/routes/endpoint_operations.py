"""An endpoint's upkeep: ``/api/emails/webhook-endpoints/{id}/rotate-secret/`` and ``stats/``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import Query

from api.deps import AccountDep, DispatcherDep, DispatcherHandle, SessionDep
from api.routing import not_found, resource_router
from models import endpoint_stats
from models import endpoints as store
from models.base import utcnow
from models.endpoint_stats import BreakerView, EndpointStats
from models.endpoints import EndpointWithSecret, SecretRotation

router = resource_router("/api/emails/webhook-endpoints", "webhook endpoints")

NOT_FOUND = not_found("endpoint")
BREAKER_TIMEOUT = 1.0
"""Seconds a stats request waits for the dispatcher's view of the breaker."""
_BREAKERS = {"closed", "open", "half_open"}

_ROTATION_EXAMPLES: dict[str, Any] = {
    "default": {"summary": "A new secret; the old one signs too for 24 h", "value": {}},
    "grace": {"summary": "The old secret signs too for an hour", "value": {"grace_seconds": 3600}},
    "now": {"summary": "Drop the old secret at once", "value": {"grace_seconds": 0}},
    "own": {
        "summary": "Your own secret",
        "value": {"grace_seconds": 86400, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
    },
}
_STATS_EXAMPLE: dict[str, Any] = {
    "window_seconds": 86400,
    "attempts": 1520,
    "succeeded": 1498,
    "failed": 22,
    "success_rate": 0.9855,
    "p50_ms": 84,
    "p95_ms": 412,
    "last_success_at": "2026-04-02T14:30:00Z",
    "last_failure": {"at": "2026-04-02T13:02:11Z", "status_code": 503, "error": None},
    "pending": 3,
    "breaker": "closed",
}

Window = Annotated[
    int,
    Query(
        ge=endpoint_stats.MIN_WINDOW,
        le=endpoint_stats.MAX_WINDOW,
        description="Seconds back from now (60 s to 30 days); counted in whole minutes.",
        examples=[86400],
    ),
]


@router.post(
    "/{endpoint_id}/rotate-secret/",
    response_model=EndpointWithSecret,
    responses=NOT_FOUND,
    openapi_extra={
        "requestBody": {"content": {"application/json": {"examples": _ROTATION_EXAMPLES}}}
    },
)
def rotate_secret(
    endpoint_id: str,
    account: AccountDep,
    session: SessionDep,
    dispatcher: DispatcherDep,
    body: SecretRotation | None = None,
) -> EndpointWithSecret:
    """Give the endpoint a new secret; the current one keeps signing for ``grace_seconds``.

    Until ``previous_secret_expires_at`` every delivery's ``webhook-signature``
    carries two ``v1,`` signatures, the new secret's first, so receivers verify
    with either secret while they switch. Rotating again within the grace
    period drops the older secret: never more than two. Deliveries already in
    flight when the rotation commits may carry either set of signatures.
    """
    body = body or SecretRotation()
    endpoint = store.rotate_secret(
        session,
        account.id,
        endpoint_id,
        grace=timedelta(seconds=body.grace_seconds),
        secret=body.secret,
        now=utcnow(),
    )
    if dispatcher is not None:  # queued jobs carry the old secrets: they come back signed anew
        dispatcher.forget([endpoint_id])
    return EndpointWithSecret.model_validate(endpoint, from_attributes=True)


def _breaker(dispatcher: DispatcherHandle | None, origin: str) -> BreakerView:
    state = None if dispatcher is None else dispatcher.breaker(origin, BREAKER_TIMEOUT)
    return state if state in _BREAKERS else "unknown"  # type: ignore[return-value]


@router.get(
    "/{endpoint_id}/stats/",
    response_model=EndpointStats,
    responses={**NOT_FOUND, 200: {"content": {"application/json": {"example": _STATS_EXAMPLE}}}},
)
def get_endpoint_stats(
    endpoint_id: str,
    account: AccountDep,
    session: SessionDep,
    dispatcher: DispatcherDep,
    window: Window = endpoint_stats.DEFAULT_WINDOW,
) -> EndpointStats:
    """Attempts, success rate and latency over the window, and how the endpoint stands now.

    ``breaker`` is the dispatcher's circuit breaker for the endpoint's host, or
    ``unknown`` when the dispatcher does not answer within a second.
    """
    endpoint = store.get_endpoint(session, account.id, endpoint_id)
    return endpoint_stats.window_stats(
        session,
        endpoint.id,
        window=window,
        now=utcnow(),
        breaker=_breaker(dispatcher, endpoint.origin),
    )
