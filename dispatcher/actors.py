"""The Ray actors: thin shells around the Ray-free scheduler, router logic and worker.

    API ──wake──▶ SchedulerActor ──jobs──▶ RouterActor ──jobs by origin──▶ DeliveryActor k
                       ▲                                                      │
                       └──────────── results, lease renewals (batched) ───────┘

Every actor restarts when it dies (``max_restarts=-1``) and never retries a
call (``max_task_retries=0``): a retried call would send webhooks twice.
Work a dead actor held comes back when its leases expire, from the database.
All actors take no CPU from Ray's scheduler: they wait on I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import ray
from sqlmodel import Session

from dispatcher import logs
from dispatcher.capacity import Capacity
from dispatcher.retention import PurgePolicy, Purger, purge_continuously
from dispatcher.scheduler import Scheduler
from dispatcher.settings import Settings
from dispatcher.transport import AddressPolicy, HttpTransport
from dispatcher.worker import DeliveryWorker, WorkerPolicy
from models import counters
from models.base import utcnow
from models.db import make_engine
from models.jobs import Job, Result

log = logging.getLogger(__name__)

DELIVERY_PREFIX = "delivery-"
ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": 0}


def shard(origin: str, shards: int) -> int:
    """The delivery actor of ``origin``: a hash stable across processes and restarts."""
    return zlib.crc32(origin.encode()) % shards


def _announce(kind: str, settings: Settings) -> None:
    """Set up this actor's logging; log its start, or log and count its restart.

    Ray restarts a dead actor in a new process and runs ``__init__`` again
    (``max_restarts=-1``): the counter of restarts is kept in the database,
    with the service's other counters, so that it outlives every process.
    """
    logs.configure_from(settings)
    with warnings.catch_warnings():
        # Ray 2.60's own property reads its deprecated ``actor_id`` and warns of that.
        warnings.simplefilter("ignore", DeprecationWarning)
        restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
    if not restarted:
        log.info("%s actor started", kind, extra=logs.fields(actor=kind))
        return
    log.warning("%s actor restarted", kind, extra=logs.fields(actor=kind))
    try:
        engine = make_engine(settings.database_url)
        try:
            with Session(engine) as session:
                counters.add(session, {(counters.ACTOR_RESTARTS, kind): 1})
                session.commit()
        finally:
            engine.dispose()
    except Exception:
        log.exception("could not count the restart of the %s actor", kind)


def _where() -> dict[str, str]:
    """The node this actor runs on, for /healthz."""
    ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return {"node": ray.get_runtime_context().get_node_id(), "ip": ip}


class _Lookup:
    """A named actor, looked up on first use.

    Actors find each other by name rather than by handles passed to their
    constructors: a restarted actor then needs nothing but its own arguments.
    ``ray.get_actor`` blocks, so it runs in a thread, once.
    """

    def __init__(self, name: str, namespace: str) -> None:
        self.name = name
        self.namespace = namespace
        self._handle: Any = None

    async def get(self) -> Any:
        if self._handle is None:
            self._handle = await asyncio.get_running_loop().run_in_executor(
                None, lambda: ray.get_actor(self.name, namespace=self.namespace)
            )
        return self._handle


@ray.remote(**ACTOR_OPTIONS)
class SchedulerActor:
    """Claims due work for the router; records results; renews leases."""

    def __init__(self, settings: Settings, router_name: str, namespace: str) -> None:
        _announce("scheduler", settings)
        self.settings = settings
        self.scheduler = Scheduler(
            make_engine(settings.database_url),
            Capacity.from_settings(settings),
            timedelta(seconds=settings.disable_after),
            timedelta(seconds=settings.failing_after),
        )
        self.router = _Lookup(router_name, namespace)
        # One thread: the scheduler's database work runs one statement at a time.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler-db")
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop().create_task(self._run())
        self._purge: asyncio.Task[None] | None = None
        if settings.retention_days:
            # Its own thread and connections: a chunk never delays a claim in this process.
            retention = timedelta(days=settings.retention_days)
            policy = PurgePolicy.for_retention(retention, settings.purge_share)
            purger = Purger(self.scheduler.engine, policy)
            self._purge = asyncio.get_running_loop().create_task(
                purge_continuously(purger, retention)
            )

    async def wake(self) -> None:
        """New work may be due: claim now rather than at the next poll."""
        self._wakeup.set()

    async def record(self, results: list[Result]) -> None:
        """Write a batch of results; tell the workers about endpoints it disabled."""
        disabled = await self._in_db(self.scheduler.record, results, utcnow())
        if disabled:
            (await self.router.get()).forget.remote(disabled)
        # Freed capacity lets waiting work in, a retry is due, or operational events were stored.
        if self.scheduler.worth_claiming or self.scheduler.announced:
            self._wakeup.set()

    async def renew(self, held: list[tuple[int, str]]) -> None:
        """Extend the leases of what a worker still holds."""
        await self._in_db(self.scheduler.renew, held, utcnow())

    async def stats(self) -> dict[str, Any]:
        """What the scheduler holds, for health checks."""
        return {
            "in_flight": self.scheduler.in_flight,
            "node": ray.get_runtime_context().get_node_id(),
        }

    async def _run(self) -> None:
        while True:
            jobs: list[Job] = []
            try:
                jobs = await self._in_db(self.scheduler.claim, utcnow())
                if jobs:
                    (await self.router.get()).submit.remote(jobs)
            except Exception:
                log.exception("claim failed; retrying at the next poll")
            if len(jobs) >= self.scheduler.capacity.claim_batch:
                await asyncio.sleep(0)
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.settings.poll_interval)

    async def _in_db(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)


@ray.remote(**ACTOR_OPTIONS)
class RouterActor:
    """Shards jobs by origin onto delivery actors; broadcasts endpoint changes."""

    def __init__(self, namespace: str, settings: Settings | None = None) -> None:
        if settings is not None:
            _announce("router", settings)
        self.namespace = namespace
        self.names: list[str] = []
        self.workers: list[Any] = []
        self.refresh()

    def refresh(self) -> int:
        """Find the delivery actors by name (``delivery-0``, ``-1``, ...), added ones too."""
        names: list[str] = []
        workers: list[Any] = []
        while True:
            name = f"{DELIVERY_PREFIX}{len(names)}"
            try:
                workers.append(ray.get_actor(name, namespace=self.namespace))
            except ValueError:
                break
            names.append(name)
        self.names, self.workers = names, workers
        return len(workers)

    def worker_names(self) -> list[str]:
        """The names of the delivery actors the router shards over."""
        return self.names

    def submit(self, jobs: list[Job]) -> None:
        """Send each delivery actor its share of ``jobs``, in one call each."""
        shares: dict[int, list[Job]] = defaultdict(list)
        for job in jobs:
            shares[shard(job.origin, len(self.workers))].append(job)
        for index, share in shares.items():
            self.workers[index].submit.remote(share)

    def forget(self, endpoint_ids: list[str]) -> None:
        """Every delivery actor hands back the queued jobs of these endpoints."""
        for worker in self.workers:
            worker.forget.remote(endpoint_ids)

    def size(self) -> int:
        """How many delivery actors the router shards over."""
        return len(self.workers)


@ray.remote(**ACTOR_OPTIONS)
class DeliveryActor:
    """Owns the lanes of its share of origins and attempts their deliveries."""

    def __init__(self, settings: Settings, scheduler_name: str, namespace: str) -> None:
        _announce("delivery", settings)
        self.settings = settings
        self.scheduler = _Lookup(scheduler_name, namespace)
        guard = AddressPolicy(allow_private=settings.dev, allowed_networks=settings.networks())
        transport = HttpTransport(guard, ca_bundle=settings.ca_bundle)
        self.worker = DeliveryWorker(transport, self._report, WorkerPolicy.from_settings(settings))
        self._heartbeat = asyncio.get_running_loop().create_task(self._renew_leases())

    async def submit(self, jobs: list[Job]) -> None:
        """Queue jobs in their lanes."""
        self.worker.submit(jobs)

    async def forget(self, endpoint_ids: list[str]) -> int:
        """Hand back the queued jobs of changed or removed endpoints."""
        return self.worker.forget(endpoint_ids)

    async def stats(self) -> dict[str, Any]:
        """Lanes, queue and in-flight counts, and the node this actor runs on."""
        return {**self.worker.stats(), **_where()}

    async def breaker(self, origin: str) -> str:
        """The breaker state of ``origin``'s lane (``closed`` without one)."""
        return self.worker.breaker(origin)

    async def _report(self, results: list[Result]) -> None:
        await (await self.scheduler.get()).record.remote(results)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            held = self.worker.held()
            if held:
                try:
                    await (await self.scheduler.get()).renew.remote(held)
                except Exception:
                    log.exception("lease renewal failed")
