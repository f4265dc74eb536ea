"""The capacity ledger, without a database: the global cap, host shares, rests and leases.

An in-memory store plays the database's part: it offers due deliveries in
queue order, skipping the origins a search excludes, and leasing takes them
out of what is due. ``claim`` is the scheduler's claim loop over it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher.capacity import Capacity, CapacityLedger
from models.jobs import DeliveryStatus, Job, Result

LEASE = timedelta(seconds=60)
T0 = datetime(2026, 4, 2, 14, 30, tzinfo=UTC)
A, B, C = "https://a.example:443", "https://b.example:443", "https://c.example:443"


def job(delivery_id: int, origin: str) -> Job:
    return Job(
        delivery_id, f"evt-{delivery_id}", "ep", f"{origin}/hook", origin, "s", None, 1, 0, b"{}"
    )


@dataclass
class Store:
    """Due deliveries in the database's order (priority, then due time)."""

    rows: list[Job]
    leases: bool = True
    """False: a store that forgets to lease what a search found, so it offers it again."""
    searches: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)

    @classmethod
    def of(cls, origins: Iterable[str], leases: bool = True) -> Store:
        return cls([job(i, o) for i, o in enumerate(origins, 1)], leases)

    def due(self, limit: int, excluding: list[str]) -> list[Job]:
        self.searches.append((limit, tuple(excluding)))
        return [r for r in self.rows if r.origin not in excluding][:limit]

    def lease(self, jobs: list[Job]) -> None:
        if self.leases:
            taken = {j.delivery_id for j in jobs}
            self.rows = [r for r in self.rows if r.delivery_id not in taken]


def claim(ledger: CapacityLedger, store: Store, now: datetime) -> list[Job]:
    """The scheduler's claim, on ``store``."""
    c = ledger.start_claim(now)
    jobs: list[Job] = []
    for _ in range(100):  # a claim that never ends fails instead of hanging
        if not c.wanted:
            break
        taken = c.admit(store.due(c.wanted, c.excluding))
        store.lease(taken)
        jobs.extend(taken)
    else:
        pytest.fail("the claim is still searching after 100 searches")
    ledger.hold(c, now)
    return jobs


def make_ledger(**limits: Any) -> CapacityLedger:
    """A ledger whose limits are all 100 but those given."""
    wide = {
        "max_in_flight": 100,
        "max_in_flight_per_host": 100,
        "claim_batch": 100,
        "max_in_flight_unproven_host": 100,
    }
    return CapacityLedger(Capacity(lease=LEASE, **{**wide, **limits}))


def succeeded(j: Job) -> Result:
    return Result(j, DeliveryStatus.SUCCEEDED, None, status_code=200)


def failed(j: Job, due: datetime) -> Result:
    return Result(j, DeliveryStatus.PENDING, due, status_code=500)


def handed_back(j: Job, due: datetime, *, blocked: bool = True) -> Result:
    return Result(j, DeliveryStatus.PENDING, due, attempted=False, blocked=blocked)


# --- what one claim takes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "queue", "taken"),
    [
        ({}, [], {}),
        ({"max_in_flight": 3}, [A] * 7, {A: 3}),
        ({"max_in_flight": 4, "max_in_flight_unproven_host": 3}, [A] * 3 + [B] * 3, {A: 3, B: 1}),
        ({"claim_batch": 2}, [A] * 5, {A: 2}),
        ({"max_in_flight_unproven_host": 2}, [A] * 5 + [B], {A: 2, B: 1}),
        ({"max_in_flight_per_host": 2, "max_in_flight_unproven_host": 3}, [A] * 5, {A: 2}),
        ({"claim_batch": 5, "max_in_flight_unproven_host": 3}, [A] * 10 + [B] * 3, {A: 3, B: 2}),
        ({"claim_batch": 5, "max_in_flight_unproven_host": 3}, [B] + [A] * 4, {B: 1, A: 3}),
        (
            {"claim_batch": 9, "max_in_flight_unproven_host": 2},
            [A] * 3 + [B] * 3 + [C] * 3,
            {A: 2, B: 2, C: 2},
        ),
    ],
    ids=[
        "nothing due",
        "global cap",
        "global cap across hosts",
        "claim batch",
        "a new host holds its slots' worth",
        "the host share caps a new host too",
        "a full host does not use up the batch",
        "a full host's rows behind another's",
        "on past one full host after another",
    ],
)
def test_a_claim_takes_what_fits(
    limits: dict[str, int], queue: list[str], taken: dict[str, int]
) -> None:
    ledger = make_ledger(**limits)
    jobs = claim(ledger, Store.of(queue), T0)
    assert Counter(j.origin for j in jobs) == taken
    assert ledger.in_flight == len(jobs)
    assert all(ledger.held_by(origin) == n for origin, n in taken.items())


@pytest.mark.parametrize(
    ("limits", "queue", "searches"),
    [
        ({}, [A] * 3, [(100, ())]),
        ({"claim_batch": 2}, [A] * 3, [(2, ())]),
        ({"max_in_flight_unproven_host": 2}, [A] * 3, [(100, ())]),  # fewer found than asked
        ({"claim_batch": 3, "max_in_flight_unproven_host": 1}, [A] * 2 + [B], [(3, ()), (1, (A,))]),
        (
            {"claim_batch": 3, "max_in_flight_unproven_host": 1},
            [A, A, B, B, C],
            [(3, ()), (1, (A,)), (1, (A, B))],
        ),
        (
            {"claim_batch": 3, "max_in_flight_unproven_host": 1},
            [A, A, A, B, C],
            [(3, ()), (2, (A,))],
        ),
    ],
    ids=[
        "all found at once",
        "a full batch",
        "nothing more is due",
        "past a full host",
        "past two, one after the other",
        "past one, then done",
    ],
)
def test_a_claim_searches_on_only_past_hosts_it_filled(
    limits: dict[str, int], queue: list[str], searches: list[tuple[int, tuple[str, ...]]]
) -> None:
    store = Store.of(queue)
    claim(make_ledger(**limits), store, T0)
    assert store.searches == searches


def test_a_claim_skips_hosts_already_full_from_its_first_search() -> None:
    ledger = make_ledger(max_in_flight_unproven_host=2)
    store = Store.of([A] * 4 + [B] * 4)
    claim(ledger, store, T0)
    store.rows.append(job(99, C))
    store.searches.clear()
    assert [j.origin for j in claim(ledger, store, T0)] == [C]
    (search,) = store.searches
    assert sorted(search[1]) == [A, B]


def test_a_claim_admits_each_delivery_once_even_when_offered_again() -> None:
    # The store offers the later host's row first and fills the first host; the
    # second search, past that host, finds the rows the first took, not leased.
    ledger = make_ledger(claim_batch=5, max_in_flight_unproven_host=3)
    store = Store.of([B] + [A] * 4, leases=False)
    jobs = claim(ledger, store, T0)
    ids = [j.delivery_id for j in jobs]
    assert len(ids) == len(set(ids)) == 4
    assert ledger.in_flight == 4
    assert Counter(j.origin for j in jobs) == {A: 3, B: 1}
    assert store.searches == [(5, ()), (1, (A,))]


def test_with_no_room_a_claim_searches_nothing() -> None:
    ledger = make_ledger(max_in_flight=2)
    store = Store.of([A] * 5)
    assert len(claim(ledger, store, T0)) == 2
    store.searches.clear()
    assert claim(ledger, store, T0) == []
    assert store.searches == []


# --- what a host may take, as its results come back -------------------------------------------


@dataclass
class History:
    """A ledger for one host with twenty deliveries due, driven step by step."""

    ledger: CapacityLedger
    store: Store
    now: datetime = T0
    held: list[Job] = field(default_factory=list)

    def run(self, step: str) -> None:
        verb, _, arg = step.partition(" ")
        if verb == "claim":
            self.held += claim(self.ledger, self.store, self.now)
        elif verb == "wait":
            self.now += timedelta(seconds=float(arg))
        elif verb == "renew":
            self.ledger.renew([(j.delivery_id, j.origin) for j in self.held], self.now)
        elif verb == "restart":  # a new scheduler, told by the workers what they hold
            self.ledger = CapacityLedger(self.ledger.capacity)
            self.ledger.renew([(j.delivery_id, j.origin) for j in self.held], self.now)
        else:
            j = self.held.pop(0)
            due = self.now + timedelta(seconds=float(arg or 0))
            result = {
                "succeed": lambda: succeeded(j),
                "fail": lambda: failed(j, due),
                "retry": lambda: failed(j, due),
                "block": lambda: handed_back(j, due),
                "release": lambda: handed_back(j, due, blocked=False),
            }[verb]()
            self.ledger.record([result], self.now)


def history(steps: list[str], **limits: int) -> History:
    h = History(make_ledger(**limits), Store.of([A] * 20))
    for step in steps:
        h.run(step)
    return h


@pytest.mark.parametrize(
    ("steps", "next_claim"),
    [
        ([], 2),
        (["claim"], 0),
        (["claim", "fail +60"], 1),
        (["claim", "succeed"], 4),
        (["claim", "succeed", "fail +60"], 5),
        (["claim", "succeed", "claim", "block +30"], 0),
        (["claim", "block +30"], 0),
        (["claim", "block +30", "wait 29"], 0),
        (["claim", "block +30", "wait 30"], 1),
        (["claim", "block +0"], 1),
        (["claim", "succeed", "claim", "block +0"], 0),
        (["claim", "release +30"], 1),
        (["claim", "wait 30"], 0),
        (["claim", "wait 60"], 2),
        (["claim", "wait 30", "renew", "wait 30"], 0),
        (["claim", "wait 30", "renew", "wait 60"], 2),
        (["claim", "restart"], 0),
        (["claim", "fail +60", "restart"], 1),
        (["claim", "succeed", "succeed", "wait 599"], 5),
        (["claim", "succeed", "succeed", "wait 600"], 2),
        (["claim", "succeed", "wait 300", "renew", "wait 300", "renew", "wait 1"], 4),
    ],
    ids=[
        "a new host: its slots' worth",
        "holding it",
        "an answer but no success: still its slots' worth",
        "a success: the full share",
        "a failure after a success frees room",
        "its work came back for later: it rests",
        "an unproven host rests too",
        "rests till its work is due",
        "then its slots' worth again",
        "work handed back due at once: no rest",
        "work handed back: its slots' worth again till a success",
        "work released for later, not blocked: no rest",
        "a lease still running holds its slot",
        "an expired lease stops holding it",
        "a renewed lease keeps holding it",
        "a renewed lease expires in turn",
        "a restarted ledger re-learns what is held",
        "and only what is still held",
        "a proven host stays proven while it has been busy lately",
        "a host idle for a while is forgotten",
        "a host holding work is never forgotten",
    ],
)
def test_what_the_next_claim_of_a_host_takes(steps: list[str], next_claim: int) -> None:
    h = history(steps, max_in_flight_per_host=5, max_in_flight_unproven_host=2)
    assert len(claim(h.ledger, h.store, h.now)) == next_claim


@pytest.mark.parametrize(
    ("steps", "worth"),
    [
        ([], True),
        (["claim"], False),
        (["claim", "succeed"], True),
        (["claim", "fail +60"], False),
        (["claim", "release +60"], False),
        (["claim", "retry +0"], True),
        (["claim", "retry +0", "claim"], False),
        (["claim", "succeed", "claim"], True),
        (["claim", "succeed", "claim", "succeed"], True),
    ],
    ids=[
        "nothing known yet",
        "all it may take was taken",
        "a new host's first success makes room for more",
        "a failure of a new host frees room for nothing more",
        "work released for later",
        "an immediate retry",
        "the retry claimed",
        "a host at its full share",
        "a result of a host at its full share",
    ],
)
def test_claiming_is_worth_it_only_when_work_may_be_waiting(steps: list[str], worth: bool) -> None:
    h = history(steps, max_in_flight_per_host=3, max_in_flight_unproven_host=2)
    assert h.ledger.worth_claiming is worth


@pytest.mark.parametrize(
    ("limits", "queue"),
    [
        ({"max_in_flight": 2}, [A] * 3),
        ({"claim_batch": 2}, [A] * 3),
        ({"max_in_flight": 2}, [A] * 2),
    ],
    ids=["the global cap", "the batch", "no room left at all"],
)
def test_a_claim_cut_short_by_capacity_leaves_claiming_worth_it(
    limits: dict[str, int], queue: list[str]
) -> None:
    ledger = make_ledger(**limits)
    store = Store.of(queue)
    claim(ledger, store, T0)
    assert ledger.worth_claiming
    if not store.rows:
        assert claim(ledger, store, T0) == []
        assert ledger.worth_claiming


def test_a_result_frees_only_what_the_ledger_holds() -> None:
    ledger = make_ledger(max_in_flight=1)
    store = Store.of([A] * 3)
    (first,) = claim(ledger, store, T0)
    ledger.record([succeeded(first)], T0)
    ledger.record([succeeded(first)], T0)  # a repeated result frees nothing twice
    ledger.record([succeeded(job(99, B))], T0)  # nor one the ledger never held
    assert ledger.in_flight == 0
    assert len(claim(ledger, store, T0)) == 1
    assert ledger.in_flight == 1


def test_renewals_count_each_delivery_once() -> None:
    ledger = make_ledger(max_in_flight=3)
    held = [(1, A), (2, B)]
    ledger.renew(held, T0)
    ledger.renew(held, T0)
    assert (ledger.in_flight, ledger.held_by(A), ledger.held_by(B)) == (2, 1, 1)
    assert len(claim(ledger, Store([job(10 + i, C) for i in range(5)]), T0)) == 1


# --- what the ledger keeps per host ---------------------------------------------------------


LATER = T0 + timedelta(seconds=30)


@pytest.mark.parametrize(
    "outcome",
    [
        succeeded,
        lambda j: failed(j, LATER),
        lambda j: handed_back(j, LATER),
        lambda j: handed_back(j, LATER, blocked=False),
        None,
    ],
    ids=["succeeded", "failed", "blocked", "released", "its lease expired"],
)
def test_a_host_it_no_longer_hears_from_leaves_nothing_behind(
    outcome: Callable[[Job], Result] | None,
) -> None:
    ledger = make_ledger(max_in_flight=1000, claim_batch=1000)
    store = Store.of(f"https://host-{i}.example:443" for i in range(500))
    jobs = claim(ledger, store, T0)
    assert ledger.stats() == {"held": 500, "origins": 500, "proven": 0, "resting": 0}
    if outcome is not None:
        ledger.record([outcome(j) for j in jobs], T0)
    claim(ledger, store, T0 + ledger.capacity.forget_hosts_after)
    assert ledger.stats() == {"held": 0, "origins": 0, "proven": 0, "resting": 0}
