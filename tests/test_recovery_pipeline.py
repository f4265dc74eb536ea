"""When deliveries fail, with a real Ray and real HTTPS receivers on loopback.

A receiver down for a while, then up: the log shows the failures with the
receiver's own answers; a retry reaches it again, signed afresh with the same
``webhook-id``; and an endpoint disabled while events came gets every one of
them, once, after it is enabled and recovered.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from tests.receivers import Receiver, Receivers, ok, wait_until
from tests.test_pipeline import Api, event, receivers, start  # noqa: F401 - fixtures

pytestmark = pytest.mark.ray

ENDPOINTS = "/api/emails/webhook-endpoints/"
LOG = "/api/emails/deliveries/"


async def down(_n: int, _request: web.Request) -> web.StreamResponse:
    return web.Response(status=503, text='{"error": "maintenance"}')


def log(api: Api, **params: Any) -> list[dict[str, Any]]:
    response = api.client.get(LOG, params=params, headers=api.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


def verified(receiver: Receiver, secret: str) -> list[tuple[str, int, dict[str, Any]]]:
    """Every request the receiver got, verified: its webhook-id, timestamp and payload."""
    with receiver.lock:
        received = list(receiver.received)
    return [
        (
            r.headers["webhook-id"],
            int(r.headers["webhook-timestamp"]),
            Webhook(secret).verify(r.body, r.headers),
        )
        for r in received
    ]


def test_failures_are_logged_with_the_answer_and_a_retry_reaches_the_receiver_again(
    start: Any,  # noqa: F811 - the fixtures imported above
    receivers: Receivers,  # noqa: F811
) -> None:
    # Two attempts each: four failures in a row stay under the breaker's five, which
    # would park the host for a growing cool-down.
    api: Api = start(retry_schedule="0,0.2")
    receiver = receivers.start(down)
    endpoint = api.register(receiver, ["opened"])
    (failed_id, kept_id) = api.post(event(), event())["accepted"]
    wait_until(lambda: len(log(api, status="failed")) == 2, timeout=60)
    items = log(api, endpoint_id=endpoint["id"])
    assert {i["event_id"] for i in items} == {failed_id, kept_id}
    for item in items:
        assert item["attempt_count"] == 2  # the whole (compressed) schedule
        assert item["last_attempt"]["status_code"] == 503
        assert item["last_attempt"]["response_body"] == '{"error": "maintenance"}'
    detail = api.client.get(f"{LOG}{items[0]['id']}/", headers=api.headers).json()
    assert len(detail["attempts"]) == 2

    receiver.behaviour = ok  # the receiver is back
    before = receiver.count()
    time.sleep(1.1)  # a later second: the timestamp signed must differ
    by_event = {i["event_id"]: i for i in items}
    retried = api.client.post(f"{LOG}{by_event[failed_id]['id']}/retry/", headers=api.headers)
    assert retried.status_code == 202, retried.text
    wait_until(lambda: log(api, event_id=failed_id)[0]["status"] == "succeeded", timeout=60)
    assert receiver.count() == before + 1
    first, *_, last = [v for v in verified(receiver, endpoint["secret"]) if v[0] == failed_id]
    assert last[1] > first[1]  # signed afresh, same webhook-id
    assert last[2]["id"] == failed_id
    assert log(api, event_id=kept_id)[0]["status"] == "failed"  # only the one retried

    # A succeeded delivery is sent again too: a manual resend is never deduplicated.
    again = api.client.post(f"{LOG}{by_event[failed_id]['id']}/retry", headers=api.headers)
    assert again.status_code == 202
    wait_until(lambda: receiver.count() == before + 2, timeout=60)
    wait_until(lambda: log(api, event_id=failed_id)[0]["status"] == "succeeded", timeout=60)
    assert log(api, event_id=failed_id)[0]["attempt_count"] == 4


def test_disable_post_enable_recover_delivers_each_event_once(
    start: Any,  # noqa: F811 - the fixtures imported above
    receivers: Receivers,  # noqa: F811
) -> None:
    api: Api = start()
    receiver = receivers.start()
    endpoint = api.register(receiver, ["opened", "bounced"])
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    path = f"{ENDPOINTS}{endpoint['id']}/"
    assert api.client.patch(path, json={"enabled": False}, headers=api.headers).status_code == 200
    missed = api.post(event("opened"), event("bounced"), event("opened"))["accepted"]
    assert api.client.patch(path, json={"enabled": True}, headers=api.headers).status_code == 200
    time.sleep(0.5)
    assert receiver.count() == 0  # enabling alone replays nothing
    response = api.client.post(f"{path}recover/", json={"since": since}, headers=api.headers)
    assert response.status_code == 202, response.text
    assert response.json() == {"deliveries": 3}
    wait_until(lambda: receiver.count() >= 3, timeout=60)
    wait_until(lambda: len(log(api, status="succeeded")) == 3, timeout=60)
    again = api.client.post(f"{path}recover", json={"since": since}, headers=api.headers)
    assert again.json() == {"deliveries": 0}
    time.sleep(0.5)
    ids = [json.loads(body)["id"] for body in receiver.bodies()]
    assert Counter(ids) == Counter(missed)  # every one, once
