"""The dispatcher's capacity rules, as a pure ledger of the work out of the database.

Capacity is what keeps memory bounded and hosts apart: at most
``max_in_flight`` deliveries are out of the database at once, and no origin
holds more than ``max_in_flight_per_host`` of them, so a slow host cannot take
the capacity of the others, and a high-priority event for a busy host waits
behind at most that many (its lane then puts it first). That share is for
hosts that deliver: a host holds no more than ``max_in_flight_unproven_host``
(a few times its slots) until one of its deliveries succeeds, and again from
when its work comes back unattempted (its breaker open, or every slot stuck)
to its next success, so that twenty hanging hosts cannot hold the whole
capacity either, whether they hung from the start or began to later. Work
that came back so rests in the database until it is due again: nothing more
of that host is claimed before then, to be handed straight back.

:class:`CapacityLedger` keeps that account and does no I/O: the time comes in
as an argument, and the scheduler (``dispatcher.scheduler``) is the shell
that moves rows. A claim runs as a conversation between the two:

    claim = ledger.start_claim(now)           # how many, which origins to skip
    while claim.wanted:
        offered = store.due(claim.wanted, excluding=claim.excluding)
        store.lease(claim.admit(offered))      # what fits; full origins skipped next
    ledger.hold(claim, now)                    # after the commit

The store leases each search's admitted rows before the next search, which
would otherwise offer them again; the claim admits no delivery twice anyway.

State per host is bounded: a host is counted while it holds work, rests
until its work is due, and stays proven until it has held nothing and
succeeded at nothing for ``forget_hosts_after``. Then it is forgotten, as the
delivery worker forgets its lane, and starts again with the unproven share.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypeVar

from models.jobs import DeliveryStatus, Result

if TYPE_CHECKING:
    from dispatcher.settings import Settings


@dataclass(frozen=True)
class Capacity:
    """How much work may be out of the database at once."""

    max_in_flight: int = 20_000
    max_in_flight_per_host: int = 1_000
    claim_batch: int = 1_000
    lease: timedelta = timedelta(seconds=60)
    max_in_flight_unproven_host: int = 64
    """What a host may hold until one of its deliveries succeeds, and again once
    its work came back unattempted: enough to keep its slots busy until its
    first success is known (four times their number, by default), not enough
    to hold the others up."""
    forget_hosts_after: timedelta = timedelta(minutes=10)
    """How long a host that holds nothing and delivers nothing stays proven.

    The same idle period after which a delivery worker forgets the host's lane:
    over months the service sees millions of hosts, and most come and go.
    """

    @classmethod
    def from_settings(cls, settings: Settings) -> Capacity:
        """What the scheduler may hold out of the database, as the operator set it."""
        return cls(
            max_in_flight=settings.max_in_flight,
            max_in_flight_per_host=settings.max_in_flight_per_host,
            max_in_flight_unproven_host=4 * settings.host_concurrency,
            lease=timedelta(seconds=settings.lease_seconds),
        )


class Candidate(Protocol):
    """A due delivery the store offers to a claim (a ``Job``, in the scheduler)."""

    @property
    def delivery_id(self) -> int: ...

    @property
    def origin(self) -> str: ...


C = TypeVar("C", bound=Candidate)


class Claim:
    """One claim in progress: how many more to search for, and which origins to skip.

    Made by :meth:`CapacityLedger.start_claim`; the ledger's counts do not
    change until :meth:`CapacityLedger.hold` takes what it admitted.
    """

    def __init__(self, limit: int, excluding: list[str], room: Callable[[str], int]) -> None:
        self.limit = limit
        self.excluding = excluding
        """Origins the next search must skip: full before the claim, or filled during it."""
        self.taken: list[tuple[int, str]] = []
        """``(delivery id, origin)`` of every candidate admitted so far."""
        self._wanted = limit
        self._room = room
        self._left: dict[str, int] = {}
        self._seen: set[int] = set()

    @property
    def wanted(self) -> int:
        """How many candidates the next search should offer; 0 when the claim is done.

        Done when the batch is full, when the last search found fewer than it
        was asked for (nothing else is due), or when it filled no origin (the
        next would find nothing the last did not).
        """
        return self._wanted

    def admit(self, offered: Sequence[C]) -> list[C]:
        """The candidates that fit, in the order offered; the rest wait in the database.

        Candidates of an origin past its room are dropped and the origin is
        skipped by the next search, so that the rows of a few hosts at the
        front of the queue cannot use up the whole batch. A delivery offered
        again within one claim is admitted once.
        """
        asked = self._wanted
        admitted: list[C] = []
        filled: set[str] = set()
        left = self._left
        for candidate in offered:
            origin = candidate.origin
            room = left.get(origin)
            if room is None:
                room = self._room(origin)
            if room <= 0:
                filled.add(origin)
            elif candidate.delivery_id not in self._seen:
                self._seen.add(candidate.delivery_id)
                left[origin] = room - 1
                admitted.append(candidate)
                continue
            left[origin] = room
        self.taken.extend((c.delivery_id, c.origin) for c in admitted)
        more = self.limit - len(self.taken)
        if len(offered) < asked or not filled or more <= 0:
            self._wanted = 0
        else:
            self._wanted = more
            self.excluding.extend(filled)
        return admitted


class CapacityLedger:
    """What is out of the database, per delivery and per origin, and what may go out next."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._held: dict[int, tuple[str, datetime]] = {}
        """Each delivery out of the database: its origin and when its lease expires."""
        self._per_origin: Counter[str] = Counter()
        self._proven: dict[str, datetime] = {}
        """Origins with a success since they were last forgotten or their work came
        back, and when their latest success was."""
        self._resting: dict[str, datetime] = {}
        """Origins whose work came back unattempted, and when it is due again.

        Until then nothing more of theirs is claimed: their lane would only
        hand it straight back (its breaker open) or let it sit (its slots stuck).
        """
        self._next_sweep: datetime | None = None
        self._worth_claiming = True

    @property
    def in_flight(self) -> int:
        """Deliveries out of the database, as far as this ledger knows."""
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

    def held_by(self, origin: str) -> int:
        """Deliveries of ``origin`` out of the database."""
        return self._per_origin[origin]

    def room(self, origin: str) -> int:
        """How many more deliveries ``origin`` may take now (0 or less: none)."""
        return self._cap(origin) - self._per_origin[origin]

    def stats(self) -> dict[str, int]:
        """How many entries the ledger keeps, for health and tests."""
        return {
            "held": len(self._held),
            "origins": len(self._per_origin),
            "proven": len(self._proven),
            "resting": len(self._resting),
        }

    # -- claims -----------------------------------------------------------------

    def start_claim(self, now: datetime) -> Claim:
        """A claim of what may go out at ``now``: within the batch and the free capacity."""
        self._sweep(now)
        free = self.capacity.max_in_flight - self.in_flight
        limit = max(min(free, self.capacity.claim_batch), 0)
        if not limit:
            self._worth_claiming = True  # room freed by the next results lets waiting work in
            return Claim(0, [], self.room)
        self._resting = {o: until for o, until in self._resting.items() if until > now}
        held = self._per_origin
        full = [o for o in {*held, *self._resting} if held[o] >= self._cap(o)]
        return Claim(limit, full, self.room)

    def hold(self, claim: Claim, now: datetime) -> None:
        """Count what ``claim`` admitted (now leased until ``now + lease``)."""
        if not claim.limit:
            return
        self._track(claim.taken, now + self.capacity.lease)
        # Any result frees room under the per-host cap. Under an unproven host's
        # smaller one, only a success makes room worth claiming: record() notices.
        cap = self.capacity.max_in_flight_per_host
        self._worth_claiming = len(claim.taken) >= claim.limit or any(
            n >= cap for n in self._per_origin.values()
        )

    def _cap(self, origin: str) -> int:
        if origin in self._resting:
            return 0
        if origin in self._proven:
            return self.capacity.max_in_flight_per_host
        return min(self.capacity.max_in_flight_unproven_host, self.capacity.max_in_flight_per_host)

    # -- results and renewals ---------------------------------------------------

    def record(self, results: Sequence[Result], now: datetime) -> None:
        """Learn from a batch of results (recorded in the database) and stop counting them."""
        for r in results:
            origin = r.job.origin
            if r.status is DeliveryStatus.SUCCEEDED:
                if origin not in self._proven and self._per_origin[origin] >= self._cap(origin):
                    self._worth_claiming = True  # its small share may have left work waiting
                self._proven[origin] = now
            if r.blocked:
                self._proven.pop(origin, None)
                if r.due_at is not None and r.due_at > now:
                    until = self._resting.get(origin, r.due_at)
                    self._resting[origin] = max(until, r.due_at)
            if r.status is DeliveryStatus.PENDING and r.due_at is not None and r.due_at <= now:
                self._worth_claiming = True
        for r in results:
            self._untrack(r.job.delivery_id)

    def renew(self, held: Iterable[tuple[int, str]], now: datetime) -> None:
        """Extend the leases of ``(delivery id, origin)`` a worker reports it still holds.

        Also re-learns them: after a restart of the scheduler, the workers'
        reports rebuild its count of what is in flight.
        """
        self._track(held, now + self.capacity.lease)

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

    def _sweep(self, now: datetime) -> None:
        """Forget what no longer holds anything (every ``lease / 3`` at most).

        A delivery whose lease ran out unrenewed: its worker died, or its
        endpoint went away before the result came back; the database offers it
        again (or has cancelled it), so it no longer holds a slot of its host
        or of the dispatcher. A host whose rest is over. A proven host that
        has held nothing and delivered nothing for ``forget_hosts_after``.
        """
        if self._next_sweep is not None and now < self._next_sweep:
            return
        self._next_sweep = now + self.capacity.lease / 3
        for delivery_id in [i for i, (_, until) in self._held.items() if until <= now]:
            self._untrack(delivery_id)
        self._resting = {o: until for o, until in self._resting.items() if until > now}
        stale = now - self.capacity.forget_hosts_after
        self._proven = {
            origin: at
            for origin, at in self._proven.items()
            if at > stale or origin in self._per_origin
        }
