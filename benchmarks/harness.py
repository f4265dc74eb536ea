"""What every benchmark shares: the running stack, arrivals, progress, the raw limit, results.

A :class:`Bench` is the whole stack of one run, started and stopped as a unit:
a receivers process (``benchmarks.receivers``), ``sentinmail serve --dev`` on a
fresh SQLite database (or ``--database-url``), a sampler of the service's
memory and CPU, an HTTP client and a read-only engine on the database.
Whatever happens, leaving the ``async with`` stops every process it started.

A delivery counts only when its receiver got it *and* the database says
``succeeded``; its latency is its first arrival minus the moment the 202 of
its batch came back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from benchmarks import load
from benchmarks.load import Host
from benchmarks.service import Sampler, Service, process_cpu
from dispatcher.lane import LanePolicy
from dispatcher.transport import AddressPolicy, HttpTransport
from dispatcher.worker import DeliveryWorker, WorkerPolicy
from models.endpoints import new_secret
from models.jobs import Job, Result

RESULTS = Path(__file__).parent / "results"
stderr = Console(stderr=True)

Key = tuple[int, str]
"""A delivery as the receivers see it: (host index, event id)."""


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; 0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def common_options(description: str) -> argparse.ArgumentParser:
    """Options every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--database-url", default=None, help="URL of an empty database (default: a fresh SQLite)"
    )
    parser.add_argument(
        "--create-database",
        action="store_true",
        help="create the PostgreSQL database of --database-url first, drop it at the end",
    )
    parser.add_argument("--batch", type=int, default=500, help="events per POST")
    parser.add_argument("--post-concurrency", type=int, default=4, help="POSTs in flight")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where to write <name>.json"
    )
    parser.add_argument(
        "--timeout",
        dest="within",
        metavar="SECONDS",
        type=float,
        default=90.0,
        help="seconds to wait for deliveries",
    )
    return parser


def bench_main(
    name: str | Callable[[dict[str, Any]], str],
    parser: argparse.ArgumentParser,
    run: Callable[..., Coroutine[Any, Any, dict[str, Any]]],
) -> None:
    """Parse the options, run ``run`` with them as keywords, write and print the result.

    Every option's ``dest`` is the name of one of ``run``'s keyword arguments.
    ``name`` may depend on the options (a mode of a benchmark gets its own results).
    """
    options = vars(parser.parse_args())
    results_dir = options.pop("results_dir")
    named = name if isinstance(name, str) else name(options)
    write_result(named, run_main(run(**options)), results_dir)


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the service's code differs from it."""
    root = Path(__file__).parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        modified = git("status", "--porcelain", "--", "api", "dispatcher", "models")
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"commit": commit or None, "service_code_modified": bool(modified)}


def machine() -> dict[str, Any]:
    """Where the numbers come from."""
    return {
        "code": code_version(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "ray": version("ray"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_main(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """``asyncio.run(main)``, with SIGTERM handled like Ctrl-C: everything started is stopped."""

    async def guarded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        stderr.print("[yellow]Stopped by SIGTERM; every process started was stopped.[/]")
        raise SystemExit(128 + signal.SIGTERM) from None


def write_result(name: str, result: dict[str, Any], results: Path = RESULTS) -> None:
    """Write ``<results>/<name>.json`` and print the same JSON as the last stdout line.

    A copy goes to ``<name>.<database backend>.json``, so that the summary can
    put SQLite and PostgreSQL runs side by side.
    """
    results.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    (results / f"{name}.json").write_text(text)
    if "database" in result:
        (results / f"{name}.{result['database']}.json").write_text(text)
    print(json.dumps(result), flush=True)


@contextmanager
def progress() -> Iterator[Progress]:
    """A rich progress display on stderr (stdout is kept for the result)."""
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as bar:
        yield bar


class Receivers:
    """The receivers process and its control port."""

    def __init__(self, hosts: int, hang: float, delay: float) -> None:
        command = [sys.executable, "-m", "benchmarks.receivers", "--hosts", str(hosts)]
        command += ["--hang", str(hang), "--delay", str(delay)]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], 30)
        ready = json.loads(self.proc.stdout.readline() or "null") if readable else None
        if not ready:
            self.stop()
            raise RuntimeError("the receivers did not start within 30 s")
        self.control = f"http://127.0.0.1:{ready['control']}"
        self.ports: list[int] = ready["ports"]

    async def set_behaviours(self, http: aiohttp.ClientSession, behaviours: list[str]) -> None:
        async with http.put(f"{self.control}/behaviours", json={"behaviours": behaviours}) as r:
            r.raise_for_status()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the receivers exit when their stdin closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Arrivals:
    """Every recorded arrival, fetched incrementally from the receivers."""

    control: str
    first: dict[Key, float] = field(default_factory=dict)
    counts: Counter[Key] = field(default_factory=Counter)
    _next: int = 0

    async def poll(self, http: aiohttp.ClientSession) -> None:
        async with http.get(f"{self.control}/records", params={"since": str(self._next)}) as r:
            got = await r.json()
        self._next = got["next"]
        for host, event_id, at in got["records"]:
            key = (int(host), str(event_id))
            self.counts[key] += 1
            self.first.setdefault(key, float(at))


@dataclass
class Outcome:
    """Which expected deliveries counted, and their latencies."""

    delivered: set[Key]
    lost: int
    latencies_ms: list[float]
    last_arrival: float
    duplicates: int

    def p(self, q: float) -> float:
        return round(percentile(self.latencies_ms, q), 1)


class CpuWindow:
    """CPU seconds spent between :meth:`start` and :meth:`stop`, by whom.

    The service's processes by kind, the PostgreSQL server (if any), the
    receivers, this client, and everything else on the machine (other work
    slows a run down: report it).
    """

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self._marks: tuple[float, ...] = ()

    @staticmethod
    def _busy() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    @staticmethod
    def _database_server() -> float:
        """CPU of the PostgreSQL server's processes (the service's database, not noise)."""
        total = 0.0
        for proc in psutil.process_iter(["name"]):
            if (proc.info["name"] or "").startswith("postgres"):
                try:
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                total += times.user + times.system
        return total

    def _now(self) -> tuple[float, float, float, float, float]:
        receivers = process_cpu(self.bench.receivers.proc.pid)
        database = self._database_server()
        return time.monotonic(), self._busy(), receivers, process_cpu(), database

    def start(self) -> None:
        self.bench.sampler.reset_cpu()
        self._marks = self._now()

    def stop(self) -> dict[str, Any]:
        service = self.bench.sampler.cpu_seconds()
        wall, busy, receivers, client, database = (
            b - a for a, b in zip(self._marks, self._now(), strict=True)
        )
        ours = sum(service.values()) + receivers + client + database
        return {
            "wall_s": round(wall, 2),
            "machine_busy_s": round(busy, 2),
            "service": service,
            "service_total": round(sum(service.values()), 2),
            "database_server": round(database, 2),
            "receivers": round(receivers, 2),
            "benchmark_client": round(client, 2),
            "other_processes": round(max(0.0, busy - ours), 2),
        }


class Bench:
    """One run's stack; ``async with Bench(...) as bench`` starts it and always stops it."""

    def __init__(
        self,
        name: str,
        database_url: str | None,
        *,
        receivers: int,
        env: dict[str, str] | None = None,
        hang: float = 20.0,
        delay: float = 0.05,
        create_database: bool = False,
        serve_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.create_database = create_database and database_url is not None
        self._created = False  # only a database this run created is dropped
        self._tmp = Path(tempfile.mkdtemp(prefix=f"sentinmail-bench-{name}-"))
        self.database_url = database_url or f"sqlite:///{self._tmp}/bench.db"
        self.backend = make_url(self.database_url).get_backend_name()
        self.tag = load.run_tag()
        self.service = Service(self.database_url, env or {}, list(serve_args), log_dir=self._tmp)
        self.sampler = Sampler(self.service)
        self._receiver_options = (receivers, hang, delay)
        self._receivers: Receivers | None = None
        self._http: aiohttp.ClientSession | None = None
        self._engine: Engine | None = None
        self.delivery_actors = 0
        """As the service's ``/healthz`` counted them when it started."""

    @property
    def receivers(self) -> Receivers:
        assert self._receivers is not None, "use Bench in `async with`"
        return self._receivers

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "use Bench in `async with`"
        return self._http

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "use Bench in `async with`"
        return self._engine

    @property
    def ports(self) -> list[int]:
        return self.receivers.ports

    async def __aenter__(self) -> Bench:
        try:
            if self.create_database:
                await asyncio.to_thread(load.create_database, self.database_url)
                self._created = True
            self._receivers = Receivers(*self._receiver_options)
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
            self._engine = load.reader(self.database_url)
            await self.start_service()
            self.sampler.start()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Each step on its own: one failing must not leave another's processes running.
        try:
            await asyncio.to_thread(self.service.stop)
        finally:
            try:
                if self._receivers is not None:
                    self._receivers.stop()
            finally:
                if self.sampler.is_alive():
                    self.sampler.stop()
                if self._http is not None:
                    await self._http.close()
                if self._engine is not None:
                    self._engine.dispose()
                if self._created:
                    await asyncio.to_thread(load.drop_database, self.database_url)
        if exc_type is not None:
            stderr.print(f"[red]{self.name} failed; the service's log ends with:[/]")
            stderr.print(self.service.log_tail(), markup=False, highlight=False)
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def start_service(self, within: float = 90.0) -> float:
        """Start the service and wait until ``/healthz`` says ok; return the seconds it took."""
        started = time.monotonic()
        self.service.start()
        while time.monotonic() < started + within:
            if not self.service.running():
                raise RuntimeError(f"the service exited:\n{self.service.log_tail()}")
            try:
                async with self.http.get(
                    f"{self.service.base_url}/healthz", timeout=aiohttp.ClientTimeout(total=10)
                ) as r:
                    health = await r.json() if r.status == 200 else {}
                    if health.get("status") == "ok":
                        self.delivery_actors = len(health["dispatcher"]["delivery_actors"])
                        return time.monotonic() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.25)
        raise RuntimeError(f"the service was not healthy within {within} s")

    async def hosts(self, indices: Sequence[int], *, rate_limit: float | None = None) -> list[Host]:
        """An account and an endpoint for each receiver port in ``indices``."""
        names = [f"bench-{self.tag}-{i}" for i in indices]
        keys = await asyncio.to_thread(load.create_keys, self.database_url, names)
        ports = [self.ports[i] for i in indices]
        base = self.service.base_url
        return await load.register(self.http, base, keys, ports, indices, rate_limit=rate_limit)

    async def post(
        self,
        batches: Sequence[load.Batch],
        ingest: load.Ingest,
        concurrency: int,
        bar: Progress,
        label: str = "accepted (events)",
        pace: float | None = None,
    ) -> None:
        """Post ``batches`` with a progress line (see :func:`load.post_batches`)."""
        task = bar.add_task(label, total=sum(len(b.events) for b in batches))
        await load.post_batches(
            self.http,
            self.service.base_url,
            batches,
            ingest,
            concurrency=concurrency,
            on_accepted=lambda n: bar.advance(task, n),
            pace=pace,
        )

    async def wait(
        self,
        arrivals: Arrivals,
        expected: set[Key],
        endpoints: Sequence[str],
        bar: Progress,
        *,
        within: float,
        label: str = "delivered",
        until: asyncio.Future[Any] | None = None,
    ) -> bool:
        """Poll arrivals until every expected delivery arrived and the database agrees.

        Returns False at ``within`` seconds, or as soon as ``until`` (the
        posting task) failed.
        """
        task = bar.add_task(label, total=len(expected))
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            await arrivals.poll(self.http)
            got = sum(1 for key in expected if key in arrivals.first)
            bar.update(task, completed=got)
            if until is not None and until.done() and until.exception() is not None:
                return False
            if got >= len(expected) and (until is None or until.done()):
                stored = await asyncio.to_thread(load.count_succeeded, self.engine, endpoints)
                if stored >= len(expected):
                    return True
            await asyncio.sleep(0.25)
        return False

    async def outcome(
        self,
        arrivals: Arrivals,
        expected: set[Key],
        hosts: Sequence[Host],
        accepted_at: dict[str, float],
    ) -> Outcome:
        """Count what was delivered (received and stored as succeeded) and its latency."""
        await arrivals.poll(self.http)
        index_of = {h.endpoint_id: h.index for h in hosts}
        stored = await asyncio.to_thread(load.succeeded, self.engine, list(index_of))
        in_db = {(index_of[endpoint], event_id) for event_id, endpoint in stored}
        delivered = {key for key in expected if key in arrivals.first and key in in_db}
        latencies = [(arrivals.first[k] - accepted_at[k[1]]) * 1000 for k in delivered]
        return Outcome(
            delivered=delivered,
            lost=len(expected) - len(delivered),
            latencies_ms=latencies,
            last_arrival=max((arrivals.first[k] for k in delivered), default=0.0),
            duplicates=sum(1 for k in expected if arrivals.counts[k] > 1),
        )

    async def bodies(self, keys: Sequence[Key]) -> list[tuple[int, bytes, str]]:
        """``(port, body, event id)`` of these deliveries, as the service sent them."""
        found = await asyncio.to_thread(load.bodies, self.engine, [k[1] for k in keys])
        return [(self.ports[host], found[event_id], event_id) for host, event_id in keys]


@dataclass(frozen=True)
class RawLimit:
    """What the plain client reached: its best rate, its rate per concurrency, its CPU."""

    per_s: float
    by_concurrency: dict[int, float]
    cpu_ms: float
    """This process's CPU per request at the best concurrency."""


async def raw_limit(
    requests: Sequence[tuple[int, bytes, str]],
    concurrencies: Sequence[int] = (16, 32, 64, 128),
    rounds: int = 2,
    within: float = 60.0,
) -> RawLimit:
    """POSTs per second of one plain aiohttp client at its best concurrency.

    The same bodies to the same receivers (``POST /raw``, answered like
    ``/hook`` but not recorded), keep-alive, no Ray, no database, no signing.
    Each concurrency gets a fresh connection pool and the whole list, ``rounds``
    times (the best round counts: other load on the machine only slows a round).
    """
    rates: dict[int, float] = {}
    cpu_ms: dict[int, float] = {}
    for concurrency in [c for _ in range(rounds) for c in concurrencies]:
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            queue = list(reversed(requests))

            async def worker(http: aiohttp.ClientSession = http, queue: list[Any] = queue) -> None:
                while queue:
                    port, body, event_id = queue.pop()
                    headers = {"content-type": "application/json", "webhook-id": event_id}
                    async with http.post(
                        f"http://127.0.0.1:{port}/raw", data=body, headers=headers
                    ) as response:
                        await response.read()

            started, cpu = time.monotonic(), time.process_time()
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), within)
            rate = round(len(requests) / (time.monotonic() - started), 1)
            if rate > rates.get(concurrency, 0.0):
                rates[concurrency] = rate
                cpu_ms[concurrency] = round((time.process_time() - cpu) * 1000 / len(requests), 3)
    best = max(rates, key=rates.__getitem__, default=None)
    return RawLimit(rates[best] if best else 0.0, rates, cpu_ms[best] if best else 0.0)


async def worker_limit(
    requests: Sequence[tuple[int, bytes, str]],
    host_concurrency: int,
    rounds: int = 2,
    within: float = 60.0,
) -> dict[str, float]:
    """The same POSTs through the delivery actor's own code, without Ray or a database.

    One ``DeliveryWorker`` with the real ``HttpTransport`` in this process:
    lanes (one per receiver port, ``host_concurrency`` attempts each), signing,
    outcomes and results, all as in a delivery actor; results go nowhere. What
    it reaches is the most any dispatcher built on this worker can deliver
    here, whatever the database and Ray cost. Also reports this process's CPU
    per request, for it and for the plain client (``raw_cpu_ms``).
    """
    secret = new_secret()
    jobs = [
        Job(
            delivery_id=i,
            event_id=event_id,
            endpoint_id=f"port-{port}",
            url=f"http://127.0.0.1:{port}/raw",
            origin=f"http://127.0.0.1:{port}",
            secret=secret,
            rate_limit=None,
            priority=1,
            attempts=0,
            body=body,
        )
        for i, (port, body, event_id) in enumerate(requests)
    ]
    policy = WorkerPolicy(
        lanes=LanePolicy(concurrency=host_concurrency, rate=1e9), flush_interval=0.01
    )

    async def one_round() -> tuple[float, float]:
        reported = 0
        finished = asyncio.Event()

        async def sink(results: list[Result]) -> None:
            nonlocal reported
            reported += len(results)
            if reported >= len(jobs):
                finished.set()

        transport = HttpTransport(AddressPolicy(allow_private=True))
        worker = DeliveryWorker(transport, sink, policy)
        started, cpu = time.monotonic(), time.process_time()
        worker.submit(jobs)
        try:
            await asyncio.wait_for(finished.wait(), within)
        finally:
            await worker.close()
        rate = len(jobs) / (time.monotonic() - started)
        return round(rate, 1), round((time.process_time() - cpu) * 1000 / len(jobs), 3)

    best = {"worker_limit_per_s": 0.0, "worker_cpu_ms": math.inf}
    for _ in range(rounds):
        rate, cpu_ms = await one_round()
        best["worker_limit_per_s"] = max(best["worker_limit_per_s"], rate)
        best["worker_cpu_ms"] = min(best["worker_cpu_ms"], cpu_ms)
    return best
