"""Scaling: throughput with 1, 2 and 4 delivery actors, and on 1 and 2 simulated Ray nodes.

``python -m benchmarks.scaling [--events 6000] [--hosts 24] [--database-url URL]``

Each point is one run of ``benchmarks.throughput`` (its own service, receivers
and fresh database) with ``SENTINMAIL_DELIVERY_ACTORS`` set. The node points
start a ``ray.cluster_utils.Cluster`` here (a head and N-1 worker nodes, one
CPU each, all on this machine) and point the service at it with
``SENTINMAIL_RAY_ADDRESS``; a cluster needs PostgreSQL, so they run only with
a ``postgresql`` ``--database-url`` (the server must accept ``CREATE DATABASE``).
On two cores every point shares the same two CPUs: see benchmarks/README.md for
what that means and what a real cluster would do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from benchmarks.harness import RESULTS, common_options, machine, write_result

ROOT = Path(__file__).parent.parent
KEEP = ("deliveries_per_s", "ratio_to_raw", "raw_limit_per_s", "p99_ms", "lost", "peak_rss_mb")


@contextmanager
def simulated_cluster(nodes: int) -> Iterator[str]:
    """A Ray cluster of ``nodes`` nodes on this machine; yields its address."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield str(cluster.address)
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]


def point(events: int, hosts: int, database_url: str | None, env: dict[str, str]) -> dict[str, Any]:
    """One throughput run with ``env`` on top of ours; the fields that matter here."""
    with tempfile.TemporaryDirectory() as results:
        command = [
            sys.executable, "-m", "benchmarks.throughput",
            "--events", str(events), "--hosts", str(hosts),
            "--raw-requests", "1000", "--results-dir", results,
        ]  # fmt: skip
        if database_url:
            name = f"sentinmail_scaling_{uuid.uuid4().hex[:8]}"
            url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
            command += ["--database-url", url, "--create-database"]
        run = subprocess.run(
            command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
            timeout=600, check=False,
        )  # fmt: skip
        if run.returncode != 0:
            return {"error": run.stderr.strip().splitlines()[-1:] or ["failed"]}
        result = json.loads(run.stdout.strip().splitlines()[-1])
    return {k: result[k] for k in KEEP}


def main() -> None:
    """Run every point, write and print the result."""
    parser = common_options(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=6_000)
    parser.add_argument("--hosts", type=int, default=24)
    args = parser.parse_args()
    url = args.database_url
    on_postgres = bool(url) and make_url(url).get_backend_name() == "postgresql"

    actors = {
        str(n): point(args.events, args.hosts, url, {"SENTINMAIL_DELIVERY_ACTORS": str(n)})
        for n in (1, 2, 4)
    }
    nodes: dict[str, Any] = {}
    for n in (1, 2):
        if not on_postgres:
            nodes[str(n)] = {
                "skipped": "simulated nodes need --database-url postgresql+psycopg://..."
            }
            continue
        with simulated_cluster(n) as address:
            env = {"SENTINMAIL_RAY_ADDRESS": address, "SENTINMAIL_DELIVERY_ACTORS": "2"}
            nodes[str(n)] = point(args.events, args.hosts, url, env)
    result = {
        "benchmark": "scaling",
        "database": make_url(url).get_backend_name() if url else "sqlite",
        "events": args.events,
        "hosts": args.hosts,
        "by_delivery_actors": actors,
        "by_nodes": nodes,
        "machine": machine(),
    }
    write_result("scaling", result, args.results_dir if args.results_dir else RESULTS)


if __name__ == "__main__":
    main()
