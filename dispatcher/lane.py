"""One lane per origin: its queue, rate limits, concurrency cap and breaker.

A lane is pure bookkeeping, driven by the delivery worker with a monotonic
``now``: it decides *which* job may be attempted next and *when*, never sends
anything itself. Because it never awaits, a worker can consult and update it
between two awaits without another task seeing it half-changed.

Jobs wait in one heap per endpoint (high priority, then arrival order), so an
endpoint held back by its own ``rate_limit`` does not block the other
endpoints of the same host.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from dispatcher.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from dispatcher.bucket import TokenBucket
from models.jobs import Job


@dataclass(frozen=True)
class LanePolicy:
    """Limits every lane starts with."""

    concurrency: int = 16
    """Attempts in flight to one host at most."""
    rate: float = 100.0
    """Requests per second to one host, unless an endpoint asks for less."""
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)


@dataclass(order=True)
class _Queued:
    priority: int
    seq: int
    job: Job = field(compare=False)


class Lane:
    """The jobs of one origin and the rules for releasing them."""

    def __init__(self, origin: str, policy: LanePolicy, now: float) -> None:
        self.origin = origin
        self.policy = policy
        self.breaker = CircuitBreaker(policy.breaker)
        self.in_flight = 0
        self._bucket = TokenBucket(policy.rate, max(1.0, policy.rate), now)
        self._endpoint_buckets: dict[str, TokenBucket] = {}
        self._queues: dict[str, list[_Queued]] = {}
        self._seq = itertools.count()
        self._queued = 0
        self.last_active = now
        """When a job was last queued, taken or finished here."""
        self.progress_at = now
        """When an attempt here last ended, or the first of a busy spell started."""

    @property
    def queued(self) -> int:
        """Jobs waiting in this lane."""
        return self._queued

    def push(self, job: Job, now: float) -> None:
        """Queue ``job``; its endpoint's ``rate_limit`` takes effect from now on."""
        self._configure_endpoint(job, now)
        self.last_active = now
        heapq.heappush(
            self._queues.setdefault(job.endpoint_id, []),
            _Queued(job.priority, next(self._seq), job),
        )
        self._queued += 1

    def parked(self, now: float) -> bool:
        """Whether the breaker is open: queued jobs should leave and come back later."""
        reopens_at = self.breaker.reopens_at
        return (
            self.breaker.state is BreakerState.OPEN and reopens_at is not None and now < reopens_at
        )

    def take(self, now: float) -> Job | float | None:
        """The job to attempt now; else seconds until one may go; else None.

        None means "wait for a change": nothing queued, every slot busy, or a
        half-open breaker waiting for its probe. The caller marks the job done
        with :meth:`done` when its attempt ends.
        """
        if not self._queued or self.in_flight >= self.policy.concurrency:
            return None
        if self.breaker.state is not BreakerState.CLOSED and self.parked(now):
            return None
        wait = self._bucket.delay(now)
        if wait > 0:
            return wait
        best: _Queued | None = None
        soonest = float("inf")
        for endpoint_id, queue in self._queues.items():
            if not queue:
                continue
            bucket = self._endpoint_buckets.get(endpoint_id)
            delay = bucket.delay(now) if bucket else 0.0
            if delay > 0:
                soonest = min(soonest, delay)
            elif best is None or queue[0] < best:
                best = queue[0]
        if best is None:
            return soonest
        if not self.breaker.allow(now):
            return None
        job = best.job
        heapq.heappop(self._queues[job.endpoint_id])
        self._queued -= 1
        self._bucket.try_acquire(now)
        if bucket := self._endpoint_buckets.get(job.endpoint_id):
            bucket.try_acquire(now)
        if not self.in_flight:
            self.progress_at = now
        self.in_flight += 1
        self.last_active = now
        return job

    def done(self, success: bool, now: float) -> None:
        """An attempt of a job from :meth:`take` ended."""
        self.in_flight -= 1
        self.last_active = self.progress_at = now
        self.breaker.record(success, now)

    def blocked(self, now: float, after: float) -> bool:
        """Jobs wait, none may start, and no attempt has ended for ``after`` seconds.

        None may start: every slot is taken, or the breaker is half-open with
        its probe out. Such a host takes nothing for now (it hangs, or answers
        slower than anyone waits for): the jobs queued here would only sit,
        holding capacity that other hosts could use.
        """
        return (
            self._queued > 0
            and self.in_flight > 0
            and (
                self.in_flight >= self.policy.concurrency
                or self.breaker.state is not BreakerState.CLOSED
            )
            and now - self.progress_at >= after
        )

    def idle(self, now: float, after: float) -> bool:
        """Nothing queued or in flight for ``after`` seconds, and the breaker past caring.

        Such a lane holds nothing worth keeping: its buckets are full again,
        and its breaker is closed (it remembers no failure worth keeping) or
        its cool-down has been over for ``after`` seconds too. A host whose
        breaker opened and that then got no more work would otherwise keep its
        lane for ever; after that long without work, a new lane treats it as
        any host first seen, its breaker closed and its cool-down reset.
        A half-open breaker has its probe out: never idle.
        """
        if self._queued or self.in_flight or now - self.last_active < after:
            return False
        if self.breaker.state is BreakerState.CLOSED:
            return True
        reopens_at = self.breaker.reopens_at
        return (
            self.breaker.state is BreakerState.OPEN
            and reopens_at is not None
            and now - reopens_at >= after
        )

    def drain(self, endpoint_ids: set[str] | None = None) -> list[Job]:
        """Remove and return the queued jobs (of ``endpoint_ids`` only, if given)."""
        drained: list[Job] = []
        for endpoint_id in list(self._queues):
            if endpoint_ids is None or endpoint_id in endpoint_ids:
                drained.extend(q.job for q in sorted(self._queues.pop(endpoint_id)))
                self._endpoint_buckets.pop(endpoint_id, None)
        self._queued -= len(drained)
        return drained

    def held(self) -> list[tuple[int, str]]:
        """``(delivery id, origin)`` of every queued job."""
        return [(q.job.delivery_id, self.origin) for queue in self._queues.values() for q in queue]

    def _configure_endpoint(self, job: Job, now: float) -> None:
        bucket = self._endpoint_buckets.get(job.endpoint_id)
        if job.rate_limit is None:
            self._endpoint_buckets.pop(job.endpoint_id, None)
        elif bucket is None:
            self._endpoint_buckets[job.endpoint_id] = TokenBucket(
                job.rate_limit, max(1.0, job.rate_limit), now
            )
        elif bucket.rate != job.rate_limit:
            bucket.reconfigure(job.rate_limit, max(1.0, job.rate_limit), now)
