"""The retry schedule: parsing, jitter bounds, exhaustion and Retry-After."""

from __future__ import annotations

import random

import pytest

from dispatcher.backoff import DEFAULT_SCHEDULE, RetrySchedule

SEEDS = range(200)


@pytest.mark.parametrize(
    ("text", "delays"),
    [
        ("0,5,300,1800", (0.0, 5.0, 300.0, 1800.0)),
        (" 0 , 5,\t300 ,1800 ", (0.0, 5.0, 300.0, 1800.0)),
        ("7", (7.0,)),
        ("0.5,1.5", (0.5, 1.5)),
        ("1e3", (1000.0,)),
    ],
)
def test_parse(text: str, delays: tuple[float, ...]) -> None:
    assert RetrySchedule.parse(text).delays == delays


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0,,5", "entry 2 is empty"),
        ("0,5,", "entry 3 is empty"),
        ("0,-5", r"entry 2 \('-5'\) must be"),
        ("0,five", r"entry 2 \('five'\) is not a number"),
        ("1;2", r"entry 1 \('1;2'\) is not a number"),
        ("0,inf", r"entry 2 \('inf'\) must be"),
        ("nan", r"entry 1 \('nan'\) must be"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetrySchedule.parse(text)


def test_parse_passes_jitter() -> None:
    assert RetrySchedule.parse("1,2", jitter=0.1) == RetrySchedule((1.0, 2.0), 0.1)


@pytest.mark.parametrize(
    ("delays", "jitter", "message"),
    [
        ((), 0.2, "at least one delay"),
        ((1.0, -1.0), 0.2, "finite and >= 0"),
        ((1.0, float("inf")), 0.2, "finite and >= 0"),
        ((1.0,), -0.1, "jitter"),
        ((1.0,), 1.0, "jitter"),
    ],
)
def test_construction_rejects(delays: tuple[float, ...], jitter: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetrySchedule(delays, jitter)


def test_default_schedule_is_standard_webhooks() -> None:
    hour = 3600.0
    expected = (0, 5, 300, 1800, 2 * hour, 5 * hour, 10 * hour, 14 * hour, 20 * hour, 24 * hour)
    assert DEFAULT_SCHEDULE.delays == expected
    assert DEFAULT_SCHEDULE.jitter == 0.2
    assert DEFAULT_SCHEDULE.max_attempts == 10


@pytest.mark.parametrize("attempts_made", range(DEFAULT_SCHEDULE.max_attempts))
@pytest.mark.parametrize("jitter", [0.0, 0.2, 0.5])
def test_jitter_stays_within_bounds(attempts_made: int, jitter: float) -> None:
    schedule = RetrySchedule(DEFAULT_SCHEDULE.delays, jitter)
    base = schedule.delays[attempts_made]
    for seed in SEEDS:
        delay = schedule.next_delay(attempts_made, random.Random(seed))
        assert delay is not None
        assert base * (1 - jitter) <= delay <= base * (1 + jitter)


@pytest.mark.parametrize("attempts_made", range(1, DEFAULT_SCHEDULE.max_attempts))
def test_jitter_varies_and_spans_the_range(attempts_made: int) -> None:
    base = DEFAULT_SCHEDULE.delays[attempts_made]
    delays = [DEFAULT_SCHEDULE.next_delay(attempts_made, random.Random(seed)) for seed in SEEDS]
    ratios = [d / base for d in delays if d is not None]
    assert len(set(ratios)) == len(SEEDS)
    # 200 uniform draws over [0.8, 1.2] reach both outer tenths with near certainty.
    assert min(ratios) < 0.84
    assert max(ratios) > 1.16


def test_same_seed_same_delay() -> None:
    first = DEFAULT_SCHEDULE.next_delay(3, random.Random(42))
    assert first == DEFAULT_SCHEDULE.next_delay(3, random.Random(42))


def test_zero_delay_stays_zero() -> None:
    assert DEFAULT_SCHEDULE.next_delay(0, random.Random(1)) == 0.0


def test_no_jitter_gives_the_base() -> None:
    schedule = RetrySchedule((0.0, 5.0, 300.0), jitter=0.0)
    assert [schedule.next_delay(n, random.Random(n)) for n in range(3)] == [0.0, 5.0, 300.0]


@pytest.mark.parametrize(
    ("attempts_made", "retry_after"),
    [(3, None), (3, 1e9), (4, 0.0), (10, 60.0), (100, None)],
)
def test_exhausted(attempts_made: int, retry_after: float | None) -> None:
    schedule = RetrySchedule.parse("0,5,300")
    assert schedule.next_delay(attempts_made, random.Random(0), retry_after) is None


def test_last_attempt_is_still_scheduled() -> None:
    schedule = RetrySchedule.parse("0,5,300", jitter=0.0)
    assert schedule.next_delay(2, random.Random(0)) == 300.0


@pytest.mark.parametrize(
    ("attempts_made", "retry_after", "expected"),
    [
        (1, 3600.0, 3600.0),  # the receiver asks for longer: it wins
        (0, 30.0, 30.0),  # even over "immediately"
        (2, 10.0, 300.0),  # the receiver asks for shorter: the schedule wins
        (1, 0.0, 5.0),
        (1, 5.0, 5.0),
    ],
)
def test_retry_after_only_lengthens(
    attempts_made: int, retry_after: float, expected: float
) -> None:
    schedule = RetrySchedule.parse("0,5,300", jitter=0.0)
    assert schedule.next_delay(attempts_made, random.Random(0), retry_after) == expected


@pytest.mark.parametrize("seed", range(20))
def test_retry_after_compares_with_the_jittered_delay(seed: int) -> None:
    schedule = RetrySchedule.parse("0,100")
    jittered = schedule.next_delay(1, random.Random(seed))
    assert jittered is not None
    assert schedule.next_delay(1, random.Random(seed), retry_after=100.0) == max(100.0, jittered)


def test_negative_attempts_rejected() -> None:
    with pytest.raises(ValueError, match="attempts_made"):
        DEFAULT_SCHEDULE.next_delay(-1, random.Random(0))
