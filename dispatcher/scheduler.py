"""The scheduler: claims due deliveries within capacity, records results, renews leases.

It is the dispatcher's only reader and writer of the database (the API only
inserts). Capacity is what keeps memory bounded and hosts apart: at most
``max_in_flight`` deliveries are out of the database at once, and no origin
holds more than ``max_in_flight_per_host`` of them, so a slow host cannot take
the capacity of the others, and a high-priority event for a busy host waits
behind at most that many (its lane then puts it first). That share is for
hosts that deliver: a host holds no more than ``max_in_flight_unproven_host``
(a few times its slots) until one of its deliveries succeeds, and again from when
its work comes back unattempted (its breaker open, or every slot stuck) to
its next success, so that twenty hanging hosts cannot hold the whole
capacity either, whether they hung from the start or began to later. Work
that came back so rests in the database until it is due again: nothing more
of that host is claimed before then, to be handed straight back.

Synchronous and Ray-free: the scheduler actor runs it in a worker thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from dispatcher.capacity import Capacity
from models import deliveries, endpoints
from models.jobs import DeliveryStatus, Job, Result


class Scheduler:
    """Moves deliveries between the database and the dispatcher."""

    def __init__(self, engine: Engine, capacity: Capacity, disable_after: timedelta) -> None:
        self.engine = engine
        self.capacity = capacity
        self.disable_after = disable_after
        self._held: dict[int, tuple[str, datetime]] = {}
        """Each delivery out of the database: its origin and when its lease expires."""
        self._per_origin: Counter[str] = Counter()
        self._proven: set[str] = set()
        """Origins with a success since this scheduler started or their work last came back."""
        self._resting: dict[str, datetime] = {}
        """Origins whose work came back unattempted, and when it is due again.

        Until then nothing more of theirs is claimed: their lane would only
        hand it straight back (its breaker open) or let it sit (its slots stuck).
        """
        self._next_sweep: datetime | None = None
        self._worth_claiming = True

    @property
    def in_flight(self) -> int:
        """Deliveries out of the database, as far as this scheduler knows."""
        return len(self._held)

    @property
    def worth_claiming(self) -> bool:
        """Whether a claim now may find work that the last claim did not take.

        True when the last claim was cut short by capacity (a full batch, or a
        host at its cap: recorded results free room for what waits), or when a
        result since made a delivery due at once (an immediate retry). Otherwise
        everything due was claimed, and only new events, later due times and
        expired leases bring more: the API's wake-up and the periodic poll.
        """
        return self._worth_claiming

    def claim(self, now: datetime) -> list[Job]:
        """Lease the next due deliveries that fit, high priority first."""
        self._forget_expired(now)
        free = self.capacity.max_in_flight - self.in_flight
        limit = min(free, self.capacity.claim_batch)
        if limit <= 0:
            self._worth_claiming = True
            return []
        self._resting = {o: until for o, until in self._resting.items() if until > now}
        held = self._per_origin
        full = [o for o in {*held, *self._resting} if held[o] >= self._cap(o)]
        with Session(self.engine) as session:
            jobs = deliveries.claim(
                session,
                now=now,
                limit=limit,
                lease=self.capacity.lease,
                exclude_origins=full,
                room=lambda origin: self._cap(origin) - self._per_origin[origin],
            )
        self._track(((job.delivery_id, job.origin) for job in jobs), now + self.capacity.lease)
        # Any result frees room under the per-host cap. Under an unproven host's
        # smaller one, only a success makes room worth claiming: record() notices.
        cap = self.capacity.max_in_flight_per_host
        self._worth_claiming = len(jobs) >= limit or any(
            n >= cap for n in self._per_origin.values()
        )
        return jobs

    def _cap(self, origin: str) -> int:
        if origin in self._resting:
            return 0
        if origin in self._proven:
            return self.capacity.max_in_flight_per_host
        return min(self.capacity.max_in_flight_unproven_host, self.capacity.max_in_flight_per_host)

    def record(self, results: Sequence[Result], now: datetime) -> list[str]:
        """Write a batch of results; return the endpoints this disabled."""
        succeeded: set[str] = set()
        failed: set[str] = set()
        gone: set[str] = set()
        for r in results:
            if r.status is DeliveryStatus.SUCCEEDED:
                succeeded.add(r.job.endpoint_id)
                if r.job.origin not in self._proven:
                    if self._per_origin[r.job.origin] >= self._cap(r.job.origin):
                        self._worth_claiming = True  # its small share may have left work waiting
                    self._proven.add(r.job.origin)
            elif r.attempted:
                failed.add(r.job.endpoint_id)
            if r.blocked:
                self._proven.discard(r.job.origin)
                if r.due_at is not None and r.due_at > now:
                    until = self._resting.get(r.job.origin, r.due_at)
                    self._resting[r.job.origin] = max(until, r.due_at)
            if r.gone:
                gone.add(r.job.endpoint_id)
            if r.status is DeliveryStatus.PENDING and r.due_at is not None and r.due_at <= now:
                self._worth_claiming = True
        with Session(self.engine) as session:
            deliveries.record(session, results, now=now)
            disabled = endpoints.record_health(
                session,
                succeeded=succeeded,
                failed=failed,
                gone=gone,
                now=now,
                disable_after=self.disable_after,
            )
            session.commit()
        for result in results:
            self._untrack(result.job.delivery_id)
        return disabled

    def renew(self, held: Sequence[tuple[int, str]], now: datetime) -> None:
        """Extend the leases of deliveries a worker reports it still holds.

        Also re-learns them: after a restart of the scheduler, the workers'
        reports rebuild its count of what is in flight.
        """
        self._track(held, now + self.capacity.lease)
        with Session(self.engine) as session:
            deliveries.renew(session, [i for i, _ in held], until=now + self.capacity.lease)

    def _track(self, items: Iterable[tuple[int, str]], until: datetime) -> None:
        for delivery_id, origin in items:
            if delivery_id not in self._held:
                self._per_origin[origin] += 1
            self._held[delivery_id] = (origin, until)

    def _untrack(self, delivery_id: int) -> None:
        held = self._held.pop(delivery_id, None)
        if held is not None:
            origin = held[0]
            self._per_origin[origin] -= 1
            if not self._per_origin[origin]:
                del self._per_origin[origin]

    def _forget_expired(self, now: datetime) -> None:
        """Stop counting deliveries whose lease ran out unrenewed (every ``lease / 3`` at most).

        Their worker died, or their endpoint went away before the result came
        back: the database offers them again (or has cancelled them), so they
        no longer hold a slot of their host or of the dispatcher.
        """
        if self._next_sweep is not None and now < self._next_sweep:
            return
        self._next_sweep = now + self.capacity.lease / 3
        for delivery_id in [i for i, (_, until) in self._held.items() if until <= now]:
            self._untrack(delivery_id)
