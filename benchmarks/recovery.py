"""Recovery: ``kill -9`` of the whole service half-way through a run, restart, wait.

``python -m benchmarks.recovery [--events 10000] [--hosts 10] [--database-url URL]``

Events are posted at ``--ingest-rate`` events per second, so that posting is
still going on when, once half of them have arrived at the receivers, every
process of the service (API, Ray's daemons, every actor) gets SIGKILL at once:
a crash of the machine as far as the service can tell. Posts that got no
answer are posted again after the restart (an event whose batch was committed
before the kill comes back as a duplicate: stored, not lost). The service
restarts on the same database and everything accepted must then be delivered:
``lost`` counts accepted events never delivered (received and ``succeeded``)
by the deadline; ``duplicates`` counts events received more than once
(delivery is at-least-once: attempts in flight at the kill are sent again).

Leases are shortened to ``--lease-seconds`` (``SENTINMAIL_LEASE_SECONDS``,
default 60 s in production) so that the work the dead dispatcher held comes
back within the run; each host keeps the default rate limit of 100/s.

``--single`` posts one event per request (a JSON object), 64 requests in
flight, as the platform's own services post: the kill then lands among
requests that the API commits in groups (``models.group_commit``), and
``lost_of_accepted_before_kill`` shows whether any 202 came before its
commit. Its result is ``recovery_single.json``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.progress import Progress

from benchmarks import load
from benchmarks.harness import (
    Arrivals,
    Bench,
    Key,
    bench_main,
    common_options,
    machine,
    progress,
)


async def until_half(
    bench: Bench, arrivals: Arrivals, expected: set[Key], bar: Progress, within: float
) -> int:
    """Wait until half of ``expected`` arrived (or ``within`` seconds); return how many did."""
    task = bar.add_task("delivered (before kill)", total=len(expected))
    deadline = time.monotonic() + within
    got = 0
    while time.monotonic() < deadline and got < len(expected) / 2:
        await arrivals.poll(bench.http)
        got = sum(1 for key in expected if key in arrivals.first)
        bar.update(task, completed=got)
        await asyncio.sleep(0.1)
    return got


async def run(
    *,
    events: int,
    hosts: int,
    database_url: str | None,
    create_database: bool,
    batch: int,
    post_concurrency: int,
    within: float,
    ingest_rate: float,
    lease_seconds: float,
    single: bool,
) -> dict[str, Any]:
    """Post, kill half-way, restart, wait; return the result."""
    if single:
        batch, post_concurrency = 1, 64
    info = machine()
    env = {"SENTINMAIL_LEASE_SECONDS": str(lease_seconds)}
    async with Bench(
        "recovery", database_url, create_database=create_database, receivers=hosts, env=env
    ) as bench:
        targets = await bench.hosts(range(hosts))
        batches = load.spread(targets, bench.tag, events, batch)
        expected = {(b.host.index, e["id"]) for b in batches for e in b.events}
        endpoints = [h.endpoint_id for h in targets]
        arrivals = Arrivals(bench.receivers.control)
        ingest = load.Ingest()
        with progress() as bar:
            posting = asyncio.ensure_future(
                bench.post(batches, ingest, post_concurrency, bar, pace=ingest_rate)
            )
            arrived_at_kill = await until_half(bench, arrivals, expected, bar, within)
            bench.service.kill()
            killed_at = time.time()
            accepted_before_kill = sum(1 for t in ingest.accepted_at.values() if t <= killed_at)
            await posting  # what is left fails fast: nothing listens any more
            unanswered = ingest.failed_batches
            restart_s = await bench.start_service()
            ingest.failed_batches = []
            await bench.post(unanswered, ingest, post_concurrency, bar, "accepted (re-posted)")
            if ingest.failed_batches:
                raise RuntimeError(f"{len(ingest.failed_batches)} batches failed after restart")
            accepted = {(b.host.index, e["id"]) for b in batches for e in b.events}
            accepted = {k for k in accepted if k[1] in ingest.accepted_at}
            await bench.wait(arrivals, accepted, endpoints, bar, within=within)
        outcome = await bench.outcome(arrivals, accepted, targets, ingest.accepted_at)
        before_kill = {k for k in accepted if ingest.accepted_at[k[1]] <= killed_at}

    return {
        "benchmark": "recovery_single" if single else "recovery",
        "database": bench.backend,
        "accepted": len(accepted),
        "delivered": len(outcome.delivered),
        "lost": outcome.lost,
        "duplicates": outcome.duplicates,
        "accepted_before_kill": accepted_before_kill,
        "lost_of_accepted_before_kill": len(before_kill - outcome.delivered),
        "arrived_before_kill": arrived_at_kill,
        "batches_reposted": len(unanswered),
        # Committed before the kill, their answer lost with it: re-posted, found stored.
        "reposted_already_stored": len(
            {e["id"] for b in unanswered for e in b.events} & ingest.duplicates
        ),
        "restart_s": round(restart_s, 1),
        "events": events,
        "events_per_request": batch,
        "post_concurrency": post_concurrency,
        "hosts": hosts,
        "lease_seconds": lease_seconds,
        "machine": info,
    }


def main() -> None:
    """Parse options, run, write and print the result."""
    parser = common_options(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--ingest-rate", type=float, default=1000.0, help="events posted per s")
    parser.add_argument("--lease-seconds", type=float, default=5.0, help="the service's lease")
    parser.add_argument(
        "--single",
        action="store_true",
        help="one event per request, 64 in flight (sets --batch 1 --post-concurrency 64)",
    )
    parser.set_defaults(batch=100, post_concurrency=2)
    bench_main(lambda o: "recovery_single" if o["single"] else "recovery", parser, run)


if __name__ == "__main__":
    main()
