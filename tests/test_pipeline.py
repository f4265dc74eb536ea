"""The whole pipeline with a real Ray and real HTTPS receivers on loopback.

API -> outbox -> scheduler -> router -> delivery actors -> receivers -> recorded.
Settings are production ones (https only, SSRF guard on, 127.0.0.0/8 allowed,
a test CA trusted) with a compressed retry schedule and short leases.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from standardwebhooks import Webhook

from api.app import create_app
from dispatcher.launch import Dispatcher, start_dispatcher
from dispatcher.settings import USER_AGENT, Settings
from tests.conftest import delivery_statuses, make_key
from tests.receivers import Receiver, Receivers, fail_first, hang, ok, status, wait_until

pytestmark = pytest.mark.ray

ENDPOINTS = "/api/emails/webhook-endpoints/"
EVENTS = "/api/emails/events/"


@pytest.fixture(scope="module")
def receivers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receivers]:
    farm = Receivers(tmp_path_factory.mktemp("ca"))
    yield farm
    farm.close()


class Api:
    """The service as a customer and the email platform see it, plus its database."""

    def __init__(
        self, client: TestClient, key: str, engine: Engine, dispatcher: Dispatcher
    ) -> None:
        self.client = client
        self.headers = {"X-API-Key": key}
        self.engine = engine
        self.dispatcher = dispatcher

    def register(self, receiver: Receiver, events: list[str], **extra: Any) -> dict[str, Any]:
        body = {"url": receiver.url, "events": events, **extra}
        response = self.client.post(ENDPOINTS, json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"{ENDPOINTS}{endpoint_id}/", headers=self.headers).json())

    def post(self, *events: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(EVENTS, json=list(events), headers=self.headers)
        assert response.status_code == 202, response.text
        return dict(response.json())

    def event(self, event_id: str) -> dict[str, Any]:
        response = self.client.get(f"{EVENTS}{event_id}/", headers=self.headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def statuses(self) -> dict[str, int]:
        return delivery_statuses(self.engine)


def event(type_: str = "opened", **fields: Any) -> dict[str, Any]:
    return {"type": type_, "recipient": "user@example.com", **fields}


@pytest.fixture
def start(
    ray_cluster: None, database_url: str, engine: Engine, receivers: Receivers
) -> Iterator[Callable[..., Api]]:
    """Start the dispatcher and the API with settings overrides; stop them at the end."""
    dispatchers: list[Dispatcher] = []
    clients: list[TestClient] = []
    key = make_key(engine, "acme")

    def _start(**overrides: Any) -> Api:
        values: dict[str, Any] = {
            "database_url": database_url,
            "allowed_networks": "127.0.0.0/8",
            "ca_bundle": str(receivers.ca_file),
            "retry_schedule": "0,0.3,0.3,0.3",
            "attempt_timeout": 1.0,
            "lease_seconds": 3.0,
            "poll_interval": 0.1,
            "delivery_actors": 1,
            "host_rate_limit": 1000.0,
            **overrides,
        }
        settings = Settings(**values)
        dispatcher = start_dispatcher(settings, namespace=f"test-{uuid.uuid4().hex[:8]}")
        dispatchers.append(dispatcher)
        client = TestClient(create_app(settings, engine, dispatcher))
        clients.append(client)
        return Api(client, key, engine, dispatcher)

    yield _start
    for client in clients:
        client.close()
    for dispatcher in dispatchers:
        dispatcher.stop()


def test_fan_out_by_type_with_exact_body_and_valid_signature(
    start: Callable[..., Api], receivers: Receivers
) -> None:
    api = start()
    first, second = receivers.start(), receivers.start()
    everything = api.register(first, ["opened", "bounced"])
    bounces = api.register(second, ["bounced"])
    accepted = api.post(event("opened"), event("bounced"), event("clicked"))
    assert accepted["deliveries"] == 3
    wait_until(lambda: api.statuses().get("succeeded") == 3)

    opened_id, bounced_id, clicked_id = accepted["accepted"]
    assert sorted(json.loads(b)["id"] for b in first.bodies()) == sorted([opened_id, bounced_id])
    assert [json.loads(b)["id"] for b in second.bodies()] == [bounced_id]
    for receiver, endpoint in ((first, everything), (second, bounces)):
        for request in receiver.received:
            payload = Webhook(endpoint["secret"]).verify(request.body, request.headers)
            assert request.headers["webhook-id"] == payload["id"]
            assert request.headers["Content-Type"] == "application/json"
            assert request.headers["User-Agent"] == USER_AGENT
            assert set(payload) == {
                "id", "type", "recipient", "sent_email_id", "campaign_id", "metadata", "timestamp"
            }  # fmt: skip
            assert payload == api.event(payload["id"])["payload"]
    assert api.event(clicked_id)["deliveries"] == []


def test_retries_until_the_receiver_recovers(
    start: Callable[..., Api], receivers: Receivers
) -> None:
    api = start()
    flaky = receivers.start(fail_first(2))
    api.register(flaky, ["opened"])
    event_id = api.post(event())["accepted"][0]
    wait_until(lambda: api.statuses().get("succeeded") == 1)
    delivery = api.event(event_id)["deliveries"][0]
    assert delivery["status"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert [a["error"] for a in delivery["attempts"]] == ["HTTP 500", "HTTP 500", None]
    bodies = flaky.bodies()
    assert len(bodies) == 3
    assert len(set(bodies)) == 1  # the same bytes every time
    assert len({r.headers["webhook-id"] for r in flaky.received}) == 1


def test_the_schedule_runs_out_into_failed(start: Callable[..., Api], receivers: Receivers) -> None:
    api = start(retry_schedule="0,0.2,0.2")
    broken = receivers.start(status(500))
    api.register(broken, ["opened"])
    event_id = api.post(event())["accepted"][0]
    wait_until(lambda: api.statuses().get("failed") == 1)
    assert len(api.event(event_id)["deliveries"][0]["attempts"]) == 3
    assert broken.count() == 3


def test_410_disables_the_endpoint(start: Callable[..., Api], receivers: Receivers) -> None:
    api = start()
    gone = receivers.start(status(410))
    endpoint = api.register(gone, ["opened"])
    api.post(event())
    wait_until(lambda: not api.endpoint(endpoint["id"])["enabled"])
    assert "410" in api.endpoint(endpoint["id"])["disabled_reason"]
    assert api.post(event())["deliveries"] == 0
    assert gone.count() == 1


def test_retry_after_is_honoured(start: Callable[..., Api], receivers: Receivers) -> None:
    api = start()
    busy = receivers.start(fail_first(1, 429, {"Retry-After": "2"}))
    api.register(busy, ["opened"])
    api.post(event())
    wait_until(lambda: api.statuses().get("succeeded") == 1)
    first, second = busy.received
    # The schedule alone would retry after 0.3 s.
    assert second.at - first.at >= 1.9


def test_bad_hosts_do_not_slow_healthy_ones(
    start: Callable[..., Api], receivers: Receivers
) -> None:
    api = start(host_concurrency=4, attempt_timeout=1.0)
    healthy = [receivers.start() for _ in range(2)]
    hanging = receivers.start(hang(30))
    failing = receivers.start(status(500))
    for receiver in [*healthy, hanging, failing]:
        api.register(receiver, ["opened"])
    for _ in range(4):
        api.post(*(event() for _ in range(50)))
    # 200 events per healthy host; the bad hosts hold only their own lanes.
    wait_until(lambda: api.statuses().get("succeeded") == 400, timeout=30)
    assert all(r.count() == 200 for r in healthy)
    assert hanging.count() <= 4 * 2  # its concurrency cap, at most twice over (one retry round)


def test_high_priority_overtakes_a_backlog(start: Callable[..., Api], receivers: Receivers) -> None:
    api = start(host_concurrency=1)
    slow = receivers.start()
    api.register(slow, ["opened", "bounced"], rate_limit=50)
    api.post(*(event("opened") for _ in range(300)))
    high_ids = set(api.post(*(event("bounced") for _ in range(10)))["accepted"])
    wait_until(lambda: slow.count() >= 310, timeout=30)
    order = [json.loads(b)["id"] for b in slow.bodies()]
    positions = sorted(order.index(i) for i in high_ids)
    # The backlog takes 5 s (a burst of 50, then 50/s); the bounces, posted right after
    # it, arrive one after another well before its first half is through.
    assert positions[-1] < 150, positions
    assert positions[-1] - positions[0] == 9, positions


def test_a_duplicate_event_id_is_delivered_once(
    start: Callable[..., Api], receivers: Receivers
) -> None:
    api = start()
    receiver = receivers.start()
    api.register(receiver, ["opened"])
    assert api.post(event(id="evt-dup"))["accepted"] == ["evt-dup"]
    assert api.post(event(id="evt-dup")) == {
        "accepted": [],
        "duplicates": ["evt-dup"],
        "deliveries": 0,
    }
    wait_until(lambda: api.statuses().get("succeeded") == 1)
    assert receiver.count() == 1


def test_a_burst_to_many_new_hosts_arrives_once_each(
    ray_cluster: None, database_url: str, engine: Engine, receivers: Receivers
) -> None:
    # Everything is committed before the dispatcher starts, so its first claims meet a
    # backlog of hosts it has never seen: some fill their small first share, others
    # (fewer events) do not, and a claim searches on past the full ones.
    settings = Settings(
        database_url=database_url,
        allowed_networks="127.0.0.0/8",
        ca_bundle=str(receivers.ca_file),
        retry_schedule="0,0.3,0.3,0.3",
        attempt_timeout=5.0,
        lease_seconds=30.0,
        poll_interval=0.1,
        delivery_actors=2,
        host_rate_limit=10_000.0,
        host_concurrency=4,
    )
    hosts = [receivers.start() for _ in range(20)]
    expected: set[str] = set()
    with TestClient(create_app(settings, engine)) as client:
        keys = [{"X-API-Key": make_key(engine, f"burst-{k}")} for k in range(len(hosts))]
        for host, headers in zip(hosts, keys, strict=True):
            body = {"url": host.url, "events": ["opened"]}
            assert client.post(ENDPOINTS, json=body, headers=headers).status_code == 201
        for _ in range(8):
            for k, headers in enumerate(keys):  # host k gets k + 1 events a round
                batch = [event() for _ in range(k + 1)]
                response = client.post(EVENTS, json=batch, headers=headers)
                assert response.status_code == 202, response.text
                expected.update(response.json()["accepted"])
    assert len(expected) == 8 * 210
    dispatcher = start_dispatcher(settings, namespace=f"test-{uuid.uuid4().hex[:8]}")
    try:
        wait_until(lambda: delivery_statuses(engine) == {"succeeded": len(expected)}, timeout=60)
    finally:
        dispatcher.stop()
    arrivals = Counter(r.headers["webhook-id"] for host in hosts for r in host.received)
    assert set(arrivals) == expected
    assert {i: n for i, n in arrivals.items() if n > 1} == {}


@pytest.mark.parametrize("victim", ["delivery", "router", "scheduler"])
def test_killing_an_actor_loses_nothing(
    start: Callable[..., Api], receivers: Receivers, victim: str
) -> None:
    api = start()
    receiver = receivers.start()
    api.register(receiver, ["opened"], rate_limit=100)
    ids = set(api.post(*(event() for _ in range(300)))["accepted"])
    wait_until(lambda: receiver.count() >= 30)
    actor = {
        "delivery": api.dispatcher.workers[0],
        "router": api.dispatcher.router,
        "scheduler": api.dispatcher.scheduler,
    }[victim]
    ray.kill(actor, no_restart=False)
    api.dispatcher.wake()
    wait_until(lambda: api.statuses() == {"succeeded": 300}, timeout=60)
    # At least once: every event arrived, some perhaps twice.
    assert {json.loads(b)["id"] for b in receiver.bodies()} == ids


def test_a_restart_delivers_what_was_pending(
    start: Callable[..., Api], receivers: Receivers
) -> None:
    api = start()
    receiver = receivers.start()
    api.register(receiver, ["opened"], rate_limit=100)
    ids = set(api.post(*(event() for _ in range(200)))["accepted"])
    wait_until(lambda: receiver.count() >= 20)
    api.dispatcher.stop()  # everything dies mid-stream: actors, leases in flight
    assert api.statuses().get("succeeded", 0) < 200
    again = start()
    wait_until(lambda: again.statuses() == {"succeeded": 200}, timeout=60)
    assert {json.loads(b)["id"] for b in receiver.bodies()} == ids


def test_health_reports_every_actor(start: Callable[..., Api]) -> None:
    api = start(delivery_actors=2)
    body = api.client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["dispatcher"]["status"] == "ok"
    assert len(body["dispatcher"]["delivery_actors"]) == 2


def test_a_deleted_endpoint_gets_nothing_more(
    start: Callable[..., Api], receivers: Receivers
) -> None:
    api = start()
    receiver = receivers.start(hang(30))
    endpoint = api.register(receiver, ["opened"])
    api.post(*(event() for _ in range(40)))
    wait_until(lambda: receiver.count() >= 1)
    assert (
        api.client.delete(f"{ENDPOINTS}{endpoint['id']}/", headers=api.headers).status_code == 204
    )
    wait_until(lambda: api.statuses().get("cancelled", 0) >= 40 - 16)
    seen = receiver.count()
    assert seen <= 16  # the lane's concurrency: only attempts already started


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"ca_bundle": None}, "TLS error"),
        ({"allowed_networks": ""}, "destination refused"),
    ],
    ids=["untrusted-certificate", "loopback-refused"],
)
def test_unsafe_or_untrusted_destinations_are_refused(
    start: Callable[..., Api], receivers: Receivers, overrides: dict[str, Any], reason: str
) -> None:
    api = start(retry_schedule="0", **overrides)
    receiver = receivers.start(ok)
    api.register(receiver, ["opened"])
    event_id = api.post(event())["accepted"][0]
    wait_until(lambda: api.statuses().get("failed") == 1)
    (attempt,) = api.event(event_id)["deliveries"][0]["attempts"]
    assert attempt["status_code"] is None
    assert reason in attempt["error"]
    assert receiver.count() == 0
