"""Standard Webhooks signatures of a delivery.

Every delivery carries ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` as the Standard Webhooks specification defines them, so
any receiver can verify with the ``standardwebhooks`` package or Svix's
libraries. The HMAC itself is the package's; this module only fixes how we
call it. Time comes in as an argument.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from standardwebhooks import Webhook

from dispatcher.transport import Request
from models.jobs import Job


@functools.lru_cache(maxsize=4096)
def _webhook(secret: str) -> Webhook:
    # Decoding the secret costs more than the HMAC; a lane signs with few secrets.
    return Webhook(secret)


def signature_headers(
    secret: str, msg_id: str, at: datetime, body: bytes, previous_secret: str | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent as ``msg_id`` at ``at``.

    ``body`` must be exactly the bytes that go on the wire: the signature covers
    them, and a receiver verifies against what it read. With a ``previous_secret``
    (a rotation's grace period), ``webhook-signature`` carries two ``v1,``
    signatures, space-separated, the current secret's first: a receiver that
    still has the old secret verifies as well as one that has the new.
    """
    if at.tzinfo is None:
        raise ValueError("signing time must be timezone-aware")
    at = at.astimezone(UTC)
    text = body.decode("utf-8")
    signature: str = _webhook(secret).sign(msg_id, at, text)
    if previous_secret is not None:
        # Only during a grace period: signing twice costs a second HMAC.
        signature += " " + _webhook(previous_secret).sign(msg_id, at, text)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def signed_request(job: Job, at: datetime, *, user_agent: str, timeout: float) -> Request:
    """The HTTP request of one attempt of ``job`` at ``at``: its body, signed afresh.

    Every attempt goes out through here, the test event included, so that what a
    receiver gets (custom headers, signatures, timeout) is the same whatever sent it.
    """
    # The endpoint's own headers first: the API refuses the names set after them,
    # and these would win all the same.
    headers = {
        **dict(job.headers),
        "content-type": "application/json",
        "user-agent": user_agent,
        **signature_headers(job.secret, job.event_id, at, job.body, job.previous_secret),
    }
    return Request(job.url, job.body, headers, timeout)
