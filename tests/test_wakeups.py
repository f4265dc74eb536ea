"""The dispatcher is woken after commits at most once per interval (``api.wakeups``)."""

from __future__ import annotations

import pytest

from api.wakeups import WakeLimiter


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (what happens at time t) -> what `due` answers at each "commit"
        ([("commit", 0.0)], [0.0]),
        ([("commit", 0.0), ("woken", 0.0), ("commit", 0.005)], [0.0, 0.02]),
        ([("commit", 0.0), ("woken", 0.0), ("commit", 0.03)], [0.0, 0.03]),
        # planned already: later commits ride along with that wake-up
        ([("commit", 0.0), ("woken", 0.0), ("commit", 0.005), ("commit", 0.01)], [0.0, 0.02, None]),
        ([("commit", 0.0), ("commit", 0.001)], [0.0, None]),
        # once woken, the next commit plans again
        (
            [
                ("commit", 0.0),
                ("woken", 0.0),
                ("commit", 0.005),
                ("woken", 0.02),
                ("commit", 0.021),
            ],
            [0.0, 0.02, 0.04],
        ),
    ],
)
def test_wake_ups_are_at_least_an_interval_apart(
    steps: list[tuple[str, float]], expected: list[float | None]
) -> None:
    limiter = WakeLimiter(0.02)
    answers: list[float | None] = []
    for what, at in steps:
        if what == "commit":
            answers.append(limiter.due(at))
        else:
            limiter.woken(at)
    assert answers == pytest.approx(expected)
