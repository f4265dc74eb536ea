"""Over months the service sees millions of hosts: what each leaves behind must go again.

100,000 hosts, each delivered to once, through the capacity ledger and a
delivery worker (``MockTransport``: no Ray, no network), a thousand new hosts
a minute on fake clocks. While it runs, only the hosts of the last minutes
hold state; once every host has been idle for a while, none does.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import tracemalloc
from datetime import UTC, datetime, timedelta

from dispatcher.capacity import Capacity, CapacityLedger
from dispatcher.signing import _webhook
from dispatcher.transport import MockTransport, Request, Response
from dispatcher.worker import DeliveryWorker, WorkerPolicy
from models.jobs import Job, Result

HOSTS = 100_000
BATCH = 1_000
MINUTE = 60.0
T0 = datetime(2026, 4, 2, tzinfo=UTC)
# More secrets than the signing cache holds, as many endpoints would have.
SECRETS = ["whsec_" + base64.b64encode(i.to_bytes(32, "big")).decode() for i in range(5_000)]
TRACED = 5
"""The last batches run under tracemalloc, which triples the cost of everything."""
GROWTH = 8_000_000
"""Bytes the traced batches may leave behind: a lane alone is about 3 KB, so the
5,000 hosts of those batches, kept, would leave some 15 MB. What does stay
(about 2 MB, measured) is bounded however many hosts pass: the signing cache,
and dictionaries' tables sized for the hosts of the busiest minutes."""
GUARD = 30.0  # seconds: turns a hang into a failure; the waits end in milliseconds


def jobs(first: int) -> list[Job]:
    """A batch of deliveries, each to a host of its own."""
    return [
        Job(i, f"evt-{i}", f"ep-{i}", f"https://h{i}.example/hook", f"https://h{i}.example:443",
            SECRETS[i % len(SECRETS)], None, 1, 0, b"{}")
        for i in range(first, first + BATCH)
    ]  # fmt: skip


async def test_a_hundred_thousand_hosts_delivered_to_once_leave_bounded_state_behind() -> None:
    now = [0.0]

    def wall() -> datetime:
        return T0 + timedelta(seconds=now[0])

    reported: list[Result] = []
    arrived = asyncio.Event()

    async def sink(batch: list[Result]) -> None:
        reported.extend(batch)
        arrived.set()

    async def all_reported() -> None:
        while len(reported) < BATCH:
            arrived.clear()
            await arrived.wait()

    def ok(request: Request) -> Response:
        return Response(200, {}, 0.0)

    policy = WorkerPolicy(flush_interval=0.0, hand_back_after=0.2)
    worker = DeliveryWorker(MockTransport(ok), sink, policy, clock=lambda: now[0], wall=wall)
    ledger = CapacityLedger(Capacity(max_in_flight=2 * BATCH, claim_batch=BATCH))
    idle_lanes, idle_hosts = policy.forget_lanes_after, ledger.capacity.forget_hosts_after
    most_lanes = most_proven = 0
    baseline = 0
    try:
        for first in range(0, HOSTS, BATCH):
            if first == HOSTS - TRACED * BATCH:
                gc.collect()
                tracemalloc.start()
                baseline = tracemalloc.get_traced_memory()[0]
            due = jobs(first)
            claim = ledger.start_claim(wall())
            while claim.wanted:
                taken = claim.admit(due[: claim.wanted])
                del due[: len(taken)]
                worker.submit(taken)
            ledger.hold(claim, wall())
            await asyncio.wait_for(all_reported(), GUARD)
            ledger.record(reported, wall())
            reported.clear()
            most_lanes = max(most_lanes, worker.footprint()["lanes"])
            most_proven = max(most_proven, ledger.stats()["proven"])
            now[0] += MINUTE

        # Only the hosts of the last minutes held state at any time.
        assert most_lanes <= (idle_lanes / MINUTE + 1) * BATCH
        assert most_proven <= (idle_hosts.total_seconds() / MINUTE + 1) * BATCH

        # Then every host has been idle past both periods: nothing of them stays.
        now[0] += max(idle_lanes, idle_hosts.total_seconds())
        ledger.start_claim(wall())
        assert ledger.stats() == {"held": 0, "origins": 0, "proven": 0, "resting": 0}

        async def forgotten() -> None:
            # By the watchdog, as no more work comes; it ends at its next tick, unannounced.
            while worker.footprint()["watching"]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        await asyncio.wait_for(forgotten(), GUARD)
        assert worker.footprint() == {
            "lanes": 0,
            "events": 0,
            "pumps": 0,
            "in_flight": 0,
            "tasks": 0,
            "results": 0,
            "watching": 0,
        }
        assert _webhook.cache_info().currsize <= 4096
        del due, claim, taken
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - baseline
        assert growth < GROWTH, f"{growth:,} bytes left behind by {TRACED * BATCH:,} hosts"
    finally:
        tracemalloc.stop()
        await worker.close()
