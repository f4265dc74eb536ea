"""The lane: order, concurrency, rate limits, breaker and draining, driven by injected times."""

from __future__ import annotations

import pytest

from dispatcher.breaker import BreakerPolicy
from dispatcher.lane import Lane, LanePolicy
from models.jobs import Job

ORIGIN = "https://hooks.example"
# Limits far from the numbers a test uses, so only the limit under test can hold a job back.
WIDE = LanePolicy(concurrency=100, rate=1000.0)
BREAKER = BreakerPolicy(consecutive_failures=2, cooldown=10.0, max_cooldown=100.0)


def job(
    delivery_id: int,
    endpoint: str = "ep-1",
    priority: int = 1,
    rate_limit: float | None = None,
) -> Job:
    return Job(
        delivery_id=delivery_id,
        event_id=f"evt-{delivery_id}",
        endpoint_id=endpoint,
        url=f"{ORIGIN}/{endpoint}",
        origin=ORIGIN,
        secret="whsec_AAAA",
        rate_limit=rate_limit,
        priority=priority,
        attempts=0,
        body=b"{}",
    )


def lane_with(jobs: list[Job], policy: LanePolicy = WIDE, now: float = 0.0) -> Lane:
    lane = Lane(ORIGIN, policy, now)
    for queued in jobs:
        lane.push(queued, now)
    return lane


def taken(lane: Lane, now: float) -> int:
    """The delivery id ``take`` hands out at ``now``; fails if it hands out no job."""
    got = lane.take(now)
    assert isinstance(got, Job), f"expected a job at {now}, got {got!r}"
    return got.delivery_id


def take_all(lane: Lane, now: float) -> list[int]:
    """Every delivery id ``take`` hands out at ``now``, in order."""
    ids: list[int] = []
    while isinstance(got := lane.take(now), Job):
        ids.append(got.delivery_id)
    return ids


@pytest.mark.parametrize(
    ("arrivals", "expected"),
    [
        # (delivery id, endpoint, priority) in arrival order
        ([(1, "ep-1", 1), (2, "ep-1", 1), (3, "ep-1", 0)], [3, 1, 2]),
        ([(1, "ep-1", 0), (2, "ep-1", 1), (3, "ep-1", 0)], [1, 3, 2]),
        ([(1, "ep-1", 1), (2, "ep-1", 1), (3, "ep-1", 1), (4, "ep-1", 1)], [1, 2, 3, 4]),
        ([(1, "ep-1", 0), (2, "ep-1", 0), (3, "ep-1", 0)], [1, 2, 3]),
        # Across the endpoints of a lane: still priority first, then arrival.
        ([(1, "ep-1", 1), (2, "ep-2", 1), (3, "ep-2", 0), (4, "ep-1", 0)], [3, 4, 1, 2]),
        ([(1, "ep-2", 1), (2, "ep-1", 1), (3, "ep-2", 1)], [1, 2, 3]),
    ],
)
def test_high_priority_first_then_arrival_order(
    arrivals: list[tuple[int, str, int]], expected: list[int]
) -> None:
    lane = lane_with([job(i, endpoint, priority) for i, endpoint, priority in arrivals])
    assert take_all(lane, 0.0) == expected


def test_priority_applies_to_jobs_pushed_after_others_were_taken() -> None:
    lane = lane_with([job(1), job(2), job(3)])
    assert taken(lane, 0.0) == 1
    lane.push(job(4, priority=0), 1.0)
    assert take_all(lane, 1.0) == [4, 2, 3]


@pytest.mark.parametrize("concurrency", [1, 2, 5])
def test_concurrency_cap_and_done_frees_a_slot(concurrency: int) -> None:
    lane = lane_with(
        [job(i) for i in range(1, 8)], LanePolicy(concurrency=concurrency, rate=1000.0)
    )
    assert take_all(lane, 0.0) == list(range(1, concurrency + 1))
    assert lane.in_flight == concurrency
    assert lane.take(0.0) is None
    lane.done(True, 1.0)
    assert lane.in_flight == concurrency - 1
    assert taken(lane, 1.0) == concurrency + 1
    assert lane.take(1.0) is None
    # A failure frees its slot just the same.
    lane.done(False, 2.0)
    assert taken(lane, 2.0) == concurrency + 2


def test_take_returns_none_when_nothing_is_queued() -> None:
    lane = lane_with([])
    assert lane.take(0.0) is None
    lane.push(job(1), 0.0)
    assert taken(lane, 0.0) == 1
    assert lane.take(0.0) is None


def test_host_rate_limit_returns_the_wait_then_the_job() -> None:
    lane = lane_with([job(i) for i in range(1, 6)], LanePolicy(concurrency=100, rate=2.0))
    # Burst of 2, then one token every 0.5 s.
    assert take_all(lane, 0.0) == [1, 2]
    assert lane.take(0.0) == pytest.approx(0.5)
    assert lane.take(0.3) == pytest.approx(0.2)
    assert taken(lane, 0.5) == 3
    assert lane.take(0.5) == pytest.approx(0.5)
    assert taken(lane, 1.0) == 4
    assert lane.queued == 1


def test_limited_endpoint_does_not_block_the_others_of_its_lane() -> None:
    slow = [job(i, "slow", rate_limit=0.5) for i in (1, 2, 3)]
    fast = [job(i, "fast") for i in (4, 5, 6)]
    lane = lane_with([*slow, *fast])
    # The slow endpoint's burst is one request, then one every 2 s; meanwhile the
    # fast endpoint's later arrivals go.
    assert take_all(lane, 0.0) == [1, 4, 5, 6]
    assert lane.take(0.0) == pytest.approx(2.0)
    assert lane.take(1.5) == pytest.approx(0.5)
    assert take_all(lane, 2.0) == [2]
    assert lane.take(2.0) == pytest.approx(2.0)
    assert take_all(lane, 4.0) == [3]
    assert lane.queued == 0


def test_limited_endpoint_holds_even_its_high_priority_jobs() -> None:
    lane = lane_with([job(1, "slow", 0, rate_limit=1.0), job(2, "slow", 0, rate_limit=1.0)])
    lane.push(job(3, "fast", priority=1), 0.0)
    assert take_all(lane, 0.0) == [1, 3]
    assert lane.take(0.0) == pytest.approx(1.0)
    assert taken(lane, 1.0) == 2


def test_breaker_parks_the_lane_then_one_probe_then_closes() -> None:
    policy = LanePolicy(concurrency=10, rate=1000.0, breaker=BREAKER)
    lane = lane_with([job(i) for i in range(1, 8)], policy)
    assert [taken(lane, 0.0), taken(lane, 0.0)] == [1, 2]
    lane.done(False, 1.0)
    assert not lane.parked(1.0)
    lane.done(False, 1.0)
    assert lane.parked(1.0)
    assert lane.parked(10.99)
    assert lane.take(1.0) is None
    assert lane.take(10.99) is None
    assert lane.queued == 5

    # Cool-down over: exactly one probe, the rest wait for its result.
    assert not lane.parked(11.0)
    assert taken(lane, 11.0) == 3
    assert lane.take(11.0) is None
    assert lane.take(20.0) is None
    assert lane.in_flight == 1

    lane.done(True, 20.0)
    assert not lane.parked(20.0)
    assert take_all(lane, 20.0) == [4, 5, 6, 7]


def test_parked_lane_says_none_even_with_an_empty_bucket() -> None:
    # The bucket's wait would be 1 s; a parked lane has nothing to offer before its cool-down.
    lane = lane_with([job(i) for i in range(1, 5)], LanePolicy(rate=1.0, breaker=BREAKER))
    for delivery_id, now in ((1, 0.0), (2, 1.0)):
        assert taken(lane, now) == delivery_id
        lane.done(False, now)
    assert lane.parked(1.0)
    assert lane.take(1.0) is None
    assert lane.take(5.0) is None
    assert taken(lane, 11.0) == 3


def test_failed_probe_parks_the_lane_for_a_longer_cool_down() -> None:
    lane = lane_with([job(i) for i in range(1, 6)], LanePolicy(concurrency=1, breaker=BREAKER))
    for delivery_id, now in ((1, 0.0), (2, 1.0)):
        assert taken(lane, now) == delivery_id
        lane.done(False, now)
    assert lane.parked(1.0)
    assert taken(lane, 11.0) == 3  # the probe
    lane.done(False, 12.0)
    # The cool-down doubled: 12 + 20.
    assert lane.parked(31.99)
    assert lane.take(31.99) is None
    assert taken(lane, 32.0) == 4


def test_a_lane_is_blocked_once_every_slot_has_been_stuck_for_a_while() -> None:
    lane = lane_with([job(i) for i in range(1, 6)], LanePolicy(concurrency=2, rate=1000.0))
    assert [taken(lane, 0.0), taken(lane, 1.0)] == [1, 2]
    assert not lane.blocked(4.99, after=5.0)  # the busy spell began with the first, at 0
    assert lane.blocked(5.0, after=5.0)
    lane.done(True, 6.0)  # an answer: the host is taking work after all
    assert not lane.blocked(6.0, after=0.0)  # and a slot is free
    assert taken(lane, 6.0) == 3
    assert not lane.blocked(10.99, after=5.0)
    assert lane.blocked(11.0, after=5.0)
    assert lane.drain()
    assert not lane.blocked(11.0, after=5.0)  # nothing waits: nothing to hold


def test_a_lane_with_free_slots_is_not_blocked_however_long_it_waits() -> None:
    # Held back by the rate limit, not by the host.
    lane = lane_with([job(i) for i in range(1, 4)], LanePolicy(concurrency=5, rate=0.01))
    assert taken(lane, 0.0) == 1
    assert lane.take(50.0) == pytest.approx(50.0)
    assert not lane.blocked(50.0, after=5.0)


def test_a_lane_waiting_on_its_probe_is_blocked_after_a_while() -> None:
    policy = LanePolicy(concurrency=10, rate=1000.0, breaker=BREAKER)
    lane = lane_with([job(i) for i in range(1, 6)], policy)
    for delivery_id in (1, 2):
        assert taken(lane, 0.0) == delivery_id
    lane.done(False, 1.0)
    lane.done(False, 1.0)
    assert taken(lane, 11.0) == 3  # the probe; one slot of ten in use
    assert not lane.blocked(15.99, after=5.0)
    assert lane.blocked(16.0, after=5.0)


def test_breaker_stays_closed_while_successes_break_the_run() -> None:
    lane = lane_with([job(i) for i in range(1, 6)], LanePolicy(concurrency=1, breaker=BREAKER))
    for delivery_id, success in ((1, False), (2, True), (3, False), (4, True)):
        assert taken(lane, 0.0) == delivery_id
        lane.done(success, 0.0)
        assert not lane.parked(0.0)
    assert taken(lane, 0.0) == 5


MIXED = [job(1, "ep-a"), job(2, "ep-b"), job(3, "ep-a", priority=0), job(4, "ep-c"), job(5, "ep-b")]


@pytest.mark.parametrize(
    ("endpoint_ids", "drained", "left"),
    [
        (None, [1, 2, 3, 4, 5], []),
        ({"ep-a"}, [1, 3], [2, 4, 5]),
        ({"ep-b", "ep-c"}, [2, 4, 5], [1, 3]),
        ({"ep-unknown"}, [], [1, 2, 3, 4, 5]),
        (set(), [], [1, 2, 3, 4, 5]),
    ],
)
def test_drain_returns_the_queued_jobs_of_the_endpoints_asked_for(
    endpoint_ids: set[str] | None, drained: list[int], left: list[int]
) -> None:
    lane = lane_with(MIXED)
    jobs = lane.drain(endpoint_ids)
    assert sorted(j.delivery_id for j in jobs) == drained
    assert lane.queued == len(left)
    assert sorted(delivery_id for delivery_id, _ in lane.held()) == left
    assert sorted(take_all(lane, 0.0)) == left
    assert lane.queued == 0


def test_drain_keeps_each_endpoints_priority_order() -> None:
    lane = lane_with(MIXED)
    assert [j.delivery_id for j in lane.drain({"ep-a"})] == [3, 1]


def test_drain_leaves_jobs_in_flight_alone() -> None:
    lane = lane_with(MIXED)
    assert taken(lane, 0.0) == 3
    assert sorted(j.delivery_id for j in lane.drain()) == [1, 2, 4, 5]
    assert lane.in_flight == 1
    assert lane.take(0.0) is None
    lane.done(True, 1.0)
    assert lane.in_flight == 0


def test_held_lists_the_queued_jobs_with_the_origin() -> None:
    lane = lane_with(MIXED)
    assert sorted(lane.held()) == [(i, ORIGIN) for i in range(1, 6)]
    assert taken(lane, 0.0) == 3
    assert sorted(lane.held()) == [(i, ORIGIN) for i in (1, 2, 4, 5)]
    lane.drain({"ep-b"})
    assert sorted(lane.held()) == [(1, ORIGIN), (4, ORIGIN)]


def test_queued_count_through_push_take_and_drain() -> None:
    lane = Lane(ORIGIN, LanePolicy(concurrency=2, rate=1000.0), 0.0)
    assert lane.queued == 0
    for i, endpoint in enumerate(["ep-a", "ep-a", "ep-b", "ep-b", "ep-c"], start=1):
        lane.push(job(i, endpoint), 0.0)
        assert lane.queued == i
    assert taken(lane, 0.0) == 1
    assert lane.queued == 4
    assert taken(lane, 0.0) == 2
    assert lane.take(0.0) is None  # the cap, not the queue, holds the rest
    assert lane.queued == 3
    assert [j.delivery_id for j in lane.drain({"ep-a"})] == []
    assert lane.queued == 3
    assert [j.delivery_id for j in lane.drain({"ep-b"})] == [3, 4]
    assert lane.queued == 1
    lane.push(job(6, "ep-b"), 0.0)
    assert lane.queued == 2
    lane.done(True, 0.0)
    lane.done(True, 0.0)
    assert take_all(lane, 0.0) == [5, 6]
    assert lane.queued == 0
    assert lane.drain() == []
    assert lane.queued == 0


def test_a_lane_is_idle_only_when_empty_and_quiet() -> None:
    lane = lane_with([job(1)], LanePolicy(concurrency=100, rate=1000.0, breaker=BREAKER))
    assert not lane.idle(1000.0, after=60.0)  # a job is queued
    assert taken(lane, 1.0) == 1
    assert not lane.idle(1000.0, after=60.0)  # it is in flight
    lane.done(False, 2.0)
    assert not lane.idle(61.0, after=60.0)  # quiet for 59 s only
    assert lane.idle(62.0, after=60.0)


def test_a_lane_whose_breaker_opened_is_idle_once_its_cool_down_is_long_over() -> None:
    lane = lane_with([job(1), job(2)], LanePolicy(concurrency=100, rate=1000.0, breaker=BREAKER))
    assert take_all(lane, 0.0) == [1, 2]
    lane.done(False, 1.0)
    lane.done(False, 2.0)  # a second failure in a row opens the breaker till 12
    assert lane.breaker.reopens_at == 12.0
    assert not lane.idle(71.0, after=60.0)  # it remembers a failing host...
    assert lane.idle(72.0, after=60.0)  # ...till its cool-down has been over that long too


def test_a_lane_with_its_probe_out_is_never_idle() -> None:
    lane = lane_with([job(1), job(2)], LanePolicy(concurrency=100, rate=1000.0, breaker=BREAKER))
    assert take_all(lane, 0.0) == [1, 2]
    lane.done(False, 1.0)
    lane.done(False, 2.0)
    lane.push(job(3), 12.0)
    assert taken(lane, 12.0) == 3  # the probe, half-open
    assert not lane.idle(10_000.0, after=60.0)
