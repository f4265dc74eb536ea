"""Test events: one signed attempt to an endpoint, sent now, stored nowhere.

A customer checks an endpoint (a fix, a new secret) by having one example
event sent to it. It is built as a :class:`models.jobs.Job` (delivery id 0,
event id ``test_...``) and goes out through :func:`dispatcher.signing.signed_request`
and a :class:`dispatcher.transport.Transport` built as the delivery actors
build theirs, so the receiver gets exactly what a delivery would send: the
signature headers, the user agent, the SSRF guard and the attempt timeout.
It is classified as a delivery's attempt is (:func:`dispatcher.outcome.classify`),
and never retried.

:class:`ProbeLimiter` is the pure policy of how often: at most ``limit`` per
``window`` seconds per endpoint, in one process.

The API imports this module; the signing and transport code (the delivery
actors' machinery, which API processes otherwise never load) is imported
when the first test event is sent.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel
from pydantic import Field as PydanticField

from dispatcher.errors import TransportError
from dispatcher.outcome import Verdict, classify
from models.event_types import EmailEventType
from models.events import EventIn, payload_body
from models.jobs import Job

if TYPE_CHECKING:
    from dispatcher.transport import Transport

TEST_PREFIX = "test_"
TEST_RECIPIENT = "test@example.com"


class ProbeIn(BaseModel):
    """Body of a test event: its type (``delivered`` when left out)."""

    model_config = {"extra": "forbid"}

    type: EmailEventType = PydanticField(
        default=EmailEventType.DELIVERED,
        examples=["opened"],
        description="One of the five email types (an operational event cannot be tested).",
    )


class ProbeResult(BaseModel):
    """How the one attempt of a test event went."""

    delivered: bool = PydanticField(description="The receiver answered 2xx.")
    status_code: int | None = PydanticField(examples=[200])
    error: str | None = PydanticField(
        description="Why it failed, as a delivery's attempt would say; null when delivered.",
        examples=[None],
    )
    duration_ms: int = PydanticField(examples=[42])
    response_body: str | None = PydanticField(
        description="The first KiB of the answer as text (invalid UTF-8 replaced).",
        examples=["ok"],
    )


def probe_payload(
    event_type: EmailEventType, now: datetime, event_id: str | None = None
) -> tuple[str, str]:
    """The id and JSON body of a test event of ``event_type``: the seven public fields."""
    event_id = event_id or f"{TEST_PREFIX}{uuid.uuid4().hex}"
    event = EventIn(
        type=event_type,
        recipient=TEST_RECIPIENT,
        sent_email_id=f"{TEST_PREFIX}sent_email",
        campaign_id=f"{TEST_PREFIX}campaign",
        metadata={"user_agent": "Mozilla/5.0 (SentinMail test event)", "ip": "203.0.113.42"},
    )
    return event_id, payload_body(event, event_id, now)


def probe_job(
    *,
    endpoint_id: str,
    url: str,
    origin: str,
    secret: str,
    rate_limit: float | None,
    event_id: str,
    body: str,
    previous_secret: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Job:
    """The job of a test event: what a claimed delivery to this endpoint would carry.

    Custom headers and a rotation's previous secret included, so the test checks
    what a receiver will really get.
    """
    return Job(
        delivery_id=0,
        event_id=event_id,
        endpoint_id=endpoint_id,
        url=url,
        origin=origin,
        secret=secret,
        rate_limit=rate_limit,
        priority=0,
        attempts=0,
        body=body.encode(),
        previous_secret=previous_secret,
        headers=tuple((headers or {}).items()),
    )


async def send_probe(
    transport: Transport,  # dispatcher.transport's, imported when a test event is sent
    job: Job,
    at: datetime,
    *,
    user_agent: str,
    attempt_timeout: float,
) -> ProbeResult:
    """Attempt ``job`` once, signed at ``at``, within ``attempt_timeout`` seconds."""
    from dispatcher.signing import signed_request  # see the note on imports above

    started = time.monotonic()
    request = signed_request(job, at, user_agent=user_agent, timeout=attempt_timeout)
    try:
        response = await transport.send(request)
    except TransportError as exc:
        outcome = classify(None, {}, at, error=exc)
        end = time.monotonic()
        return ProbeResult(
            delivered=False,
            status_code=None,
            error=outcome.error,
            duration_ms=int((end - started) * 1000),
            response_body=None,
        )
    end = time.monotonic()
    outcome = classify(response.status, response.headers, at)
    return ProbeResult(
        delivered=outcome.verdict is Verdict.SUCCEEDED,
        status_code=response.status,
        error=outcome.error,
        duration_ms=int((end - started) * 1000),
        response_body=response.body_start.decode("utf-8", "replace"),
    )


@dataclass
class ProbeLimiter:
    """At most ``limit`` test events per ``window`` seconds per key (an endpoint id).

    A sliding window of the times taken, per key. Memory is bounded: at most
    ``max_keys`` keys are kept, and keys whose times have all left the window
    are dropped when that bound is reached.
    """

    limit: int = 10
    window: float = 60.0
    max_keys: int = 10_000
    _taken: dict[str, deque[float]] = field(default_factory=dict)

    def take(self, key: str, now: float) -> int | None:
        """Take one at ``now`` (seconds): None if allowed, else whole seconds until one is."""
        times = self._taken.get(key)
        if times is None:
            if len(self._taken) >= self.max_keys:
                self._forget_idle(now)
            times = self._taken[key] = deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            return max(1, math.ceil(times[0] + self.window - now))
        times.append(now)
        return None

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, t in self._taken.items() if not t or t[-1] <= now - self.window]
        for key in idle:
            del self._taken[key]
        if len(self._taken) >= self.max_keys:  # all busy: forget the oldest-started
            del self._taken[next(iter(self._taken))]
