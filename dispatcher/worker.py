"""The delivery worker: lanes of jobs, attempts over the transport, results in batches.

This is everything a delivery actor does, without Ray: the actor is a thin
shell around it, and tests drive it with a ``MockTransport`` or a real
receiver. One asyncio task pumps each lane that has work; each attempt runs
as its own task and frees its slot the moment it ends (a retry is a new due
time in the database, never a sleep in a slot). Results leave in batches
through ``sink``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from dispatcher import logs
from dispatcher.backoff import DEFAULT_SCHEDULE, RetrySchedule
from dispatcher.errors import TransportError
from dispatcher.lane import Lane, LanePolicy
from dispatcher.outcome import Outcome, Verdict, classify
from dispatcher.settings import USER_AGENT, Settings
from dispatcher.signing import signed_request
from dispatcher.transport import Response, Transport
from models.jobs import DeliveryStatus, Job, Result

log = logging.getLogger(__name__)

Sink = Callable[[list[Result]], Awaitable[None]]


@dataclass(frozen=True)
class WorkerPolicy:
    """How a worker attempts, retries and reports."""

    lanes: LanePolicy = field(default_factory=LanePolicy)
    schedule: RetrySchedule = DEFAULT_SCHEDULE
    attempt_timeout: float = 15.0
    max_retry_after: float = 3600.0
    user_agent: str = "SentinMail-Webhooks"
    flush_interval: float = 0.1
    """Seconds a result may wait for others to share its batch.

    Each batch is one Ray call, and a call to an async actor costs about 1 ms
    of CPU (Ray 2.60, measured on a 2-core machine) however few results it
    carries, so this trades a little status latency, never delivery latency,
    for CPU.
    """
    flush_size: int = 1000
    forget_lanes_after: float = 600.0
    """Seconds a lane may sit idle before its host is forgotten (see ``Lane.idle``)."""
    hand_back_after: float = 5.0
    """Seconds a lane may wait with every slot stuck before its queue goes back.

    A host that takes nothing (it hangs, or its probe does) would otherwise
    hold its whole share of the dispatcher's capacity until its attempts time
    out; a handful of such hosts would hold all of it, and every other host
    would wait for them.
    """

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerPolicy:
        """How delivery workers attempt and retry, as the operator set it."""
        return cls(
            lanes=LanePolicy(concurrency=settings.host_concurrency, rate=settings.host_rate_limit),
            schedule=RetrySchedule.parse(settings.retry_schedule),
            attempt_timeout=settings.attempt_timeout,
            max_retry_after=settings.max_retry_after,
            user_agent=USER_AGENT,
        )


class DeliveryWorker:
    """Holds lanes of jobs and attempts them; reports every result through ``sink``."""

    def __init__(
        self,
        transport: Transport,
        sink: Sink,
        policy: WorkerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = partial(datetime.now, UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.transport = transport
        self.policy = policy or WorkerPolicy()
        self._sink = sink
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self._lanes: dict[str, Lane] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._in_flight: dict[int, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[Result] = []
        self._flusher: asyncio.Task[None] | None = None
        self._full = asyncio.Event()
        self._swept = clock()
        self._watchdog: asyncio.Task[None] | None = None

    # -- what the actor exposes -------------------------------------------------

    def submit(self, jobs: Iterable[Job]) -> None:
        """Queue jobs in their lanes and make sure each lane is being pumped."""
        now = self._clock()
        self._sweep_now_and_then(now)
        touched = set()
        for job in jobs:
            lane = self._lanes.get(job.origin)
            if lane is None:
                lane = self._lanes[job.origin] = Lane(job.origin, self.policy.lanes, now)
                self._changed[job.origin] = asyncio.Event()
            lane.push(job, now)
            touched.add(job.origin)
        for origin in touched:
            self._wake(origin)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch())

    def forget(self, endpoint_ids: Iterable[str]) -> int:
        """Hand back the queued jobs of these endpoints unattempted (changed or removed)."""
        ids = set(endpoint_ids)
        released = [job for lane in self._lanes.values() for job in lane.drain(ids)]
        self._release(released, self._wall())
        return len(released)

    def sweep(self, now: float) -> int:
        """Forget the lanes idle for ``forget_lanes_after`` seconds; return how many.

        A worker sees every host its share of endpoints ever named: without
        this, one lane per host would stay in memory for the actor's life.
        Runs every tenth of that period at most, from ``submit`` and from the
        watchdog, so that lanes go whether or not more work comes.
        """
        self._swept = now
        idle = [
            origin
            for origin, lane in self._lanes.items()
            if lane.idle(now, self.policy.forget_lanes_after)
        ]
        for origin in idle:
            pump = self._pumps.pop(origin, None)
            if pump is not None and not pump.done():
                pump.cancel()
            del self._lanes[origin], self._changed[origin]
        return len(idle)

    def held(self) -> list[tuple[int, str]]:
        """``(delivery id, origin)`` of every job held, queued or in flight (for leases)."""
        queued = [item for lane in self._lanes.values() for item in lane.held()]
        return queued + [(job.delivery_id, job.origin) for job in self._in_flight.values()]

    def stats(self) -> dict[str, int]:
        """Counts for health and tests."""
        return {
            "lanes": len(self._lanes),
            "queued": sum(lane.queued for lane in self._lanes.values()),
            "in_flight": len(self._in_flight),
            "open_breakers": sum(1 for lane in self._lanes.values() if lane.parked(self._clock())),
        }

    def breaker(self, origin: str) -> str:
        """The breaker state of ``origin``'s lane; ``closed`` without one (none failed lately)."""
        lane = self._lanes.get(origin)
        return "closed" if lane is None else lane.breaker.state.value

    def footprint(self) -> dict[str, int]:
        """What the worker keeps per host (lanes, their wake-up events and pumps) and in all."""
        return {
            "lanes": len(self._lanes),
            "events": len(self._changed),
            "pumps": len(self._pumps),
            "in_flight": len(self._in_flight),
            "tasks": len(self._tasks),
            "results": len(self._results),
            "watching": int(self._watchdog is not None and not self._watchdog.done()),
        }

    async def flush(self) -> None:
        """Send the buffered results now."""
        while self._results:
            await self._send_batch()

    async def close(self) -> None:
        """Stop pumping and attempting, report what is buffered, close the transport."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in [*self._pumps.values(), *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._pumps.values(), *self._tasks, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()
        await self.transport.close()

    # -- lanes ------------------------------------------------------------------

    def _sweep_now_and_then(self, now: float) -> None:
        if now - self._swept >= self.policy.forget_lanes_after / 10:
            self.sweep(now)

    def _wake(self, origin: str) -> None:
        self._changed[origin].set()
        pump = self._pumps.get(origin)
        if pump is None or pump.done():
            pump = self._pumps[origin] = asyncio.create_task(self._pump(self._lanes[origin]))
            pump.add_done_callback(partial(self._pumped, origin))

    def _pumped(self, origin: str, pump: asyncio.Task[None]) -> None:
        # A lane whose queue ran dry holds no task: one lane per host is all that stays.
        if self._pumps.get(origin) is pump:
            del self._pumps[origin]

    async def _pump(self, lane: Lane) -> None:
        changed = self._changed[lane.origin]
        while lane.queued:
            now = self._clock()
            if lane.parked(now):
                reopens_at = lane.breaker.reopens_at or now
                due = self._wall() + timedelta(seconds=reopens_at - now)
                self._release(lane.drain(), due, blocked=True)
                return
            got = lane.take(now)
            if isinstance(got, Job):
                self._in_flight[got.delivery_id] = got
                self._spawn(self._attempt(lane, got))
                continue
            changed.clear()
            if got is None:
                await changed.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=got)

    async def _watch(self) -> None:
        """Hand back the queues of blocked lanes, checking twice per ``hand_back_after``.

        Back in the database they are due when every attempt in flight there
        has ended, by answer or by timeout; till one of them succeeds, the
        scheduler lets that host hold no more than a few (see ``Capacity``).
        Also forgets idle lanes, and ends when none is left.
        """
        after = self.policy.hand_back_after
        while self._lanes:
            await asyncio.sleep(after / 2)
            now = self._clock()
            self._sweep_now_and_then(now)
            for lane in list(self._lanes.values()):
                if lane.blocked(now, after):
                    due = self._wall() + timedelta(seconds=self.policy.attempt_timeout)
                    self._release(lane.drain(), due, blocked=True)
                    self._changed[lane.origin].set()

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- attempts ---------------------------------------------------------------

    async def _attempt(self, lane: Lane, job: Job) -> None:
        at = self._wall()
        started = self._clock()
        response: Response | None = None
        error: Exception | None = None
        try:
            request = signed_request(
                job, at, user_agent=self.policy.user_agent, timeout=self.policy.attempt_timeout
            )
            response = await self.transport.send(request)
        except TransportError as exc:
            error = exc
        except Exception as exc:  # a bug must cost one attempt, never a slot
            log.exception("attempt of delivery %s failed unexpectedly", job.delivery_id)
            error = exc
        outcome = classify(
            response.status if response else None,
            response.headers if response else {},
            self._wall(),
            error=error,
            max_retry_after=self.policy.max_retry_after,
        )
        now = self._clock()
        breaker = lane.breaker.state
        lane.done(outcome.verdict is Verdict.SUCCEEDED, now)
        self._in_flight.pop(job.delivery_id, None)  # may be held twice after a lease expired
        body = response.body_start.decode("utf-8", "replace") if response else None
        result = self._settle(job, outcome, at, int((now - started) * 1000), body)
        self._emit(result)
        self._changed[lane.origin].set()
        logs.attempt(log, result)
        if lane.breaker.state is not breaker:
            logs.breaker(log, lane.origin, breaker, lane.breaker.state)

    def _settle(
        self,
        job: Job,
        outcome: Outcome,
        at: datetime,
        duration_ms: int,
        response_body: str | None = None,
    ) -> Result:
        """The delivery's next state after this attempt."""
        status, due = DeliveryStatus.SUCCEEDED, None
        if outcome.verdict is Verdict.GONE:
            status = DeliveryStatus.FAILED
        elif outcome.verdict is Verdict.RETRY:
            delay = self.policy.schedule.next_delay(
                job.attempts + 1, self._rng, outcome.retry_after
            )
            if delay is None:
                status = DeliveryStatus.FAILED
            else:
                status, due = DeliveryStatus.PENDING, self._wall() + timedelta(seconds=delay)
        return Result(
            job=job,
            status=status,
            due_at=due,
            at=at,
            status_code=outcome.status_code,
            error=outcome.error,
            duration_ms=duration_ms,
            gone=outcome.verdict is Verdict.GONE,
            response_body=response_body,
        )

    # -- results ----------------------------------------------------------------

    def _release(self, jobs: list[Job], due: datetime, *, blocked: bool = False) -> None:
        for job in jobs:
            self._emit(
                Result(
                    job=job,
                    status=DeliveryStatus.PENDING,
                    due_at=due,
                    attempted=False,
                    blocked=blocked,
                )
            )

    def _emit(self, result: Result) -> None:
        self._results.append(result)
        if len(self._results) >= self.policy.flush_size:
            self._full.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        """Send batches while results wait: each after ``flush_interval``, or at once when full.

        One task at a time, so one report is in flight per worker: results that
        arrive while it is sent wait for the next batch instead of a call of their own.
        """
        while self._results:
            if len(self._results) < self.policy.flush_size:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.policy.flush_interval)
            await self._send_batch()

    async def _send_batch(self) -> None:
        batch = self._results[: self.policy.flush_size]
        del self._results[: len(batch)]
        try:
            await self._sink(batch)
        except Exception:
            # The leases of these deliveries expire and they are claimed again:
            # at-least-once, never lost.
            log.exception("could not report %d results", len(batch))
