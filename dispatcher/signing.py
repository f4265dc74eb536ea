"""Endpoint secrets and Standard Webhooks signatures.

Every delivery carries ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` as the Standard Webhooks specification defines them, so
any receiver can verify with the ``standardwebhooks`` package or Svix's
libraries. The HMAC itself is the package's; this module only fixes how we
call it. Time and randomness come in as arguments.
"""

from __future__ import annotations

import base64
import functools
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret(raw: bytes | None = None) -> str:
    """Return a fresh endpoint secret, ``whsec_`` + base64 of 32 random bytes."""
    if raw is None:
        raw = secrets.token_bytes(SECRET_BYTES)
    return SECRET_PREFIX + base64.b64encode(raw).decode("ascii")


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
