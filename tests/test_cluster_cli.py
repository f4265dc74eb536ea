"""``sentinmail dispatcher`` on a running Ray, shared by API replicas started with ``--no-dispatcher``."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PG_SERVER, emptied
from tests.receivers import Receivers, wait_until
from tests.test_serve_e2e import SENTINMAIL, serving

pytestmark = pytest.mark.ray


@pytest.fixture
def ray_address(ray_cluster: None) -> str:
    """The address of the session's Ray, for other processes to join."""
    return str(ray.get_runtime_context().gcs_address)


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[Receivers]:
    farm = Receivers(tmp_path)
    yield farm
    farm.close()


def sentinmail(
    database_url: str, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SENTINMAIL), "--database-url", database_url, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def scraped(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``base``'s ``/metrics``, by name and labels."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def call(method: str, url: str, key: str, body: object | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


@pytest.fixture
def cluster_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What a cluster runs on: PostgreSQL when the suite has it, else a SQLite file.

    These tests are about processes sharing one dispatcher, not about the
    database, so they run once rather than once per backend.
    """
    if PG_SERVER:
        return emptied(str(request.getfixturevalue("postgres_database")))
    return f"sqlite:///{tmp_path}/cluster.db"


def test_api_replicas_share_one_detached_dispatcher(
    cluster_database: str, ray_address: str, receivers: Receivers
) -> None:
    database_url = cluster_database
    env = {
        "SENTINMAIL_ALLOWED_NETWORKS": "127.0.0.0/8",
        "SENTINMAIL_CA_BUNDLE": str(receivers.ca_file),
        "SENTINMAIL_DELIVERY_ACTORS": "2",
        "SENTINMAIL_POLL_INTERVAL": "0.1",
    }
    started = sentinmail(database_url, "dispatcher", "--ray-address", ray_address, env=env)
    assert started.returncode == 0, started.stderr
    assert started.stdout.count("delivery actor on node") == 2
    assert "router shards over 2 delivery actor(s)" in started.stdout
    try:
        key = sentinmail(
            database_url, "keys", "create", "--account", "acme", env=env
        ).stdout.split()[-1]
        receiver = receivers.start()
        replicas = ("--ray-address", ray_address, "--no-dispatcher")
        with (
            serving(database_url, *replicas, env=env) as (first, _, _),
            serving(database_url, *replicas, env=env) as (second, _, _),
        ):
            health = call("GET", f"{first}/healthz", key)
            assert health["dispatcher"]["status"] == "ok"  # type: ignore[index]
            call(
                "POST",
                f"{first}/api/emails/webhook-endpoints/",
                key,
                {"url": receiver.url, "events": ["opened"]},
            )
            for base in (first, second):
                call(
                    "POST",
                    f"{base}/api/emails/events/",
                    key,
                    [{"type": "opened", "recipient": "a@example.com"}] * 5,
                )
            wait_until(lambda: receiver.count() >= 10)
            # /metrics: each replica its own ingestion; the dispatcher's numbers from both.
            succeeded = ("sentinmail_attempts_total", (("result", "success"),))
            wait_until(lambda: all(scraped(b)[succeeded] == 10 for b in (first, second)))
            for base in (first, second):
                metrics = scraped(base)
                assert metrics["sentinmail_events_accepted_total", (("type", "opened"),)] == 5
                assert metrics["sentinmail_dispatcher_up", ()] == 1
                assert metrics["sentinmail_actors_up", (("actor", "delivery"),)] == 2
        # The API processes are gone; the dispatcher is not, and it grows on demand.
        grown = sentinmail(
            database_url, "dispatcher", "--ray-address", ray_address,
            env={**env, "SENTINMAIL_DELIVERY_ACTORS": "3"},
        )  # fmt: skip
        assert grown.returncode == 0, grown.stderr
        assert grown.stdout.count("delivery actor on node") == 3
        assert "router shards over 3 delivery actor(s)" in grown.stdout
    finally:
        stopped = sentinmail(
            database_url, "dispatcher", "--stop", "--ray-address", ray_address, env=env
        )
        assert stopped.returncode == 0, stopped.stderr


def test_no_dispatcher_without_one_running_is_a_clear_error(
    cluster_database: str, ray_address: str
) -> None:
    result = sentinmail(
        cluster_database, "serve", "--ray-address", ray_address, "--no-dispatcher", env={}
    )
    assert result.returncode == 2
    assert "No dispatcher is running" in result.stderr
    assert "sentinmail dispatcher" in result.stderr
