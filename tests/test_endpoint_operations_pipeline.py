"""Endpoint operations end to end: a real Ray, real HTTPS receivers on loopback.

Rotation verified with ``standardwebhooks`` at the receiver during and after a
(shortened) grace period; custom headers as received; statistics equal to the
attempt rows after a mixed run, with the dispatcher's breaker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlmodel import Session, col
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from models.deliveries import Attempt, Delivery
from tests.receivers import Receivers, fail_first, ok, status, wait_until
from tests.test_pipeline import Api, event, receivers, start

pytestmark = pytest.mark.ray

__all__ = ["receivers", "start"]  # the fixtures, used by name

ENDPOINTS = "/api/emails/webhook-endpoints/"


def test_rotation_signs_with_both_secrets_during_the_grace_then_with_the_new_one(
    start: Callable[..., Api], receivers: Receivers
) -> None:
    api = start()
    receiver = receivers.start()
    endpoint = api.register(receiver, ["opened"])
    old = endpoint["secret"]
    response = api.client.post(
        f"{ENDPOINTS}{endpoint['id']}/rotate-secret/", json={"grace_seconds": 3},
        headers=api.headers,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    new = response.json()["secret"]
    expires = datetime.fromisoformat(response.json()["previous_secret_expires_at"])

    api.post(event("opened"))
    wait_until(lambda: receiver.count() == 1)
    during = receiver.received[0]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(during.body, during.headers)["id"]
    assert Webhook(old).verify(during.body, during.headers)["id"]

    wait_until(lambda: datetime.now(UTC) > expires, timeout=10)
    api.post(event("opened"))
    wait_until(lambda: receiver.count() == 2)
    after = receiver.received[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert Webhook(new).verify(after.body, after.headers)["id"]
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)


def test_custom_headers_arrive_as_set(start: Callable[..., Api], receivers: Receivers) -> None:
    api = start()
    receiver = receivers.start()
    custom = {"Authorization": "Bearer 8c1f0b5e", "X-Tenant": "acme", "X-Empty": ""}
    endpoint = api.register(receiver, ["opened", "bounced"], headers=custom)
    api.post(event("opened"))
    wait_until(lambda: receiver.count() == 1)
    changed = {"X-Tenant": "globex"}
    api.client.patch(
        f"{ENDPOINTS}{endpoint['id']}/", json={"headers": changed}, headers=api.headers
    )
    api.post(event("bounced"))
    wait_until(lambda: receiver.count() == 2)
    first, second = receiver.received
    for name, value in custom.items():
        assert first.headers[name] == value
    assert second.headers["X-Tenant"] == "globex"
    assert "Authorization" not in second.headers
    assert Webhook(endpoint["secret"]).verify(second.body, second.headers)


def test_stats_equal_the_attempt_rows_after_a_mixed_run(
    start: Callable[..., Api], receivers: Receivers
) -> None:
    api = start()
    flaky = receivers.start(fail_first(5, 503))
    endpoint = api.register(flaky, ["opened"])
    api.post(*[event("opened") for _ in range(8)])
    wait_until(lambda: api.statuses().get("succeeded") == 8, timeout=60)
    response = api.client.get(f"{ENDPOINTS}{endpoint['id']}/stats/", headers=api.headers)
    assert response.status_code == 200, response.text
    stats = response.json()
    with Session(api.engine) as session:
        rows = list(
            session.execute(
                select(Attempt)
                .join(Delivery, col(Delivery.id) == col(Attempt.delivery_id))
                .where(col(Delivery.endpoint_id) == endpoint["id"])
            ).scalars()
        )
    ok = [a for a in rows if a.status_code == 200]
    failed = [a for a in rows if a.status_code != 200]
    assert (stats["attempts"], stats["succeeded"], stats["failed"]) == (
        len(rows), len(ok), len(failed),
    )  # fmt: skip
    assert (len(ok), len(failed)) == (8, 5)
    assert datetime.fromisoformat(stats["last_success_at"]) == max(a.at for a in ok)
    last = max(failed, key=lambda a: a.at)
    assert stats["last_failure"]["status_code"] == 503
    assert datetime.fromisoformat(stats["last_failure"]["at"]) == last.at
    assert stats["pending"] == 0
    assert stats["p50_ms"] is not None
    assert stats["p95_ms"] >= stats["p50_ms"]
    # The dispatcher answers for the host's breaker (five failures in a row opened it; what
    # it is now depends on when the probe and the results in flight came back).
    assert stats["breaker"] in {"closed", "open", "half_open"}
    assert json.loads(flaky.bodies()[-1])["type"] == "opened"


def kinds(receiver_bodies: list[bytes]) -> list[str]:
    return [json.loads(body)["type"] for body in receiver_bodies]


def test_a_failing_endpoint_is_announced_once_per_run_of_failures(
    start: Callable[..., Api], receivers: Receivers
) -> None:
    # Two attempts an event, the second past failing_after; never five failures in a row,
    # which would open the host's breaker and park the retries.
    api = start(failing_after=0.5, retry_schedule="0,1")
    down = receivers.start(status(500))
    ops = receivers.start()
    troubled = api.register(down, ["opened", "endpoint.failing"])
    watcher = api.register(ops, ["endpoint.failing", "endpoint.disabled"])

    api.post(event("opened"))
    wait_until(lambda: ops.count() == 1, timeout=60)
    # The same run goes on: more failures, no more word.
    api.post(event("opened"))
    wait_until(lambda: api.statuses().get("failed") == 2, timeout=60)
    assert ops.count() == 1
    [word] = ops.received
    payload = Webhook(watcher["secret"]).verify(word.body, word.headers)
    assert payload["type"] == "endpoint.failing"
    assert payload["endpoint_id"] == troubled["id"]
    assert payload["url"] == down.url
    assert payload["last_error"]["status_code"] == 500
    assert set(payload) == {"id", "type", "endpoint_id", "url", "reason", "last_error", "timestamp"}
    assert kinds(down.bodies()) == ["opened"] * down.count()  # never told of itself

    # A success ends the run; the next run is announced again.
    down.behaviour = ok
    api.post(event("opened"))
    wait_until(lambda: api.statuses().get("succeeded", 0) >= 2, timeout=60)  # and the word
    down.behaviour = status(500)
    api.post(event("opened"))
    wait_until(lambda: ops.count() == 2, timeout=60)
    assert kinds(ops.bodies()) == ["endpoint.failing", "endpoint.failing"]


def test_410_gone_is_announced_as_endpoint_disabled(
    start: Callable[..., Api], receivers: Receivers
) -> None:
    api = start()
    gone = receivers.start(status(410))
    ops = receivers.start()
    troubled = api.register(gone, ["bounced"])
    watcher = api.register(ops, ["endpoint.disabled"])
    api.post(event("bounced"))
    wait_until(lambda: ops.count() == 1, timeout=60)
    word = ops.received[0]
    payload = Webhook(watcher["secret"]).verify(word.body, word.headers)
    assert payload["type"] == "endpoint.disabled"
    assert payload["endpoint_id"] == troubled["id"]
    assert "410" in payload["reason"]
    assert payload["last_error"]["status_code"] == 410
    assert api.endpoint(troubled["id"])["enabled"] is False
