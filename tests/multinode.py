"""A multi-node scenario, run in its own process: ``python -m tests.multinode DATABASE_URL``.

Ray allows one ``ray.init`` per process, and the test session already holds a
local Ray, so this starts a ``ray.cluster_utils.Cluster`` (a head and two
worker nodes on this machine) in a subprocess and prints what it saw as one
JSON line for ``test_multinode.py`` to check.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from fastapi.testclient import TestClient
from ray.cluster_utils import Cluster
from sqlmodel import Session

from api.app import create_app
from dispatcher.launch import (
    ClusterNeedsPostgres,
    check_database_fits_cluster,
    init_ray,
    start_dispatcher,
)
from dispatcher.settings import Settings
from models import accounts, migrate
from models.db import make_engine
from tests.conftest import delivery_statuses
from tests.receivers import Receivers, wait_until

EVENTS = 600
HOSTS = 6


def run(database_url: str) -> dict[str, Any]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    receivers = Receivers(Path(tempfile.mkdtemp()))
    report: dict[str, Any] = {}
    try:
        settings = Settings(
            database_url=database_url,
            ray_address=cluster.address,
            allowed_networks="127.0.0.0/8",
            ca_bundle=str(receivers.ca_file),
            retry_schedule="0,0.3,0.3,0.3,0.3,0.3",
            lease_seconds=3.0,
            poll_interval=0.1,
            delivery_actors=3,
        )
        init_ray(settings)
        try:
            check_database_fits_cluster(
                settings.model_copy(update={"database_url": "sqlite:///x.db"})
            )
            report["sqlite_refused"] = False
        except ClusterNeedsPostgres as exc:
            report["sqlite_refused"] = "PostgreSQL" in str(exc)

        engine = make_engine(database_url)
        migrate.upgrade(engine)
        with Session(engine) as session:
            key = accounts.create_key(session, f"multinode-{uuid.uuid4().hex[:6]}")[1]
        dispatcher = start_dispatcher(settings, namespace=f"multinode-{uuid.uuid4().hex[:6]}")
        client = TestClient(create_app(settings, engine, dispatcher))
        headers = {"X-API-Key": key}
        hosts = [receivers.start() for _ in range(HOSTS)]
        for host in hosts:
            body = {"url": host.url, "events": ["opened"], "rate_limit": 40}
            assert (
                client.post(
                    "/api/emails/webhook-endpoints/", json=body, headers=headers
                ).status_code
                == 201
            )
        events = [{"type": "opened", "recipient": "a@example.com"} for _ in range(EVENTS // HOSTS)]
        accepted = client.post("/api/emails/events/", json=events, headers=headers).json()[
            "accepted"
        ]

        wait_until(lambda: sum(h.count() for h in hosts) >= EVENTS // 6, timeout=60)
        health = dispatcher.health()
        busy = [w for w in health["delivery_actors"] if w["lanes"] > 0]
        report["nodes_delivering"] = len({w["node"] for w in busy})
        # Take away a worker node that runs a delivery actor, mid-stream.
        victim = next(n for n in nodes if n.node_id in {w["node"] for w in busy})
        cluster.remove_node(victim)
        report["removed_node"] = victim.node_id
        report["succeeded_at_removal"] = delivery_statuses(engine).get("succeeded", 0)
        wait_until(
            lambda: delivery_statuses(engine) == {"succeeded": EVENTS}, timeout=120, every=0.5
        )
        received = {json.loads(b)["id"] for h in hosts for b in h.bodies()}
        report["accepted"] = len(accepted)
        report["received_distinct"] = len(received & set(accepted))
        report["nodes_after"] = sorted({w["node"] for w in dispatcher.health()["delivery_actors"]})
        client.close()
        dispatcher.stop()
        engine.dispose()
    finally:
        receivers.close()
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
    return report


if __name__ == "__main__":
    started = time.monotonic()
    result = run(sys.argv[1])
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
