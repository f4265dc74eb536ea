"""``/metrics``: the service in Prometheus' text format, aggregates only.

Three sources make one exposition:

- **this API process's ingestion**: events accepted by type, duplicates, and
  the time from a request's arrival to its 202 (prometheus-client metrics,
  counted where the 202 is decided); requests refused because ingestion was
  saturated, and the events waiting for the writer (set by the group commit,
  ``models.group_commit``, as they change). They are this process's own; with
  ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client's multiprocess mode
  adds up the processes that share it (several API processes on one port).
- **the database**: the counters kept with the rows they count
  (``models.counters``: attempts, their durations, finished deliveries,
  purged rows, actor restarts) and the gauges read at a scrape
  (``models.gauges``: the backlog, disabled endpoints, the oldest event).
  Every replica serves the same values: aggregate them across replicas with
  ``max``, not ``sum``.
- **the dispatcher's actors**: what they hold now (in flight, queued, lanes,
  open breakers), one call per actor per scrape.

A scrape never hangs on a slow part: each answers within ``timeout`` or is
left out, and ``sentinmail_dispatcher_up`` / ``sentinmail_database_up`` say
so. An actor still silent keeps its one call pending rather than being
asked again. A scrape reuses readings younger than ``min_age`` (and the
database's for twenty times as long as they took to read, so that a huge
backlog, whose count reads every due index entry, cannot make scraping
costly).

No label or value names an account, an endpoint or a URL: labels are event
types, results, statuses, priorities, tables and actor kinds.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Protocol

import anyio.to_thread
from fastapi import Depends, Request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models import counters, gauges
from models.base import utcnow
from models.event_types import EmailEventType, Priority
from models.events import EventIn, Ingested

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PREFIX = "sentinmail_"
INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PRIORITIES = {Priority.HIGH: "high", Priority.LOW: "low"}
ACTORS = ("scheduler", "router", "delivery")


class DispatcherVitals(Protocol):
    """What ``/metrics`` asks of the dispatcher (``dispatcher.launch.Dispatcher``)."""

    def vitals(self, timeout: float) -> dict[str, list[Any]]:
        """Per actor kind, each actor's numbers (None if it did not answer within ``timeout``)."""


class IngestMetrics:
    """This process's ingestion: events accepted by type, duplicates, time to a 202, overload."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._accepted = Counter(
            f"{PREFIX}events_accepted",
            "Events accepted (committed, answered 202), by type.",
            ["type"],
            registry=registry,
        )
        self._by_type = {t.value: self._accepted.labels(t.value) for t in EmailEventType}
        self._duplicates = Counter(
            f"{PREFIX}events_duplicate",
            "Events submitted again with an id already accepted: nothing stored.",
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}ingest_request_duration_seconds",
            "Seconds from a POST of events arriving to its 202 (the commit included).",
            buckets=INGEST_BUCKETS,
            registry=registry,
        )
        self._saturated = Counter(
            f"{PREFIX}ingest_saturated_requests",
            "POSTs of events refused at once (503) because too many events waited for the"
            " database: nothing of them stored.",
            registry=registry,
        )
        # Several API processes: the sum over those alive (each sets its own value).
        self._waiting = Gauge(
            f"{PREFIX}ingest_waiting_events",
            "Events waiting for the ingestion writer's next commit.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def waiting(self, events: int) -> None:
        """The events now waiting for a commit (set on every change: ~0.4 us, 1.5 multiprocess)."""
        self._waiting.set(events)

    def saturated(self, _events: int) -> None:
        """Count a request refused because ingestion was saturated."""
        self._saturated.inc()

    def accepted(self, events: Sequence[EventIn], result: Ingested) -> None:
        """Count what one 202 accepted, by type (an id's first occurrence in the batch)."""
        if result.duplicates:
            self._duplicates.inc(len(result.duplicates))
            new = set(result.accepted)
            kept = []
            for event in events:
                if event.id is None:
                    kept.append(event)
                elif event.id in new:
                    new.discard(event.id)
                    kept.append(event)
            events = kept
        # One increment per type, not per event: a batch holds up to 1,000.
        for event_type, count in collections.Counter(e.type for e in events).items():
            self._by_type[event_type].inc(count)


class IngestTimer:
    """ASGI middleware: times each POST of events that ends in a 202, to its response's start."""

    def __init__(self, app: ASGIApp, metrics: IngestMetrics, path: str) -> None:
        self.app = app
        self.paths = {path.rstrip("/"), path.rstrip("/") + "/"}
        self.observe = metrics.duration.observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 202:
                self.observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed)


@dataclass(frozen=True)
class Readings:
    """One scrape's view of the database and of the dispatcher (None: did not answer)."""

    at: datetime
    counters: dict[counters.Key, int] | None
    gauges: gauges.Gauges | None
    actors: dict[str, list[Any]]
    """Per actor kind, each actor's answer (None: none in time); no actor without a dispatcher."""


@dataclass
class ServiceReadings:
    """Reads the database and the dispatcher for scrapes, within ``timeout``, cached briefly."""

    engine: Engine
    dispatcher: DispatcherVitals | None
    timeout: float = 1.0
    min_age: float = 1.0
    cost_factor: float = 20.0
    """The database is read again no sooner than this many times its last reading took."""
    clock: Callable[[], float] = time.monotonic
    _latest: Readings | None = field(default=None, init=False)
    _read_at: float = field(default=float("-inf"), init=False)
    _database: asyncio.Future[tuple[Any, Any, float]] | None = field(default=None, init=False)
    _database_cost: float = field(default=0.0, init=False)
    _database_latest: tuple[Any, Any] = field(default=(None, None), init=False)
    _database_at: float = field(default=float("-inf"), init=False)
    _actors: asyncio.Future[dict[str, list[Any]]] | None = field(default=None, init=False)
    _lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = field(default=None, init=False)

    async def read(self) -> Readings:
        """The latest readings, read again if older than ``min_age``."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:  # one per loop (test clients)
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:  # concurrent scrapes share one reading
            if self._latest is not None and self.clock() - self._read_at < self.min_age:
                return self._latest
            deadline = self.clock() + self.timeout
            database, actors = await asyncio.gather(
                self._read_database(deadline), self._read_actors(deadline)
            )
            self._latest = Readings(utcnow(), database[0], database[1], actors)
            self._read_at = self.clock()
            return self._latest

    async def _read_database(self, deadline: float) -> tuple[Any, Any]:
        now = self.clock()
        recent = now - self._database_at < self.cost_factor * self._database_cost
        if recent and self._database is None:
            return self._database_latest
        if (
            self._database is not None
            and self._database.get_loop() is not asyncio.get_running_loop()
        ):
            self._database = None  # begun under another event loop (another test client)
        if self._database is None:
            self._database = asyncio.ensure_future(anyio.to_thread.run_sync(self._query))
        done, _ = await asyncio.wait({self._database}, timeout=max(0.0, deadline - now))
        if not done:
            return None, None  # still reading: left out of this scrape, kept for the next
        future, self._database = self._database, None
        try:
            counted, gauged, cost = future.result()
        except Exception:
            return None, None
        self._database_cost, self._database_at = cost, self.clock()
        self._database_latest = (counted, gauged)
        return counted, gauged

    def _query(self) -> tuple[dict[counters.Key, int], gauges.Gauges, float]:
        started = time.perf_counter()
        with Session(self.engine) as session:
            counted = counters.read(session)
            gauged = gauges.read(session, utcnow())
        return counted, gauged, time.perf_counter() - started

    async def _read_actors(self, deadline: float) -> dict[str, list[Any]]:
        if self.dispatcher is None:  # none in this process: as if no actor answered
            return {kind: [] for kind in ACTORS}
        # ``vitals`` returns within the time it is given; waited on no longer than that
        # all the same (plus a margin), and while it runs no second one starts.
        pending = self._actors
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            remaining = max(0.0, deadline - self.clock())
            pending = asyncio.ensure_future(
                anyio.to_thread.run_sync(self.dispatcher.vitals, remaining)
            )
            self._actors = pending
        done, _ = await asyncio.wait({pending}, timeout=max(0.0, deadline - self.clock()) + 0.1)
        if not done:
            return {kind: [] for kind in ACTORS}
        self._actors = None
        try:
            answers: dict[str, list[Any]] = pending.result()
        except Exception:
            return {kind: [] for kind in ACTORS}
        return answers


class ServiceCollector:
    """The prometheus-client collector of one scrape's :class:`Readings`."""

    def __init__(self) -> None:
        self.readings: Readings | None = None

    def describe(self) -> list[Metric]:
        return []  # unchecked: the families depend on what answered

    def collect(self) -> Iterator[Metric]:
        readings = self.readings
        if readings is None:
            return
        if readings.counters is not None and readings.gauges is not None:
            yield from _database_families(readings.counters, readings.gauges, readings.at)
        yield _gauge("database_up", "1 if the database answered this scrape in time, else 0.",
                     float(readings.counters is not None))  # fmt: skip
        yield from _actor_families(readings.actors)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}{name}", documentation, value=value)


def _database_families(
    stored: dict[counters.Key, int], gauged: gauges.Gauges, now: datetime
) -> Iterator[Metric]:
    def value(name: str, key: str) -> float:
        return float(stored.get((name, key), 0))

    attempts = CounterMetricFamily(
        f"{PREFIX}attempts", "Delivery attempts recorded, by result.", labels=["result"]
    )
    for result in (counters.SUCCESS, counters.FAILURE):
        attempts.add_metric([result], value(counters.ATTEMPTS, result))
    yield attempts

    durations = HistogramMetricFamily(
        f"{PREFIX}attempt_duration_seconds",
        "Seconds each recorded attempt took, by result.",
        labels=["result"],
    )
    for result in (counters.SUCCESS, counters.FAILURE):
        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        for bound in [*map(str, counters.DURATION_BOUNDS_MS), counters.INF]:
            cumulative += value(counters.ATTEMPT_MS_BUCKET, f"{result}:{bound}")
            le = "+Inf" if bound == counters.INF else repr(int(bound) / 1000)
            buckets.append((le, cumulative))
        durations.add_metric(
            [result], buckets, sum_value=value(counters.ATTEMPT_MS_SUM, result) / 1000
        )
    yield durations

    finished = CounterMetricFamily(
        f"{PREFIX}deliveries_finished",
        "Deliveries that reached a final status, by status.",
        labels=["status"],
    )
    for status in counters.FINISHED_STATUSES:
        finished.add_metric([str(status)], value(counters.FINISHED, str(status)))
    yield finished

    purged = CounterMetricFamily(
        f"{PREFIX}purged_rows",
        "Rows deleted by retention, by table.",
        labels=["table"],
    )
    for table in ("event", "delivery", "attempt"):
        purged.add_metric([table], value(counters.PURGED, table))
    yield purged

    restarts = CounterMetricFamily(
        f"{PREFIX}actor_restarts",
        "Times Ray restarted a dispatcher actor, by kind.",
        labels=["actor"],
    )
    for actor in ACTORS:
        restarts.add_metric([actor], value(counters.ACTOR_RESTARTS, actor))
    yield restarts

    backlog = GaugeMetricFamily(
        f"{PREFIX}backlog_deliveries",
        "Deliveries due now and not claimed, by priority.",
        labels=["priority"],
    )
    oldest = GaugeMetricFamily(
        f"{PREFIX}backlog_oldest_seconds",
        "Seconds the oldest due, unclaimed delivery has waited, by priority (0: none waits).",
        labels=["priority"],
    )
    for priority, label in PRIORITIES.items():
        due = gauged.backlog[priority]
        backlog.add_metric([label], float(due.due))
        waited = (now - due.oldest_due_at).total_seconds() if due.oldest_due_at else 0.0
        oldest.add_metric([label], max(0.0, waited))
    yield backlog
    yield oldest
    yield _gauge("endpoints_disabled", "Endpoints disabled.", float(gauged.endpoints_disabled))
    age = (now - gauged.oldest_event_at).total_seconds() if gauged.oldest_event_at else 0.0
    yield _gauge(
        "oldest_event_age_seconds",
        "Age of the oldest event stored: how far back the data goes (retention keeps it near"
        " SENTINMAIL_RETENTION_DAYS).",
        max(0.0, age),
    )


def _actor_families(actors: dict[str, list[Any]]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        f"{PREFIX}actors_up",
        "Dispatcher actors that answered this scrape, by kind.",
        labels=["actor"],
    )
    everyone = True
    for kind in ACTORS:
        answers = actors.get(kind, [])
        answered = sum(1 for a in answers if a is not None)
        everyone = everyone and bool(answers) and answered == len(answers)
        up.add_metric([kind], float(answered))
    yield up
    yield _gauge(
        "dispatcher_up",
        "1 if every dispatcher actor answered this scrape in time, else 0 (numbers partial).",
        float(everyone),
    )
    scheduler = [a for a in actors.get("scheduler", []) if isinstance(a, dict)]
    delivery = [a for a in actors.get("delivery", []) if isinstance(a, dict)]

    def total(answers: list[dict[str, Any]], key: str) -> float:
        return float(sum(int(a.get(key, 0)) for a in answers))

    yield _gauge(
        "in_flight_deliveries",
        "Deliveries claimed by the dispatcher and not yet recorded.",
        total(scheduler, "in_flight"),
    )
    yield _gauge(
        "queued_deliveries", "Deliveries waiting in the hosts' lanes.", total(delivery, "queued")
    )
    yield _gauge("attempts_in_progress", "HTTP attempts under way.", total(delivery, "in_flight"))
    yield _gauge("lanes", "Hosts the delivery actors hold a lane for.", total(delivery, "lanes"))
    yield _gauge(
        "breakers_open", "Hosts whose circuit breaker is open.", total(delivery, "open_breakers")
    )


class Metrics:
    """Everything ``/metrics`` serves, for one API process."""

    def __init__(
        self,
        engine: Engine,
        dispatcher: DispatcherVitals | None,
        *,
        timeout: float = 1.0,
        min_age: float = 1.0,
    ) -> None:
        # No ``*_created`` series beside each counter: Prometheus needs none, and they
        # double the text. (A switch of prometheus-client's, for the whole process.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Every API process of this machine, added up (files in that directory).
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            self.ingest = IngestMetrics(registry=None)
        else:
            self.ingest = IngestMetrics(registry=self.registry)
        self.collector = ServiceCollector()
        self.registry.register(self.collector)
        self.readings = ServiceReadings(engine, dispatcher, timeout=timeout, min_age=min_age)

    async def exposition(self) -> bytes:
        """The text of one scrape."""
        self.collector.readings = await self.readings.read()
        return generate_latest(self.registry)


def get_ingest_metrics(request: Request) -> IngestMetrics:
    """This app's ingestion metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics.ingest


IngestMetricsDep = Annotated[IngestMetrics, Depends(get_ingest_metrics)]
