"""The circuit breaker: every transition, driven by injected times."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.breaker import BreakerPolicy, BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

# Small numbers so that every row of a table can be checked by eye.
POLICY = BreakerPolicy(
    window=10,
    min_attempts=4,
    failure_ratio=0.5,
    consecutive_failures=3,
    cooldown=10.0,
    max_cooldown=50.0,
    cooldown_factor=2.0,
    probe_timeout=30.0,
)
RATIO_ONLY = BreakerPolicy(window=10, min_attempts=10, failure_ratio=0.5, consecutive_failures=99)
RUN_ONLY = BreakerPolicy(window=20, min_attempts=20, failure_ratio=1.0, consecutive_failures=3)


def feed(breaker: CircuitBreaker, pattern: str, now: float = 0.0) -> None:
    """Record one result per character: ``s`` a success, ``f`` a failure."""
    for result in pattern:
        breaker.record(result == "s", now)


def opened_at(now: float, policy: BreakerPolicy = POLICY) -> CircuitBreaker:
    """A breaker that a run of failures opened at ``now``."""
    breaker = CircuitBreaker(policy)
    feed(breaker, "f" * policy.consecutive_failures, now)
    assert breaker.state is OPEN
    return breaker


def probing_at(now: float) -> CircuitBreaker:
    """A breaker (``POLICY``) that has just let its probe through at ``now``."""
    breaker = opened_at(now - POLICY.cooldown)
    assert breaker.allow(now)
    return breaker


@pytest.mark.parametrize(
    ("policy", "pattern", "state"),
    [
        (POLICY, "", CLOSED),
        (POLICY, "s" * 50, CLOSED),
        (POLICY, "ff", CLOSED),
        (POLICY, "fsf", CLOSED),  # 2/3 fail, but below min_attempts
        (POLICY, "sfsf", OPEN),  # 2/4 reaches the ratio at min_attempts
        (POLICY, "ssfsf", CLOSED),  # 2/5
        (POLICY, "ssfsfsf", CLOSED),  # 3/7
        (POLICY, "ssfsff", OPEN),  # 3/6
        (POLICY, "fff", OPEN),  # the run
        (POLICY, "sssssssfff", OPEN),  # the run, at a 3/10 ratio
        (RATIO_ONLY, "fsfsfsfsf", CLOSED),  # 5/9: below min_attempts
        (RATIO_ONLY, "fsfsfsfsfs", OPEN),  # 5/10
        (RATIO_ONLY, "ffffff", CLOSED),  # a run that RATIO_ONLY ignores
        (RATIO_ONLY, "sfsfsfssss", CLOSED),  # 3/10
        (RATIO_ONLY, "ffffssssssffff", CLOSED),  # 8/14 overall, never 5 in the last 10
        (RATIO_ONLY, "ffffssssssfffff", OPEN),  # the fifth failure in the last 10
        (RUN_ONLY, "ff", CLOSED),
        (RUN_ONLY, "fff", OPEN),
        (RUN_ONLY, "ffsff", CLOSED),
        (RUN_ONLY, "ffsffsffsffsffsffsff", CLOSED),  # 14/20, never three in a row
        (RUN_ONLY, "ffsfff", OPEN),
        (BreakerPolicy(window=25, min_attempts=25, failure_ratio=0.56), "fs" * 11 + "fff", OPEN),
        (BreakerPolicy(window=25, min_attempts=25, failure_ratio=0.56), "fs" * 12 + "f", CLOSED),
    ],
)
def test_closed_opens_on_ratio_or_run(
    policy: BreakerPolicy, pattern: str, state: BreakerState
) -> None:
    breaker = CircuitBreaker(policy)
    feed(breaker, pattern)
    assert breaker.state is state
    assert breaker.allow(0.0) is (state is CLOSED)


def test_defaults() -> None:
    breaker = CircuitBreaker()
    assert breaker.policy == BreakerPolicy()
    assert (breaker.state, breaker.reopens_at) == (CLOSED, None)
    feed(breaker, "f" * 4)
    assert breaker.state is CLOSED
    feed(breaker, "f")
    assert breaker.state is OPEN


@pytest.mark.parametrize(("opened", "cooldown"), [(0.0, 10.0), (1234.5, 10.0)])
def test_open_reopens_after_the_cooldown(opened: float, cooldown: float) -> None:
    breaker = opened_at(opened)
    assert breaker.reopens_at == opened + cooldown


@pytest.mark.parametrize(
    ("elapsed", "allowed", "state"),
    [
        (-5.0, False, OPEN),  # a clock gone back
        (0.0, False, OPEN),
        (9.999, False, OPEN),
        (10.0, True, HALF_OPEN),
        (500.0, True, HALF_OPEN),
    ],
)
def test_open_allows_a_probe_only_after_the_cooldown(
    elapsed: float, allowed: bool, state: BreakerState
) -> None:
    breaker = opened_at(100.0)
    assert breaker.allow(100.0 + elapsed) is allowed
    assert breaker.state is state
    assert breaker.reopens_at == (None if allowed else 110.0)


@pytest.mark.parametrize("later", [0.0, 0.001, 5.0, 29.999])
def test_half_open_lets_one_probe_through(later: float) -> None:
    breaker = probing_at(10.0)
    assert not breaker.allow(10.0 + later)
    assert breaker.state is HALF_OPEN


def test_half_open_presumes_a_silent_probe_lost() -> None:
    breaker = probing_at(10.0)
    assert breaker.allow(10.0 + POLICY.probe_timeout)
    assert not breaker.allow(10.0 + POLICY.probe_timeout)
    assert breaker.state is HALF_OPEN


def test_half_open_success_closes() -> None:
    breaker = probing_at(10.0)
    breaker.record(True, 11.0)
    assert (breaker.state, breaker.reopens_at) == (CLOSED, None)
    assert all(breaker.allow(11.0 + t) for t in range(5))


def test_closing_clears_the_window() -> None:
    breaker = CircuitBreaker(POLICY)
    feed(breaker, "sfsf")
    assert breaker.allow(POLICY.cooldown)
    breaker.record(True, POLICY.cooldown)
    # With the old window this would be 3 failures in 5.
    feed(breaker, "f", POLICY.cooldown)
    assert breaker.state is CLOSED


def test_closing_resets_the_run() -> None:
    breaker = opened_at(0.0, RUN_ONLY)
    assert breaker.allow(RUN_ONLY.cooldown)
    breaker.record(True, RUN_ONLY.cooldown)
    feed(breaker, "ff", RUN_ONLY.cooldown)
    assert breaker.state is CLOSED


def test_half_open_failure_reopens_with_a_longer_cooldown() -> None:
    breaker = probing_at(10.0)
    breaker.record(False, 12.0)
    assert breaker.state is OPEN
    assert breaker.reopens_at == 12.0 + 2 * POLICY.cooldown
    assert not breaker.allow(31.0)


@pytest.mark.parametrize(
    ("policy", "cooldowns"),
    [
        (POLICY, [10.0, 20.0, 40.0, 50.0, 50.0]),
        (BreakerPolicy(cooldown=5.0, max_cooldown=300.0), [5, 10, 20, 40, 80, 160, 300, 300]),
        (BreakerPolicy(cooldown=3.0, max_cooldown=3.0), [3.0, 3.0, 3.0]),
        (BreakerPolicy(cooldown=4.0, cooldown_factor=1.0), [4.0, 4.0, 4.0]),
        (BreakerPolicy(cooldown=1.0, cooldown_factor=10.0), [1.0, 10.0, 100.0, 300.0]),
    ],
)
def test_cooldown_grows_while_probes_fail(policy: BreakerPolicy, cooldowns: list[float]) -> None:
    now = 0.0
    breaker = opened_at(now, policy)
    for cooldown in cooldowns:
        assert breaker.reopens_at == now + cooldown
        now += cooldown
        assert breaker.allow(now)
        now += 1.0  # the probe takes a second to fail
        breaker.record(False, now)


def test_success_resets_the_cooldown_to_the_base() -> None:
    breaker = probing_at(10.0)
    breaker.record(False, 10.0)  # cool-down 20
    assert breaker.allow(30.0)
    breaker.record(False, 30.0)  # cool-down 40
    assert breaker.allow(70.0)
    breaker.record(True, 70.0)
    feed(breaker, "fff", 100.0)
    assert breaker.reopens_at == 100.0 + POLICY.cooldown


@pytest.mark.parametrize("late", ["s", "f", "sssssssss", "ffffffffff", "sfsfsfsf"])
def test_late_records_while_open_change_nothing(late: str) -> None:
    breaker = opened_at(0.0)
    feed(breaker, late, 5.0)
    assert (breaker.state, breaker.reopens_at) == (OPEN, POLICY.cooldown)
    assert not breaker.allow(9.0)
    assert breaker.allow(10.0)
    assert breaker.state is HALF_OPEN
    # Late failures neither grew the cool-down nor filled the window for later.
    breaker.record(False, 10.0)
    assert breaker.reopens_at == 10.0 + 2 * POLICY.cooldown
    assert breaker.allow(30.0)
    breaker.record(True, 30.0)
    feed(breaker, "ff", 30.0)
    assert breaker.state is CLOSED


def test_in_half_open_the_first_result_decides() -> None:
    breaker = probing_at(10.0)
    breaker.record(False, 11.0)  # a straggler from before the breaker opened
    breaker.record(True, 12.0)  # the probe, now late itself
    assert (breaker.state, breaker.reopens_at) == (OPEN, 11.0 + 2 * POLICY.cooldown)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"window": 0}, "min_attempts <= window"),
        ({"min_attempts": 0}, "min_attempts <= window"),
        ({"min_attempts": 21}, "min_attempts <= window"),
        ({"failure_ratio": 0.0}, "failure_ratio"),
        ({"failure_ratio": 1.5}, "failure_ratio"),
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"cooldown": 0.0}, "cooldown"),
        ({"cooldown": 301.0}, "cooldown <= max_cooldown"),
        ({"cooldown_factor": 0.5}, "cooldown_factor"),
        ({"probe_timeout": 0.0}, "probe_timeout"),
    ],
)
def test_policy_rejects_nonsense(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BreakerPolicy(**overrides)
