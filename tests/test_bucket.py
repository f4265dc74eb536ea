"""The token bucket: burst, refill, delay, reconfiguration and a clock that goes back."""

from __future__ import annotations

import pytest

from dispatcher.bucket import TokenBucket


def drained(rate: float, burst: float, now: float = 0.0) -> TokenBucket:
    """A bucket with no tokens left at ``now``."""
    bucket = TokenBucket(rate, burst, now)
    assert bucket.try_acquire(now, burst)
    return bucket


def acquired(bucket: TokenBucket, now: float, limit: int = 1000) -> int:
    """How many single tokens the bucket gives out at ``now``."""
    count = 0
    while count < limit and bucket.try_acquire(now):
        count += 1
    return count


@pytest.mark.parametrize(("rate", "burst"), [(1.0, 1.0), (1.0, 5.0), (100.0, 3.0), (0.1, 10.0)])
def test_starts_full_and_allows_exactly_the_burst(rate: float, burst: float) -> None:
    assert acquired(TokenBucket(rate, burst, now=50.0), now=50.0) == burst


@pytest.mark.parametrize(
    ("rate", "burst", "elapsed", "expected"),
    [
        (2.0, 5.0, 0.0, 0),
        (2.0, 5.0, 0.49, 0),
        (2.0, 5.0, 0.5, 1),
        (2.0, 5.0, 1.0, 2),
        (2.0, 5.0, 2.4, 4),
        (2.0, 5.0, 2.5, 5),
        (2.0, 5.0, 1000.0, 5),  # capped at the burst
        (0.5, 1.0, 1.9, 0),
        (0.5, 1.0, 2.0, 1),
        (10.0, 1.0, 60.0, 1),
    ],
)
def test_refill(rate: float, burst: float, elapsed: float, expected: int) -> None:
    bucket = drained(rate, burst, now=100.0)
    assert acquired(bucket, 100.0 + elapsed) == expected


def test_refill_accumulates_partial_tokens() -> None:
    bucket = drained(rate=1.0, burst=2.0)
    assert not bucket.try_acquire(0.6)
    assert not bucket.try_acquire(0.9)
    assert bucket.try_acquire(1.2)  # 0.6 + 0.3 + 0.3 earned across three calls


@pytest.mark.parametrize(
    ("rate", "burst", "now", "tokens", "expected"),
    [
        (2.0, 5.0, 0.0, 1.0, 0.5),
        (2.0, 5.0, 0.25, 1.0, 0.25),
        (2.0, 5.0, 0.5, 1.0, 0.0),
        (2.0, 5.0, 7.0, 1.0, 0.0),
        (2.0, 5.0, 0.0, 5.0, 2.5),
        (2.0, 5.0, 1.0, 5.0, 1.5),
        (0.1, 1.0, 0.0, 1.0, 10.0),
        (4.0, 2.0, 0.0, 0.5, 0.125),
        (4.0, 2.0, 0.0, 0.0, 0.0),
    ],
)
def test_delay(rate: float, burst: float, now: float, tokens: float, expected: float) -> None:
    bucket = drained(rate, burst)
    assert bucket.delay(now, tokens) == pytest.approx(expected)


def test_delay_is_zero_while_full() -> None:
    assert TokenBucket(1.0, 3.0, now=0.0).delay(0.0, 3.0) == 0.0


def test_delay_takes_nothing() -> None:
    bucket = TokenBucket(1.0, 1.0, now=0.0)
    assert bucket.delay(0.0) == 0.0
    assert bucket.delay(0.0) == 0.0
    assert bucket.try_acquire(0.0)
    assert bucket.delay(0.0) == 1.0


@pytest.mark.parametrize("rate", [3.0, 7.0, 0.1, 1 / 3, 0.7, 13.37, 1e-3])
def test_waiting_the_delay_is_enough(rate: float) -> None:
    bucket = drained(rate, burst=1.0, now=1234.5678)
    now = 1234.5678
    for _ in range(50):
        now += bucket.delay(now)
        assert bucket.try_acquire(now)


@pytest.mark.parametrize(
    ("old_tokens", "new_burst", "expected"),
    [(5, 10.0, 5), (5, 3.0, 3), (5, 5.0, 5), (0, 10.0, 0), (2, 1.0, 1)],
)
def test_reconfigure_keeps_tokens_capped_at_new_burst(
    old_tokens: int, new_burst: float, expected: int
) -> None:
    bucket = TokenBucket(1.0, 5.0, now=0.0)
    assert acquired(bucket, 0.0, limit=5 - old_tokens) == 5 - old_tokens
    bucket.reconfigure(rate=1.0, burst=new_burst, now=0.0)
    assert bucket.burst == new_burst
    assert acquired(bucket, 0.0) == expected


def test_reconfigure_counts_time_so_far_at_the_old_rate() -> None:
    bucket = drained(rate=1.0, burst=10.0)
    bucket.reconfigure(rate=100.0, burst=10.0, now=2.0)  # 2 tokens earned at 1/s
    assert bucket.rate == 100.0
    assert acquired(bucket, 2.0) == 2


def test_reconfigure_applies_the_new_rate_afterwards() -> None:
    bucket = drained(rate=1.0, burst=10.0)
    bucket.reconfigure(rate=4.0, burst=10.0, now=0.0)
    assert bucket.delay(0.0) == 0.25
    assert acquired(bucket, 1.0) == 4


def test_clock_going_back_creates_no_tokens() -> None:
    bucket = drained(rate=1.0, burst=10.0, now=100.0)
    assert acquired(bucket, 50.0) == 0
    # Back at 100.5: only the half second past 100 has been earned, not 50.5 s.
    assert acquired(bucket, 100.5) == 0
    assert acquired(bucket, 101.0) == 1


def test_clock_going_back_and_forth_earns_each_second_once() -> None:
    bucket = drained(rate=1.0, burst=10.0, now=0.0)
    for now in (2.0, 1.0, 3.0, 0.0, 4.0):
        bucket.try_acquire(now, 0.0)
    assert acquired(bucket, 4.0) == 4


def test_delay_under_a_clock_gone_back_counts_from_the_latest_time() -> None:
    bucket = drained(rate=1.0, burst=1.0, now=10.0)
    assert bucket.delay(7.0) == 4.0  # 3 s to catch up with 10, then 1 s to earn a token


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0.0, 1.0, "rate"),
        (-1.0, 1.0, "rate"),
        (float("nan"), 1.0, "rate"),
        (1.0, 0.0, "burst"),
        (1.0, -2.0, "burst"),
    ],
)
def test_rejects_bad_limits(rate: float, burst: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBucket(rate, burst, now=0.0)
    bucket = TokenBucket(1.0, 1.0, now=0.0)
    with pytest.raises(ValueError, match=message):
        bucket.reconfigure(rate, burst, now=0.0)
    assert (bucket.rate, bucket.burst) == (1.0, 1.0)


@pytest.mark.parametrize("tokens", [2.5, -1.0])
def test_rejects_requests_it_can_never_satisfy(tokens: float) -> None:
    bucket = TokenBucket(1.0, 2.0, now=0.0)
    with pytest.raises(ValueError, match="cannot take"):
        bucket.try_acquire(0.0, tokens)
    with pytest.raises(ValueError, match="cannot take"):
        bucket.delay(0.0, tokens)
