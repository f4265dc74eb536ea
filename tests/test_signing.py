"""Secrets and signatures, verified by the standardwebhooks package itself."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from dispatcher.signing import signature_headers
from models.endpoints import new_secret

SECRET = new_secret(bytes(range(32)))
BODY = b'{"id":"evt-1","type":"opened"}'


def test_new_secret_format() -> None:
    assert "whsec_" + base64.b64encode(bytes(range(32))).decode() == SECRET
    assert new_secret() != new_secret()
    assert len(base64.b64decode(new_secret().removeprefix("whsec_"))) == 32


@pytest.mark.parametrize(
    ("zone", "age"),
    [
        (UTC, timedelta(0)),
        (timezone(timedelta(hours=5)), timedelta(0)),
        (UTC, timedelta(minutes=4)),
    ],
)
def test_headers_verify_with_standardwebhooks(zone: timezone, age: timedelta) -> None:
    # Computed here, not at collection: the verifier compares with the clock.
    at = datetime.now(zone) - age
    headers = signature_headers(SECRET, "evt-1", at, BODY)
    assert headers["webhook-id"] == "evt-1"
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(BODY, headers) == {"id": "evt-1", "type": "opened"}


@pytest.mark.parametrize(
    ("secret", "msg_id", "body"),
    [(new_secret(), "evt-1", BODY), (SECRET, "evt-2", BODY), (SECRET, "evt-1", BODY + b" ")],
    # Named: an id made of a random secret differs between xdist workers' collections.
    ids=["another-secret", "another-id", "another-body"],
)
def test_signature_fails_for_another_secret_id_or_body(
    secret: str, msg_id: str, body: bytes
) -> None:
    headers = signature_headers(SECRET, "evt-1", datetime.now(UTC), BODY)
    headers["webhook-id"] = msg_id
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        signature_headers(SECRET, "evt-1", datetime.now(), BODY)
