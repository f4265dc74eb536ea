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


def signature_headers(secret: str, msg_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent as ``msg_id`` at ``at``.

    ``body`` must be exactly the bytes that go on the wire: the signature covers
    them, and a receiver verifies against what it read.
    """
    if at.tzinfo is None:
        raise ValueError("signing time must be timezone-aware")
    at = at.astimezone(UTC)
    signature: str = _webhook(secret).sign(msg_id, at, body.decode("utf-8"))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def signed_request(job: Job, at: datetime, *, user_agent: str, timeout: float) -> Request:
    """The HTTP request of one attempt of ``job`` at ``at``: its body, signed afresh.

    Every attempt goes out through here, the test event included, so that what a
    receiver gets (headers, signature, timeout) is the same whatever sent it.
    """
    headers = {
        "content-type": "application/json",
        "user-agent": user_agent,
        **signature_headers(job.secret, job.event_id, at, job.body),
    }
    return Request(job.url, job.body, headers, timeout)
