"""Isolation: the same load twice, all hosts healthy, then with 10 % hanging and 10 % failing.

``python -m benchmarks.isolation [--events 20000] [--hosts 50] [--database-url URL]``

One service, two phases, each on a fresh set of ``--hosts`` receivers (new
origins, so new lanes): in the first every host answers 200; in the second,
10 % hang past the attempt timeout (``--hang`` seconds, the service's
``SENTINMAIL_ATTEMPT_TIMEOUT`` being ``--attempt-timeout``) and 10 % answer
500. Both phases post the same number of events, spread evenly over their
hosts. The per-host rate limit is raised as in the throughput benchmark.

What is compared is the same work in both phases: the 80 % of hosts that are
healthy in both, and their events. Their ``deliveries_per_s`` (first POST of
the phase to their last arrival) and ``p99_ms`` with healthy neighbours, then
with bad ones, give ``throughput_ratio`` and ``p99_ratio``: a host's
deliveries should not slow down because its neighbours hang or fail. Each
phase also reports ``all_healthy``, the rate over every host healthy in that
phase (50 hosts, then 40), and ``all_healthy_throughput_ratio`` compares
those: 80 % of the deliveries against 100 %, which reads as 0.8 for a
dispatcher whose hosts are each bound by their own pace (the default
per-host rate limit, say) however well they are isolated, and which rises
above that only as far as bad hosts cost less CPU than healthy ones.

The pair runs ``--rounds`` times (3), each on a fresh service and database
(a round's bad hosts keep costing after it: their attempts time out 15 s
later, then come retries and probes), and the round with the median
``throughput_ratio`` is the result: this virtual machine's speed drifts by
20-30 % within a minute, which one pair alone would read as isolation, or
hide. Every round is in the result (``rounds``); ``lost`` counts them all.

``--hanging`` and ``--failing`` change the shares of bad hosts, and
``--max-in-flight`` / ``--max-in-flight-per-host`` the service's capacity:
with half the hosts hanging and the capacity scaled down to what they can
fill, the run shows whether hanging hosts can hold the capacity the healthy
ones need (see "What limits the numbers" in ``benchmarks/README.md``).

By default events are posted flat out, faster than they can be delivered, so
latency is mostly the time the backlog takes to drain; ``--ingest-rate``
paces the posts below the delivery rate to compare latency without a backlog.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from benchmarks import load
from benchmarks.harness import (
    Arrivals,
    Bench,
    CpuWindow,
    Outcome,
    bench_main,
    common_options,
    machine,
    progress,
)
from benchmarks.load import Host
from dispatcher.actors import shard
from models.endpoints import origin_of


def behaviours(hosts: int, hanging: float = 0.1, failing: float = 0.1) -> list[str]:
    """That share of hosts hanging and failing (at least one of each asked for), evenly mixed.

    Evenly, because events are posted host by host: bad hosts bunched at the
    front would have their events ingested first, and every healthy delivery
    of the phase would start that much later.
    """

    def count(share: float) -> int:
        return max(1, round(hosts * share)) if share > 0 else 0

    # Each kind spread over its own range, hanging first where they tie.
    bad = sorted(
        ((k + 0.5) / n, order, kind)
        for order, (kind, n) in enumerate((("hang", count(hanging)), ("error", count(failing))))
        for k in range(n)
    )
    if len(bad) >= hosts:
        raise ValueError("no healthy host would be left to measure")
    mix = ["ok"] * hosts
    for k, (_, _, kind) in enumerate(bad):
        mix[int((k + 0.5) * hosts / len(bad))] = kind
    return mix


async def phase(
    bench: Bench,
    hosts: list[Host],
    behaviour: list[str],
    steady: list[bool],
    *,
    events: int,
    batch: int,
    post_concurrency: int,
    within: float,
    start: int,
    ingest_rate: float | None,
) -> dict[str, Any]:
    """Post ``events`` over ``hosts``; measure the healthy ones, and the ``steady`` ones apart.

    ``steady`` marks the hosts that are healthy in both phases: the same hosts
    with the same events, whose rate and latency are compared.
    """
    healthy = [h for h, b in zip(hosts, behaviour, strict=True) if b == "ok"]
    compared = [h for h, keep in zip(hosts, steady, strict=True) if keep]
    batches = load.spread(hosts, bench.tag, events, batch, start=start)
    expected = {(b.host.index, e["id"]) for b in batches for e in b.events if b.host in healthy}
    arrivals = Arrivals(bench.receivers.control)
    await arrivals.poll(bench.http)
    ingest = load.Ingest()
    cpu = CpuWindow(bench)
    cpu.start()
    with progress() as bar:
        posting = asyncio.ensure_future(
            bench.post(batches, ingest, post_concurrency, bar, pace=ingest_rate)
        )
        endpoints = [h.endpoint_id for h in healthy]
        label = "delivered (healthy)"
        await bench.wait(
            arrivals, expected, endpoints, bar, within=within, until=posting, label=label
        )
        await posting
    cpu_seconds = cpu.stop()
    outcome = await bench.outcome(arrivals, expected, healthy, ingest.accepted_at)
    mine = {h.index for h in compared}
    same = await bench.outcome(
        arrivals, {k for k in expected if k[0] in mine}, compared, ingest.accepted_at
    )

    def per_s(counted: Outcome) -> float:
        span = counted.last_arrival - ingest.first_post
        return round(len(counted.delivered) / span, 1) if span > 0 else 0.0

    bad = {h.index: b for h, b in zip(hosts, behaviour, strict=True) if b != "ok"}
    requests_to_bad = {"hang": 0, "error": 0}
    for (host, _), n in arrivals.counts.items():
        if host in bad:
            requests_to_bad[bad[host]] += n
    # Origins are sharded over the delivery actors by hash: how evenly did these fall?
    shares = Counter(
        shard(origin_of(f"http://127.0.0.1:{h.port}/hook"), bench.delivery_actors) for h in healthy
    )
    return {
        "deliveries_per_s": per_s(same),
        "p50_ms": same.p(50),
        "p99_ms": same.p(99),
        "compared_hosts": len(compared),
        "compared_deliveries": len(same.delivered),
        "all_healthy": {
            "deliveries_per_s": per_s(outcome),
            "p99_ms": outcome.p(99),
            "hosts": len(healthy),
            "deliveries": len(outcome.delivered),
        },
        "lost": outcome.lost,
        "duplicates": outcome.duplicates,
        "requests_to_bad_hosts": requests_to_bad,
        "busiest_actor_share": round(max(shares.values()) / len(healthy), 3),
        "cpu_seconds": cpu_seconds,
    }


# What every round reports of each phase.
_ROUND_FIELDS = ("deliveries_per_s", "p99_ms", "lost", "duplicates")


async def run(
    *,
    events: int,
    hosts: int,
    rounds: int,
    database_url: str | None,
    create_database: bool,
    batch: int,
    post_concurrency: int,
    within: float,
    host_rate_limit: float,
    attempt_timeout: float,
    hang: float,
    ingest_rate: float | None,
    hanging: float = 0.1,
    failing: float = 0.1,
    max_in_flight: int | None = None,
    max_in_flight_per_host: int | None = None,
) -> dict[str, Any]:
    """Run both phases ``rounds`` times, each pair on a service of its own; return the result."""
    info = machine()
    env = {
        "SENTINMAIL_HOST_RATE_LIMIT": str(host_rate_limit),
        "SENTINMAIL_ATTEMPT_TIMEOUT": str(attempt_timeout),
    }
    if max_in_flight is not None:
        env["SENTINMAIL_MAX_IN_FLIGHT"] = str(max_in_flight)
    if max_in_flight_per_host is not None:
        env["SENTINMAIL_MAX_IN_FLIGHT_PER_HOST"] = str(max_in_flight_per_host)
    bad_mix = behaviours(hosts, hanging, failing)
    steady = [b == "ok" for b in bad_mix]
    options: dict[str, Any] = {
        "events": events,
        "batch": batch,
        "post_concurrency": post_concurrency,
        "within": within,
        "ingest_rate": ingest_rate,
    }
    phases: list[dict[str, Any]] = []
    peak_rss = 0
    for _ in range(max(rounds, 1)):
        # A fresh service and database per round: what one round's bad hosts leave
        # behind (timeouts firing 15 s later, retries, probes) must not slow the next.
        async with Bench(
            "isolation",
            database_url,
            create_database=create_database,
            receivers=2 * hosts,
            env=env,
            hang=hang,
        ) as bench:
            await bench.receivers.set_behaviours(bench.http, ["ok"] * hosts + bad_mix)
            for n, mix in enumerate((["ok"] * hosts, bad_mix)):
                fresh = await bench.hosts(range(n * hosts, (n + 1) * hosts))
                phases.append(await phase(bench, fresh, mix, steady, start=n * events, **options))
            peak_rss = max(peak_rss, bench.sampler.peak_rss)

    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else 0.0

    pairs = list(zip(phases[0::2], phases[1::2], strict=True))
    ratios = [ratio(bad["deliveries_per_s"], ok["deliveries_per_s"]) for ok, bad in pairs]
    healthy, with_bad = pairs[sorted(range(len(pairs)), key=ratios.__getitem__)[len(pairs) // 2]]
    all_healthy = [
        ratio(bad["all_healthy"]["deliveries_per_s"], ok["all_healthy"]["deliveries_per_s"])
        for ok, bad in pairs
    ]
    return {
        "benchmark": "isolation",
        "database": bench.backend,
        "healthy_only": healthy,
        "with_bad_hosts": with_bad,
        "throughput_ratio": ratio(with_bad["deliveries_per_s"], healthy["deliveries_per_s"]),
        "p99_ratio": ratio(with_bad["p99_ms"], healthy["p99_ms"]),
        "all_healthy_throughput_ratio": sorted(all_healthy)[len(all_healthy) // 2],
        "lost": sum(phase["lost"] for phase in phases),
        "duplicates": sum(phase["duplicates"] for phase in phases),
        "rounds": [
            {
                "healthy_only": {key: ok[key] for key in _ROUND_FIELDS},
                "with_bad_hosts": {key: bad[key] for key in _ROUND_FIELDS},
                "throughput_ratio": round_ratio,
                "all_healthy_throughput_ratio": aggregate,
            }
            for (ok, bad), round_ratio, aggregate in zip(pairs, ratios, all_healthy, strict=True)
        ],
        "events_per_phase": events,
        "hosts": hosts,
        "bad_hosts": {"hang": bad_mix.count("hang"), "error": bad_mix.count("error")},
        "attempt_timeout_s": attempt_timeout,
        "hang_s": hang,
        "capacity": {"max_in_flight": max_in_flight, "per_host": max_in_flight_per_host},
        "host_rate_limit": host_rate_limit,
        "ingest_rate": ingest_rate,
        "peak_rss_mb": round(peak_rss / 2**20, 1),
        "machine": info,
    }


def main() -> None:
    """Parse options, run, write and print the result."""
    parser = common_options(__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="per phase")
    parser.add_argument("--hosts", type=int, default=50, help="per phase")
    parser.add_argument(
        "--rounds", type=int, default=3, help="pairs of phases; the median pair counts"
    )
    parser.add_argument("--host-rate-limit", type=float, default=100_000.0)
    parser.add_argument("--attempt-timeout", type=float, default=15.0, help="the service's")
    parser.add_argument("--hang", type=float, default=20.0, help="seconds a hanging host waits")
    parser.add_argument(
        "--ingest-rate", type=float, default=None, help="events posted per s (default: flat out)"
    )
    parser.add_argument("--hanging", type=float, default=0.1, help="share of hosts that hang")
    parser.add_argument("--failing", type=float, default=0.1, help="share that answer 500")
    parser.add_argument("--max-in-flight", type=int, default=None, help="the service's")
    parser.add_argument("--max-in-flight-per-host", type=int, default=None, help="the service's")
    bench_main("isolation", parser, run)


if __name__ == "__main__":
    main()
