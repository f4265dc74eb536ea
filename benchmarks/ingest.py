"""Ingestion: events posted as SentinMail's own services post them, one or a few at a time.

``python -m benchmarks.ingest [--hosts 50] [--single-requests 10000] [--database-url URL]``

The tracking-pixel server posts one ``opened`` per hit, the click redirector
one ``clicked`` per click, the MTA one ``delivered`` or ``bounced`` per
message, many processes at once. One aiohttp client (keep-alive, one
connection per request in flight) posts, in phases on one service:

| phase | events per request | requests in flight |
|---|---|---|
| ``single_c16``, ``single_c64`` | 1 (a JSON object) | 16, 64 |
| ``ten_c16``, ``ten_c64`` | 10 | 16, 64 |
| ``batch_c16``, ``batch_c64`` | 500 | 16, 64 |
| ``single_c64_no_delivery``, ``ten_c64_no_delivery`` | 1, 10, to accounts without endpoints | 64 |

Every phase but the last two posts to accounts that each have an endpoint on a
receiver, so the dispatcher delivers what is ingested while it is ingested
(the realistic case); after each phase the run waits until all of it has
been delivered, so that every phase starts on an idle dispatcher. A phase's
rate is its events over first POST to last 202; latency is request to 202.
By default each phase posts at least two requests per connection.

Before the phases and after them, ``bare_limit_per_s``: the same client, one
event per request, 64 in flight, against ``benchmarks.bare`` (FastAPI on
uvicorn run exactly as ``serve`` runs the API, answering 202 and storing
nothing), the better of the two runs. That is the ceiling of a Python HTTP
front door on this machine.

The last stdout line is the result: ``single_per_s`` (1 per request, 64 in
flight, while delivering), ``single_ratio`` (over ``bare_limit_per_s``),
``single_p99_ms``, ``ten_per_s`` and ``batch_per_s`` (each at the better of
its two concurrencies), ``lost`` (accepted, then not delivered and stored as
succeeded, or for the last phase not stored) and ``duplicates``; per phase,
the CPU each kind of process spent per request and, for phases that deliver,
the latency from a 202 to the receiver.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import load
from benchmarks.cpu_profile import Profiler
from benchmarks.harness import (
    Arrivals,
    Bench,
    CpuWindow,
    Key,
    bench_main,
    common_options,
    machine,
    percentile,
    progress,
)
from benchmarks.load import Host
from benchmarks.service import free_port

EVENT_TYPES = ("opened", "clicked", "delivered", "bounced")


@dataclass(frozen=True)
class Post:
    """One request: its body, its key, and the deliveries it should make."""

    body: bytes
    headers: dict[str, str]
    keys: tuple[Key, ...]


@dataclass
class Posted:
    """What one phase's posting got."""

    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    accepted_at: dict[str, float] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    first_post: float = 0.0
    last_accept: float = 0.0

    @property
    def per_s(self) -> float:
        span = self.last_accept - self.first_post
        return len(self.accepted_at) / span if span > 0 else 0.0


def make_posts(hosts: Sequence[Host], tag: str, start: int, events: int, per: int) -> list[Post]:
    """``events`` events, ``per`` to a request, requests round-robin over ``hosts``."""
    posts = []
    for number, first in enumerate(range(start, start + events, per)):
        host = hosts[number % len(hosts)]
        count = min(per, start + events - first)
        batch = load.make_events(tag, first, count, EVENT_TYPES[number % len(EVENT_TYPES)])
        body = json.dumps(batch[0] if per == 1 else batch).encode()
        keys = tuple((host.index, e["id"]) for e in batch)
        headers = {"X-API-Key": host.key, "Content-Type": "application/json"}
        posts.append(Post(body, headers, keys))
    return posts


async def post_all(url: str, posts: Sequence[Post], concurrency: int, within: float) -> Posted:
    """POST every request, ``concurrency`` at a time on as many keep-alive connections."""
    posted = Posted()
    queue = deque(posts)
    timeout = aiohttp.ClientTimeout(total=within)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def worker() -> None:
            while queue:
                post = queue.popleft()
                sent = time.monotonic()
                posted.first_post = posted.first_post or time.time()
                try:
                    async with http.post(url, data=post.body, headers=post.headers) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    posted.errors[type(exc).__name__] += 1
                    continue
                posted.requests += 1
                if status != 202:
                    posted.errors[str(status)] += 1
                    continue
                posted.latencies_ms.append((time.monotonic() - sent) * 1000)
                at = posted.last_accept = time.time()
                for _, event_id in post.keys:
                    posted.accepted_at[event_id] = at

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return posted


def per_request_cpu(cpu: dict[str, Any], requests: int) -> dict[str, float]:
    """CPU milliseconds per request: the API, the whole service, and the whole machine."""
    if not requests:
        return {}
    service = cpu["service"]
    api = sum(v for k, v in service.items() if k.startswith("api"))  # serve and its workers
    return {
        "api_ms": round(api * 1000 / requests, 3),
        "service_ms": round(cpu["service_total"] * 1000 / requests, 3),
        "database_server_ms": round(cpu["database_server"] * 1000 / requests, 3),
        "client_ms": round(cpu["benchmark_client"] * 1000 / requests, 3),
        "machine_ms": round(cpu["machine_busy_s"] * 1000 / requests, 3),
    }


def phase_result(
    name: str, per: int, concurrency: int, posted: Posted, cpu: dict[str, Any]
) -> dict[str, Any]:
    return {
        "phase": name,
        "events_per_request": per,
        "concurrency": concurrency,
        "requests": posted.requests,
        "events": len(posted.accepted_at),
        "per_s": round(posted.per_s, 1),
        "requests_per_s": round(posted.per_s / per, 1),
        "p50_ms": round(percentile(posted.latencies_ms, 50), 1),
        "p99_ms": round(percentile(posted.latencies_ms, 99), 1),
        "errors": dict(posted.errors),
        "cpu_per_request": per_request_cpu(cpu, posted.requests),
        "cpu_seconds": cpu,
    }


class BareServer:
    """``benchmarks.bare`` on a free port, in the same layout as the service."""

    def __init__(self, workers: int | None) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "benchmarks.bare", "--port", str(self.port)]
        if workers:
            command += ["--workers", str(workers)]
        self.proc = subprocess.Popen(
            command,
            cwd=Path(__file__).parent.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/emails/events/"

    async def ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.post(self.url, data=b"{}") as response:
                        if response.status == 202:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError("the bare server did not answer within 30 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


async def bare_limit(
    hosts: Sequence[Host], tag: str, start: int, requests: int, workers: int | None, within: float
) -> Posted:
    """The same client against ``benchmarks.bare``: one event per request, 64 in flight."""
    bare = BareServer(workers)
    try:
        await bare.ready()
        return await post_all(bare.url, make_posts(hosts, tag, start, requests, 1), 64, within)
    finally:
        bare.stop()


async def run(
    *,
    hosts: int,
    database_url: str | None,
    create_database: bool,
    batch: int,
    post_concurrency: int,
    within: float,
    single_requests: int,
    ten_events: int,
    batch_events: int,
    workers: int | None,
    profile: Path | None,
) -> dict[str, Any]:
    """Run every phase, then the bare limit; return the result."""
    del batch, post_concurrency  # the phases set their own
    info = machine()
    env = {"SENTINMAIL_HOST_RATE_LIMIT": "100000"}
    serve_args = ["--workers", str(workers)] if workers else []
    phases: list[dict[str, Any]] = []
    async with Bench(
        "ingest",
        database_url,
        create_database=create_database,
        receivers=hosts,
        env=env,
        serve_args=serve_args,
    ) as bench:
        targets = await bench.hosts(range(hosts))
        quiet_keys = await asyncio.to_thread(
            load.create_keys, bench.database_url, [f"quiet-{bench.tag}-{i}" for i in range(hosts)]
        )
        quiet = [Host(-1, 0, key, "") for key in quiet_keys]
        endpoints = [h.endpoint_id for h in targets]
        url = f"{bench.service.base_url}/api/emails/events/"
        arrivals = Arrivals(bench.receivers.control)
        expected: set[Key] = set()
        accepted_at: dict[str, float] = {}
        stored_ids: list[str] = []
        drained = True
        plan = [
            ("single_c16", 1, 16, single_requests, targets),
            ("single_c64", 1, 64, single_requests, targets),
            ("ten_c16", 10, 16, ten_events, targets),
            ("ten_c64", 10, 64, ten_events, targets),
            ("batch_c16", 500, 16, batch_events, targets),
            ("batch_c64", 500, 64, batch_events, targets),
            ("single_c64_no_delivery", 1, 64, single_requests, quiet),
            ("ten_c64_no_delivery", 10, 64, ten_events, quiet),
        ]
        # Before the phases and after them: the better is the ceiling (other load on
        # this machine only ever lowers a run).
        bare_runs = [await bare_limit(quiet, bench.tag, 10**7, single_requests, workers, within)]
        start = 0
        with progress() as bar:
            for name, per, concurrency, events, to in plan:
                posts = make_posts(to, bench.tag, start, events, per)
                start += events
                profiled = profile is not None and name == "single_c64"
                profiler = Profiler(bench.service, profile) if profile and profiled else None
                if profiler:
                    profiler.start()
                task = bar.add_task(name, total=None)
                cpu = CpuWindow(bench)
                cpu.start()
                posted = await post_all(url, posts, concurrency, within)
                cpu_seconds = cpu.stop()
                bar.update(task, total=len(posts), completed=posted.requests)
                if profiler:
                    profiler.stop()
                phases.append(phase_result(name, per, concurrency, posted, cpu_seconds))
                if profiler:
                    phases[-1]["profile"] = profiler.summary()
                accepted_at.update(posted.accepted_at)
                if to is quiet:
                    stored_ids.extend(posted.accepted_at)
                    continue
                mine = [k for p in posts for k in p.keys if k[1] in posted.accepted_at]
                expected.update(mine)
                drained = drained and await bench.wait(
                    arrivals, expected, endpoints, bar, within=within, label=f"{name} delivered"
                )
                # From its 202 to its first arrival at the receiver.
                waited = [
                    (arrivals.first[k] - posted.accepted_at[k[1]]) * 1000
                    for k in mine
                    if k in arrivals.first
                ]
                phases[-1]["delivery_p50_ms"] = round(percentile(waited, 50), 1)
                phases[-1]["delivery_p99_ms"] = round(percentile(waited, 99), 1)
        outcome = await bench.outcome(arrivals, expected, targets, accepted_at)
        stored = await asyncio.to_thread(load.bodies, bench.engine, stored_ids)
        bare_runs.append(
            await bare_limit(quiet, bench.tag, start, single_requests, workers, within)
        )

    by_name = {p["phase"]: p for p in phases}
    single = by_name["single_c64"]
    bare = max(bare_runs, key=lambda b: b.per_s)
    bare_per_s = round(bare.per_s, 1)
    return {
        "benchmark": "ingest",
        "database": bench.backend,
        "single_per_s": single["per_s"],
        "single_ratio": round(single["per_s"] / bare_per_s, 3) if bare_per_s else 0.0,
        "single_p99_ms": single["p99_ms"],
        "single_p50_ms": single["p50_ms"],
        "ten_per_s": max(by_name["ten_c16"]["per_s"], by_name["ten_c64"]["per_s"]),
        "batch_per_s": max(by_name["batch_c16"]["per_s"], by_name["batch_c64"]["per_s"]),
        "bare_limit_per_s": bare_per_s,
        "bare_p99_ms": round(percentile(bare.latencies_ms, 99), 1),
        "bare_runs_per_s": [round(b.per_s, 1) for b in bare_runs],
        "lost": outcome.lost + len(set(stored_ids) - set(stored)),
        "duplicates": outcome.duplicates,
        "errors": sum(sum(p["errors"].values()) for p in phases),
        "drained": drained,
        "delivery_p50_ms": outcome.p(50),
        "delivery_p99_ms": outcome.p(99),
        "single_api_cpu_ms": single["cpu_per_request"].get("api_ms"),
        "single_delivery_p99_ms": single.get("delivery_p99_ms"),
        "hosts": hosts,
        "workers": workers,
        "phases": phases,
        "machine": info,
    }


def main() -> None:
    """Parse options, run, write and print the result."""
    parser = common_options(__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50, help="accounts, each with one endpoint")
    parser.add_argument(
        "--single-requests", type=int, default=10_000, help="requests per one-event phase"
    )
    parser.add_argument("--ten-events", type=int, default=20_000, help="events per 10-event phase")
    parser.add_argument(
        "--batch-events", type=int, default=64_000, help="events per 500-event phase"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="serve --workers (and the bare server's)"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the service during single_c64"
    )
    bench_main("ingest", parser, run)


if __name__ == "__main__":
    main()
