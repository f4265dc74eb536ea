"""Priority: a backlog of low-priority events, then high-priority ones that must jump it.

``python -m benchmarks.priority [--events 20000] [--high 1000] [--hosts 5] [--database-url URL]``

``--events`` low-priority events (``opened``) go to a slow-ish group of
``--hosts`` hosts whose endpoints are registered with ``rate_limit``
``--rate-limit`` requests per second each (100/s, the service's default per
host: the group drains ``hosts x rate`` deliveries per second, so the backlog
lasts about ``events / (hosts x rate)`` seconds). Once every low event is
accepted, ``--high`` high-priority events (``bounced``) are posted to the same
hosts. High events should arrive within seconds, low ones as the backlog
drains: ``ratio`` is high p99 over low p99 (latency = arrival minus the 202).
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks import load
from benchmarks.harness import (
    Arrivals,
    Bench,
    Outcome,
    bench_main,
    common_options,
    machine,
    progress,
)


async def run(
    *,
    events: int,
    high: int,
    hosts: int,
    rate_limit: float,
    database_url: str | None,
    create_database: bool,
    batch: int,
    post_concurrency: int,
    within: float,
) -> dict[str, Any]:
    """Post the backlog, then the urgent events; wait for all; return the result."""
    info = machine()
    async with Bench(
        "priority", database_url, create_database=create_database, receivers=hosts
    ) as bench:
        targets = await bench.hosts(range(hosts), rate_limit=rate_limit)
        low_batches = load.spread(targets, bench.tag, events, batch, "opened")
        high_batches = load.spread(targets, bench.tag, high, batch, "bounced", start=events)
        low = {(b.host.index, e["id"]) for b in low_batches for e in b.events}
        urgent = {(b.host.index, e["id"]) for b in high_batches for e in b.events}
        endpoints = [h.endpoint_id for h in targets]
        arrivals = Arrivals(bench.receivers.control)
        ingest = load.Ingest()
        with progress() as bar:

            async def post_all() -> None:
                await bench.post(low_batches, ingest, post_concurrency, bar, "accepted (low)")
                await bench.post(high_batches, ingest, post_concurrency, bar, "accepted (high)")

            posting = asyncio.ensure_future(post_all())
            await bench.wait(arrivals, low | urgent, endpoints, bar, within=within, until=posting)
            await posting
        low_outcome = await bench.outcome(arrivals, low, targets, ingest.accepted_at)
        high_outcome = await bench.outcome(arrivals, urgent, targets, ingest.accepted_at)

    def summary(outcome: Outcome) -> dict[str, Any]:
        return {
            "delivered": len(outcome.delivered),
            "p50_ms": outcome.p(50),
            "p99_ms": outcome.p(99),
            "lost": outcome.lost,
            "duplicates": outcome.duplicates,
        }

    high_p99, low_p99 = high_outcome.p(99), low_outcome.p(99)
    return {
        "benchmark": "priority",
        "database": bench.backend,
        "high_p99_ms": high_p99,
        "low_p99_ms": low_p99,
        "ratio": round(high_p99 / low_p99, 4) if low_p99 else 0.0,
        "lost": low_outcome.lost + high_outcome.lost,
        "duplicates": low_outcome.duplicates + high_outcome.duplicates,
        "low": {"events": events, **summary(low_outcome)},
        "high": {"events": high, **summary(high_outcome)},
        "hosts": hosts,
        "rate_limit_per_host": rate_limit,
        "machine": info,
    }


def main() -> None:
    """Parse options, run, write and print the result."""
    parser = common_options(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="low-priority events")
    parser.add_argument("--high", type=int, default=1_000, help="high-priority events after them")
    parser.add_argument("--hosts", type=int, default=5, help="hosts in the slow-ish group")
    parser.add_argument("--rate-limit", type=float, default=100.0, help="per endpoint, per s")
    parser.set_defaults(within=100.0)
    bench_main("priority", parser, run)


if __name__ == "__main__":
    main()
