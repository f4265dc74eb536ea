"""Jobs and results cross Ray, pickled in batches: they must come back equal."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

from models.jobs import DeliveryStatus, Job, Result


def test_jobs_and_results_survive_pickling() -> None:
    job = Job(
        7,
        "evt-1",
        "ep-1",
        "https://a.example/",
        "https://a.example:443",
        "whsec_x",
        2.5,
        0,
        3,
        b"{}",
    )
    now = datetime.now(UTC)
    result = Result(
        job,
        DeliveryStatus.PENDING,
        now,
        attempted=False,
        at=now,
        status_code=503,
        error="busy",
        duration_ms=12,
        gone=True,
        blocked=True,
    )
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(job, protocol)) == job
        assert pickle.loads(pickle.dumps(result, protocol)) == result
