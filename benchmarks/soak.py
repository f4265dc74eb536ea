"""Soak: a steady load for minutes with a short retention; rows and size must level off.

``python -m benchmarks.soak [--minutes 10] [--rate 1000] [--retention 60] [--hosts 10]``

Events are posted at ``--rate`` per second (batches of ``--batch``) to healthy
hosts for ``--minutes``, with ``SENTINMAIL_RETENTION_DAYS`` set to
``--retention`` seconds. Every ``--sample-every`` seconds it records the rows
of each table, the database's size on disk (SQLite: the file, its WAL and
its free pages; PostgreSQL: ``pg_database_size``), the backlog and what
retention has purged, read from ``/metrics``. Rows live about the retention
plus a purge pass, so after that long the counts and the size should stop
growing: ``leveled`` compares the last third of the run with the middle one
(at most 10 % more). Writes ``results/soak.json`` and ``results/soak.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from benchmarks import load
from benchmarks.harness import RESULTS, Arrivals, Bench, machine, run_main, stderr, write_result
from benchmarks.service import label

TABLES = ("event", "delivery", "attempt")


def database_size(engine: Engine, database_url: str) -> dict[str, int]:
    """Bytes on disk: SQLite's file and WAL and its free pages; PostgreSQL's database."""
    url = make_url(database_url)
    with engine.connect() as connection:
        if url.get_backend_name() == "sqlite":
            path = Path(url.database or "")
            wal = Path(f"{path}-wal")
            page = int(connection.exec_driver_sql("PRAGMA page_size").scalar_one())
            free = int(connection.exec_driver_sql("PRAGMA freelist_count").scalar_one())
            return {
                "bytes": path.stat().st_size,
                "wal_bytes": wal.stat().st_size if wal.exists() else 0,
                "free_bytes": page * free,
            }
        size = connection.exec_driver_sql("SELECT pg_database_size(current_database())")
        return {"bytes": int(size.scalar_one())}


def rss_by_process(bench: Bench) -> dict[str, float]:
    """MiB of resident memory now, per kind of service process (a leak shows as a slope)."""
    totals: dict[str, float] = {}
    for proc in bench.service.processes():
        try:
            rss = proc.memory_info().rss
        except psutil.Error:
            continue
        kind = label(proc).split(".")[0]  # "SchedulerActor.record": the method it runs
        totals[kind] = round(totals.get(kind, 0.0) + rss / 2**20, 1)
    return totals


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            t: int(connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in TABLES
        }


async def scrape(http: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """The samples of ``/metrics`` that tell how the service keeps up."""
    async with http.get(f"{base_url}/metrics") as response:
        body = await response.text()
    wanted = {
        "sentinmail_backlog_deliveries",
        "sentinmail_purged_rows_total",
        "sentinmail_deliveries_finished_total",
        "sentinmail_oldest_event_age_seconds",
        "sentinmail_in_flight_deliveries",
    }
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name in wanted:
                key = sample.name + "".join(f"{{{v}}}" for v in sample.labels.values())
                found[key] = sample.value
    return found


async def post_steadily(
    bench: Bench, hosts: list[load.Host], rate: float, batch: int, seconds: float
) -> int:
    """Post batches of new events at ``rate`` events/s for ``seconds`` (made as needed).

    Returns how many were accepted. Fails if the service falls behind (64 posts waiting).
    """
    url = f"{bench.service.base_url}/api/emails/events/"
    started = time.monotonic()
    sent = 0
    in_flight: set[asyncio.Task[None]] = set()

    async def post(host: load.Host, events: list[dict[str, Any]]) -> None:
        async with bench.http.post(
            url,
            data=json.dumps(events),
            headers={"X-API-Key": host.key, "Content-Type": "application/json"},
        ) as response:
            if response.status != 202:
                raise RuntimeError(f"ingestion answered {response.status}")
            await response.read()

    n = 0
    while time.monotonic() - started < seconds:
        await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
        host = hosts[n % len(hosts)]
        events = load.make_events(bench.tag, sent, batch, "opened")
        task = asyncio.ensure_future(post(host, events))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        sent += batch
        n += 1
        if len(in_flight) > 64:
            raise RuntimeError("the service fell behind the posting rate")
    await asyncio.gather(*in_flight)
    stderr.print(f"posted {sent} events in {time.monotonic() - started:.0f} s")
    return sent


def leveled(samples: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The peak of ``key`` in the last third of the run against the middle third."""
    values = [s[key] for s in samples]
    third = len(values) // 3
    if third < 1:
        return {"leveled": None}
    middle, last = max(values[third : 2 * third]), max(values[2 * third :])
    return {
        "middle_third_max": middle,
        "last_third_max": last,
        "growth": round(last / middle - 1, 3) if middle else None,
        "leveled": last <= 1.1 * middle,
    }


def plot(samples: list[dict[str, Any]], retention: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t"] / 60 for s in samples]
    fig, (rows, size) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for table in TABLES:
        rows.plot(minutes, [s["rows"][table] for s in samples], label=table)
    rows.set_ylabel("rows")
    rows.set_title(f"soak: steady load, retention {retention:g} s")
    rows.legend(loc="upper left")
    size.plot(minutes, [s["size"]["bytes"] / 2**20 for s in samples], label="database")
    if "wal_bytes" in samples[0]["size"]:
        size.plot(minutes, [s["size"]["wal_bytes"] / 2**20 for s in samples], label="WAL")
        size.plot(minutes, [s["size"]["free_bytes"] / 2**20 for s in samples], label="free pages")
    size.set_ylabel("MiB on disk")
    size.set_xlabel("minutes")
    size.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def run(options: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    env = {
        "SENTINMAIL_RETENTION_DAYS": repr(options.retention / 86400),
        "SENTINMAIL_HOST_RATE_LIMIT": "100000",
    }
    seconds = options.minutes * 60
    samples: list[dict[str, Any]] = []
    async with Bench(
        "soak",
        options.database_url,
        create_database=options.create_database,
        receivers=options.hosts,
        env=env,
    ) as bench:
        hosts = await bench.hosts(range(options.hosts))
        started = time.monotonic()
        posting = asyncio.ensure_future(
            post_steadily(bench, hosts, options.rate, options.batch, seconds)
        )
        while not posting.done():
            await asyncio.sleep(options.sample_every)
            rows, size = await asyncio.gather(
                asyncio.to_thread(row_counts, bench.engine),
                asyncio.to_thread(database_size, bench.engine, bench.database_url),
            )
            sample = {
                "t": round(time.monotonic() - started, 1),
                "rows": rows,
                "size": size,
                "metrics": await scrape(bench.http, bench.service.base_url),
                "rss_mb": await asyncio.to_thread(rss_by_process, bench),
            }
            samples.append(sample)
            stderr.print(
                f"{sample['t']:>6.0f} s  rows {rows}  size {size['bytes'] / 2**20:.1f} MiB"
            )
        posted = await posting
        # Every event arrived, once: retention deleted only what was done with.
        arrivals = Arrivals(bench.receivers.control)
        deadline = time.monotonic() + options.within
        while time.monotonic() < deadline:
            await arrivals.poll(bench.http)
            if len(arrivals.first) >= posted:
                break
            await asyncio.sleep(0.5)
    total_rows = [{"t": s["t"], "total": sum(s["rows"].values())} for s in samples]
    first, last = (samples[0]["rss_mb"], samples[-1]["rss_mb"]) if samples else ({}, {})
    result: dict[str, Any] = {
        "benchmark": "soak",
        "database": make_url(bench.database_url).get_backend_name(),
        "minutes": options.minutes,
        "rate": options.rate,
        "retention_s": options.retention,
        "events_posted": posted,
        "lost": posted - len(arrivals.first),
        "duplicates": sum(1 for n in arrivals.counts.values() if n > 1),
        "rows": leveled(total_rows, "total"),
        "size": leveled([{"bytes": s["size"]["bytes"]} for s in samples], "bytes"),
        "rss_mb_first_last": {k: (first.get(k), last.get(k)) for k in sorted({*first, *last})},
        "samples": samples,
        "machine": info,
    }
    options.results_dir.mkdir(parents=True, exist_ok=True)
    if samples:
        plot(samples, options.retention, options.results_dir / "soak.png")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--retention", type=float, default=60.0, help="seconds")
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--batch", type=int, default=50, help="events per POST")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument(
        "--timeout", dest="within", type=float, default=90.0, help="seconds to wait for arrivals"
    )
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--create-database", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    options = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    write_result("soak", run_main(run(options)), options.results_dir)


if __name__ == "__main__":
    main()
