"""The retry schedule: how long to wait before each attempt of a delivery.

A schedule is a fixed list of delays with multiplicative jitter, as Standard
Webhooks recommends, so that deliveries that failed together (one receiver's
outage) do not all come back in the same second. The randomness is passed in,
which keeps the policy pure and its tests deterministic.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetrySchedule:
    """Delays before attempts 1, 2, 3, ... with ``±jitter`` applied to each.

    ``delays[0]`` is the wait before the first attempt (normally 0), so the
    schedule allows ``len(delays)`` attempts in all.
    """

    delays: tuple[float, ...]
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not self.delays:
            raise ValueError("retry schedule needs at least one delay")
        if any(not math.isfinite(d) or d < 0 for d in self.delays):
            raise ValueError(f"retry delays must be finite and >= 0, got {self.delays!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")

    @classmethod
    def parse(cls, text: str, jitter: float = 0.2) -> RetrySchedule:
        """Parse a comma-separated list of seconds such as ``"0, 5, 300, 1800"``."""
        if not text.strip():
            raise ValueError("retry schedule is empty")
        delays: list[float] = []
        for position, raw in enumerate(text.split(","), start=1):
            entry = raw.strip()
            if not entry:
                raise ValueError(f"retry schedule {text!r}: entry {position} is empty")
            try:
                delay = float(entry)
            except ValueError:
                raise ValueError(
                    f"retry schedule {text!r}: entry {position} ({entry!r}) is not a number"
                ) from None
            if not math.isfinite(delay) or delay < 0:
                raise ValueError(
                    f"retry schedule {text!r}: entry {position} ({entry!r}) "
                    "must be a finite number of seconds >= 0"
                )
            delays.append(delay)
        return cls(tuple(delays), jitter)

    @property
    def max_attempts(self) -> int:
        """How many attempts the schedule allows in all."""
        return len(self.delays)

    def next_delay(
        self, attempts_made: int, rng: random.Random, retry_after: float | None = None
    ) -> float | None:
        """Seconds to wait before the next attempt, or None once the schedule is exhausted.

        ``attempts_made`` attempts have already failed. ``retry_after`` is the
        receiver's ``Retry-After`` (clamped by the caller); it can push the
        next attempt later than the schedule would, never sooner, and never
        past exhaustion: the receiver does not get to extend our budget.
        """
        if attempts_made < 0:
            raise ValueError(f"attempts_made must be >= 0, got {attempts_made}")
        if attempts_made >= len(self.delays):
            return None
        base = self.delays[attempts_made]
        # This form (rather than rng.uniform) never rounds past base*(1±jitter).
        delay = base * (1 + self.jitter * (2 * rng.random() - 1))
        return delay if retry_after is None else max(retry_after, delay)


DEFAULT_SCHEDULE = RetrySchedule.parse("0,5,300,1800,7200,18000,36000,50400,72000,86400")
"""Standard Webhooks' recommendation: now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h."""
