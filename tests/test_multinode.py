"""Scale-out on several Ray nodes (simulated on this machine) against PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import PG_SERVER

pytestmark = pytest.mark.ray


@pytest.mark.skipif(
    not PG_SERVER, reason="a cluster needs PostgreSQL: set SENTINMAIL_TEST_DATABASE_URL"
)
def test_actors_spread_over_nodes_and_a_lost_node_loses_nothing(postgres_database: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.multinode", postgres_database],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["sqlite_refused"] is True
    assert report["nodes_delivering"] >= 2
    assert report["succeeded_at_removal"] < 600  # the node went mid-stream
    assert report["received_distinct"] == report["accepted"] == 100  # x 6 endpoints each
    assert report["removed_node"] not in report["nodes_after"]
