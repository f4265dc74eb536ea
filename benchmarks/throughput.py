"""Throughput: every host healthy, as fast as the pipeline goes, against the raw HTTP limit.

``python -m benchmarks.throughput [--events 20000] [--hosts 50] [--database-url URL]``

The per-host rate limit is raised to ``--host-rate-limit`` (default 100,000/s,
``SENTINMAIL_HOST_RATE_LIMIT``) so that it is the pipeline that is measured,
not the politeness limit (100/s per host by default). Events are spread evenly
over the hosts (one account and endpoint per host) and posted in batches while
deliveries flow. Afterwards, with the service idle, one plain aiohttp client
posts the same bodies to the same receivers at a few concurrencies: the best
rate is ``raw_limit_per_s``. Then the delivery actor's own code
(``DeliveryWorker`` + ``HttpTransport``, signing and lanes included) posts
them again in this process, without Ray or a database: ``worker_limit_per_s``,
the most any dispatcher built on that worker could deliver here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from benchmarks import load
from benchmarks.cpu_profile import Profiler
from benchmarks.harness import (
    Arrivals,
    Bench,
    CpuWindow,
    bench_main,
    common_options,
    machine,
    progress,
    raw_limit,
    worker_limit,
)


async def run(
    *,
    events: int,
    hosts: int,
    database_url: str | None,
    create_database: bool,
    batch: int,
    post_concurrency: int,
    within: float,
    host_rate_limit: float,
    host_concurrency: int,
    raw_requests: int,
    profile: Path | None,
) -> dict[str, Any]:
    """Run the benchmark; return its result."""
    info = machine()
    env = {
        "SENTINMAIL_HOST_RATE_LIMIT": str(host_rate_limit),
        "SENTINMAIL_HOST_CONCURRENCY": str(host_concurrency),
    }
    async with Bench(
        "throughput", database_url, create_database=create_database, receivers=hosts, env=env
    ) as bench:
        targets = await bench.hosts(range(hosts))
        batches = load.spread(targets, bench.tag, events, batch)
        expected = {(b.host.index, e["id"]) for b in batches for e in b.events}
        endpoints = [h.endpoint_id for h in targets]
        arrivals = Arrivals(bench.receivers.control)
        ingest = load.Ingest()
        profiler = Profiler(bench.service, profile) if profile else None
        if profiler:
            profiler.start()
        cpu = CpuWindow(bench)
        cpu.start()
        with progress() as bar:
            posting = asyncio.ensure_future(bench.post(batches, ingest, post_concurrency, bar))
            await bench.wait(arrivals, expected, endpoints, bar, within=within, until=posting)
            await posting
        cpu_seconds = cpu.stop()
        if profiler:
            profiler.stop()
        outcome = await bench.outcome(arrivals, expected, targets, ingest.accepted_at)
        peak_rss, peak_pss = bench.sampler.peak_rss, bench.sampler.peak_pss

        sample = sorted(outcome.delivered)[:raw_requests]
        bodies = await bench.bodies(sample)
        raw = await raw_limit(bodies)
        floor = await worker_limit(bodies, host_concurrency)

    span = outcome.last_arrival - ingest.first_post
    per_s = len(outcome.delivered) / span if span > 0 else 0.0
    during = sum(1 for k in outcome.delivered if arrivals.first[k] <= ingest.last_accept)
    after_span = outcome.last_arrival - ingest.last_accept
    result: dict[str, Any] = {
        "benchmark": "throughput",
        "database": bench.backend,
        "events": len(ingest.accepted_at),
        "deliveries": len(outcome.delivered),
        "ingest_per_s": round(ingest.per_s, 1),
        "deliveries_per_s": round(per_s, 1),
        "p50_ms": outcome.p(50),
        "p95_ms": outcome.p(95),
        "p99_ms": outcome.p(99),
        "raw_limit_per_s": raw.per_s,
        "ratio_to_raw": round(per_s / raw.per_s, 3) if raw.per_s else 0.0,
        "lost": outcome.lost + events - len(ingest.accepted_at),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "peak_pss_mb": round(peak_pss / 2**20, 1),
        "hosts": hosts,
        "batch": batch,
        "host_rate_limit": host_rate_limit,
        "raw_by_concurrency": raw.by_concurrency,
        "raw_cpu_ms": raw.cpu_ms,
        **floor,
        "cpu_seconds": cpu_seconds,
        "duplicates": outcome.duplicates,
        "delivered_while_ingesting": during,
        "deliveries_per_s_after_ingest": (
            round((len(outcome.delivered) - during) / after_span, 1) if after_span > 0 else 0.0
        ),
        "machine": info,
    }
    if profiler:
        result["profiled"] = True  # py-spy's sampling slows the service: not a clean run
        result["profile"] = profiler.summary()
    return result


def main() -> None:
    """Parse options, run, write and print the result."""
    parser = common_options(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--host-rate-limit", type=float, default=100_000.0)
    parser.add_argument(
        "--host-concurrency", type=int, default=16, help="attempts in flight per host"
    )
    parser.add_argument("--raw-requests", type=int, default=5_000, help="per concurrency tried")
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the service into this directory"
    )
    bench_main("throughput", parser, run)


if __name__ == "__main__":
    main()
