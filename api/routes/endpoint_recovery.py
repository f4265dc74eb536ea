"""``/api/emails/webhook-endpoints/{id}/recover/`` and ``.../test/``: after a failure.

Recover makes deliveries again for a window of events an endpoint missed;
test sends it one example event now, through the dispatcher's own signing
and transport. Both are declared on the endpoints' resource path, in a module
of their own.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Body, Request, status
from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from starlette.concurrency import run_in_threadpool

from api.deps import AccountDep, DispatcherDep, SessionDep, SettingsDep
from api.errors import ErrorMessage
from api.routing import Responses, not_found, resource_router
from dispatcher.probe import (
    ProbeIn,
    ProbeLimiter,
    ProbeResult,
    probe_job,
    probe_payload,
    send_probe,
)
from dispatcher.settings import USER_AGENT
from models import endpoints as endpoints_store
from models import recovery
from models.base import utcnow
from models.errors import Conflict, InvalidInput, TooMany
from models.events import Instant

router = resource_router("/api/emails/webhook-endpoints", "webhook endpoints")

MAX_WINDOW = timedelta(days=14)
NOT_FOUND = not_found("endpoint")


class RecoverIn(BaseModel):
    """The window of events to recover: ``since`` (inclusive) to ``until`` (now if left out)."""

    model_config = ConfigDict(extra="forbid")

    since: Instant = PydanticField(
        description="Events accepted at or after this time (RFC 3339; no offset means UTC).",
        examples=["2026-04-01T00:00:00Z"],
    )
    until: Instant | None = PydanticField(
        default=None,
        description="Events accepted before this time; now when left out. At most 14 days"
        " after `since`.",
        examples=["2026-04-02T00:00:00Z"],
    )


class Recovered(BaseModel):
    """How many deliveries were reopened or created, all committed."""

    deliveries: int = PydanticField(examples=[1280])


def _json(example: Any) -> dict[str, Any]:
    return {"content": {"application/json": {"example": example}}}


_DISABLED: Responses = {
    409: {
        "model": ErrorMessage,
        "description": "The endpoint is disabled: enable it first, then recover.",
        **_json({"detail": "the endpoint is disabled: enable it first, then recover"}),
    }
}
_TOO_MANY: Responses = {
    429: {
        "model": ErrorMessage,
        "description": "Over 10 test events in a minute to this endpoint; retry after"
        " `Retry-After` seconds.",
        "headers": {
            "Retry-After": {
                "description": "Seconds until a test event is taken again.",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
        **_json({"detail": "at most 10 test events a minute per endpoint"}),
    }
}


@router.post(
    "/{endpoint_id}/recover/",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Recovered,
    responses={**NOT_FOUND, **_DISABLED, 202: _json({"deliveries": 1280})},
)
def recover_endpoint(
    endpoint_id: str,
    body: RecoverIn,
    account: AccountDep,
    session: SessionDep,
    dispatcher: DispatcherDep,
) -> Recovered:
    """Deliver again what the endpoint missed in a window of at most 14 days.

    For every event of the account accepted in the window, of a type the
    endpoint subscribes to now, with no succeeded delivery to it: a failed or
    cancelled delivery is reopened, or one is created where none exists (events
    that came while the endpoint was disabled, types it subscribed to later).
    Deliveries still open are left alone, so calling again creates nothing new.
    They are low priority: live bounces and unsubscribes go first. Enabling
    an endpoint does not replay by itself; this does. Answered once committed.
    """
    now = utcnow()
    until = body.until or now
    if body.since >= until:
        raise InvalidInput(("body", "since"), "must be before until (which defaults to now)")
    if until - body.since > MAX_WINDOW:
        raise InvalidInput(("body", "until"), "the window may be at most 14 days after since")
    endpoint = endpoints_store.get_endpoint(session, account.id, endpoint_id)
    if not endpoint.enabled:
        raise Conflict("the endpoint is disabled: enable it first, then recover")
    made = recovery.recover(session, endpoint, since=body.since, until=until, now=now)
    if made and dispatcher is not None:
        dispatcher.wake()
    return Recovered(deliveries=made)


@router.post(
    "/{endpoint_id}/test/",
    response_model=ProbeResult,
    responses={
        **NOT_FOUND,
        **_TOO_MANY,
        200: _json(
            {
                "delivered": False,
                "status_code": 401,
                "error": "HTTP 401",
                "duration_ms": 38,
                "response_body": '{"error": "invalid signature"}',
            }
        ),
    },
)
async def send_test_event(
    request: Request,
    endpoint_id: str,
    account: AccountDep,
    session: SessionDep,
    settings: SettingsDep,
    body: Annotated[ProbeIn | None, Body(examples=[{"type": "opened"}])] = None,
) -> ProbeResult:
    """Send the endpoint one example event now, and say how that one attempt went.

    The event has the seven public fields (an `id` starting with `test_`,
    recipient `test@example.com`) and is signed and sent exactly as a delivery
    is: same headers, SSRF guard and timeout. It is not stored and not retried,
    and works on a disabled endpoint too, to check a fix before enabling it.
    At most 10 a minute per endpoint (counted per API process).
    """
    endpoint = await run_in_threadpool(
        endpoints_store.get_endpoint, session, account.id, endpoint_id
    )
    limiter: ProbeLimiter = request.app.state.probes
    wait = limiter.take(endpoint.id, time.monotonic())
    if wait is not None:
        raise TooMany("at most 10 test events a minute per endpoint", retry_after=wait)
    now = utcnow()
    event_id, payload = probe_payload((body or ProbeIn()).type, now)
    job = probe_job(
        endpoint_id=endpoint.id,
        url=endpoint.url,
        origin=endpoint.origin,
        secret=endpoint.secret,
        rate_limit=endpoint.rate_limit,
        event_id=event_id,
        body=payload,
        previous_secret=endpoint.signing_previous(now),
        headers=endpoint.headers,
    )
    # Built as the delivery actors build theirs (dispatcher.actors.DeliveryActor); imported
    # here, so that API processes load the machinery only once they send a test event.
    from dispatcher.transport import AddressPolicy, HttpTransport

    guard = AddressPolicy(allow_private=settings.dev, allowed_networks=settings.networks())
    transport = HttpTransport(guard, ca_bundle=settings.ca_bundle, limit=1)
    try:
        return await send_probe(
            transport,
            job,
            now,
            user_agent=USER_AGENT,
            attempt_timeout=settings.attempt_timeout,
        )
    finally:
        await transport.close()
