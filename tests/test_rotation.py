"""Secret rotation: the call, what a claim carries during and after the grace, both signatures."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from dispatcher.signing import signature_headers, signed_request
from models import endpoints
from models.endpoints import Endpoint, new_secret
from models.jobs import Job
from tests.test_scheduler import claim, make_account, make_endpoint, make_events

BASE = "/api/emails/webhook-endpoints/"
URL = "https://yourapp.com/webhooks/sentinmail"
BODY = b'{"id":"evt-1","type":"opened"}'


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def create(client: TestClient, key: str) -> dict[str, Any]:
    response = client.post(BASE, json={"url": URL, "events": ["opened"]}, headers=auth(key))
    assert response.status_code == 201
    return dict(response.json())


def rotate(
    client: TestClient, key: str, endpoint_id: str, body: Any = None, slash: str = "/"
) -> Any:
    path = f"{BASE}{endpoint_id}/rotate-secret{slash}"
    if body is None:
        return client.post(path, headers=auth(key))
    return client.post(path, json=body, headers=auth(key))


# --- signing ---------------------------------------------------------------------------------


def test_two_secrets_sign_the_new_ones_first_and_both_verify() -> None:
    old, new = new_secret(), new_secret()
    at = datetime.now(UTC)
    headers = signature_headers(new, "evt-1", at, BODY, previous_secret=old)
    first, second = headers["webhook-signature"].split(" ")
    assert first == signature_headers(new, "evt-1", at, BODY)["webhook-signature"]
    assert second == signature_headers(old, "evt-1", at, BODY)["webhook-signature"]
    assert Webhook(new).verify(BODY, headers) == {"id": "evt-1", "type": "opened"}
    assert Webhook(old).verify(BODY, headers) == {"id": "evt-1", "type": "opened"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_without_a_previous_secret_one_signature() -> None:
    secret = new_secret()
    job = Job(1, "evt-1", "ep", "https://a.example/", "o", secret, None, 1, 0, BODY)
    headers = dict(signed_request(job, datetime.now(UTC), user_agent="ua", timeout=1).headers)
    assert " " not in headers["webhook-signature"]
    assert Webhook(secret).verify(BODY, headers)


# --- the claim: the previous secret while its grace lasts ----------------------------------


def test_a_job_carries_the_previous_secret_only_during_the_grace(engine: Engine) -> None:
    account = make_account(engine)
    hook = make_endpoint(engine, account)
    with Session(engine) as session:
        before = endpoints.get_endpoint(session, account, hook).secret
    now = datetime.now(UTC)
    with Session(engine) as session:
        rotated = endpoints.rotate_secret(
            session, account, hook, grace=timedelta(hours=1), secret=None, now=now
        )
        after = rotated.secret
    assert after != before
    make_events(engine, account, "opened", "clicked")
    during = claim(engine, now + timedelta(minutes=59), limit=1)
    assert (during[0].secret, during[0].previous_secret) == (after, before)
    past = claim(engine, now + timedelta(hours=1), limit=1)
    assert (past[0].secret, past[0].previous_secret) == (after, None)


# --- the API ---------------------------------------------------------------------------------


def test_rotation_answers_the_endpoint_with_its_new_secret_and_the_grace_end(
    client: TestClient, api_key: str
) -> None:
    endpoint = create(client, api_key)
    started = datetime.now(UTC)
    response = rotate(client, api_key, endpoint["id"], {"grace_seconds": 3600})
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["id"] == endpoint["id"]
    assert rotated["secret"] != endpoint["secret"]
    assert rotated["secret"].startswith("whsec_")
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert started + timedelta(seconds=3599) <= expires <= datetime.now(UTC) + timedelta(hours=1)
    shown = client.get(f"{BASE}{endpoint['id']}/", headers=auth(api_key)).json()
    assert shown["secret"] == rotated["secret"]
    assert shown["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]


def test_the_default_grace_is_a_day_and_no_body_is_needed(client: TestClient, api_key: str) -> None:
    endpoint = create(client, api_key)
    bodies: list[dict[str, Any] | None] = [None, {}]
    for body in bodies:
        rotated = rotate(client, api_key, endpoint["id"], body, slash="")
        assert rotated.status_code == 200, rotated.text
        expires = datetime.fromisoformat(rotated.json()["previous_secret_expires_at"])
        assert abs(expires - datetime.now(UTC) - timedelta(days=1)) < timedelta(minutes=1)


def test_grace_zero_drops_the_old_secret_at_once(
    client: TestClient, api_key: str, engine: Engine
) -> None:
    endpoint = create(client, api_key)
    rotate(client, api_key, endpoint["id"], {"grace_seconds": 3600})
    rotated = rotate(client, api_key, endpoint["id"], {"grace_seconds": 0}).json()
    assert rotated["previous_secret_expires_at"] is None
    assert stored(engine, rotated["id"]).previous_secret is None


def stored(engine: Engine, endpoint_id: str) -> Endpoint:
    with Session(engine) as session:
        row = session.get(Endpoint, endpoint_id)
        assert row is not None
        return row


def test_rotating_again_keeps_only_the_two_latest_secrets(
    client: TestClient, api_key: str, engine: Engine
) -> None:
    endpoint = create(client, api_key)
    first = endpoint["secret"]
    second = rotate(client, api_key, endpoint["id"], {"grace_seconds": 3600}).json()["secret"]
    third = rotate(client, api_key, endpoint["id"], {"grace_seconds": 3600}).json()["secret"]
    assert len({first, second, third}) == 3
    row = stored(engine, endpoint["id"])
    assert (row.secret, row.previous_secret) == (third, second)


def test_the_customers_own_secret(client: TestClient, api_key: str) -> None:
    endpoint = create(client, api_key)
    for size in (24, 32, 64):
        own = "whsec_" + base64.b64encode(bytes(range(size))).decode()
        rotated = rotate(client, api_key, endpoint["id"], {"secret": own, "grace_seconds": 0})
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["secret"] == own
        Webhook(own)  # the package takes it


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"grace_seconds": -1}, ["body", "grace_seconds"]),
        ({"grace_seconds": 604801}, ["body", "grace_seconds"]),
        ({"grace_seconds": "60"}, ["body", "grace_seconds"]),
        ({"grace_seconds": 1.5}, ["body", "grace_seconds"]),
        ({"grace_seconds": None}, ["body", "grace_seconds"]),
        ({"secret": None}, ["body", "secret"]),
        ({"secret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, ["body", "secret"]),
        ({"secret": "whsec_" + base64.b64encode(bytes(23)).decode()}, ["body", "secret"]),
        ({"secret": "whsec_" + base64.b64encode(bytes(65)).decode()}, ["body", "secret"]),
        ({"secret": "whsec_" + "!" * 32}, ["body", "secret"]),
        ({"secret": "whsec_" + base64.b64encode(bytes(32)).decode() + "\n"}, ["body", "secret"]),
        ({"other": 1}, ["body", "other"]),
        ([], ["body"]),
    ],
)
def test_refused_rotations_are_422_naming_the_field(
    client: TestClient, api_key: str, body: Any, loc: list[str]
) -> None:
    endpoint = create(client, api_key)
    response = rotate(client, api_key, endpoint["id"], body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    shown = client.get(f"{BASE}{endpoint['id']}/", headers=auth(api_key)).json()
    assert shown["secret"] == endpoint["secret"]


def test_another_accounts_endpoint_is_404(client: TestClient, api_key: str, other_key: str) -> None:
    endpoint = create(client, api_key)
    assert rotate(client, other_key, endpoint["id"], {}).status_code == 404
    assert rotate(client, api_key, "no-such-id", {}).status_code == 404
    shown = client.get(f"{BASE}{endpoint['id']}/", headers=auth(api_key)).json()
    assert shown["secret"] == endpoint["secret"]


def test_a_whole_number_as_a_json_float_is_a_whole_number(client: TestClient, api_key: str) -> None:
    endpoint = create(client, api_key)
    rotated = rotate(client, api_key, endpoint["id"], {"grace_seconds": 60.0})
    assert rotated.status_code == 200, rotated.text
    expires = datetime.fromisoformat(rotated.json()["previous_secret_expires_at"])
    assert expires - datetime.now(UTC) <= timedelta(seconds=60)
