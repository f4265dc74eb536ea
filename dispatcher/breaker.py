"""A per-host circuit breaker: stop sending to a host that keeps failing.

CLOSED lets everything through and watches a window of recent attempts. Too
many failures (a high ratio, or a run) open it: nothing goes through until a
cool-down has elapsed, then it half-opens and lets exactly one probe through.
The probe's success closes it; its failure re-opens it with a longer
cool-down, so a host that stays down is probed less and less often.

The breaker is synchronous and reads no clock (callers pass ``now``, monotonic
seconds), so an asyncio actor can check and update it without an ``await`` in
between and tests can drive every transition.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"
    """Attempts flow; failures are counted."""
    OPEN = "open"
    """Attempts are refused until the cool-down has elapsed."""
    HALF_OPEN = "half_open"
    """One probe is in flight; its result decides."""


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how long it stays open."""

    window: int = 20
    """How many of the most recent attempts the failure ratio is computed over."""
    min_attempts: int = 10
    """Below this many attempts in the window, the ratio alone never opens the breaker."""
    failure_ratio: float = 0.5
    """The failure ratio over the window that opens the breaker."""
    consecutive_failures: int = 5
    """A run of failures this long opens the breaker regardless of the ratio."""
    cooldown: float = 5.0
    """Seconds the breaker first stays open."""
    max_cooldown: float = 300.0
    """The longest cool-down, however long the host keeps failing."""
    cooldown_factor: float = 2.0
    """How much the cool-down grows each time a probe fails."""
    probe_timeout: float = 60.0
    """A probe unreported after this long is presumed lost and another is allowed."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_attempts <= self.window:
            raise ValueError("need 1 <= min_attempts <= window")
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be >= 1")
        if not 0 < self.cooldown <= self.max_cooldown:
            raise ValueError("need 0 < cooldown <= max_cooldown")
        if self.cooldown_factor < 1:
            raise ValueError("cooldown_factor must be >= 1")
        if self.probe_timeout <= 0:
            raise ValueError("probe_timeout must be > 0")


class CircuitBreaker:
    """The breaker of one host; see the module docstring for its cycle."""

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        """The thresholds this breaker applies."""
        self._state = BreakerState.CLOSED
        self._recent: deque[bool] = deque(maxlen=self.policy.window)  # True = failed
        self._run = 0
        self._cooldown = self.policy.cooldown
        self._reopens_at: float | None = None
        self._probe_sent_at: float | None = None

    @property
    def state(self) -> BreakerState:
        """The current state; it changes only in ``allow`` and ``record``."""
        return self._state

    @property
    def reopens_at(self) -> float | None:
        """When OPEN, the time from which a probe is allowed; otherwise None."""
        return self._reopens_at

    def allow(self, now: float) -> bool:
        """Whether an attempt may start at ``now``; True at most once per half-open cycle."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            assert self._reopens_at is not None
            if now < self._reopens_at:
                return False
            self._state, self._reopens_at = BreakerState.HALF_OPEN, None
        else:
            assert self._probe_sent_at is not None
            if now < self._probe_sent_at + self.policy.probe_timeout:
                return False
        self._probe_sent_at = now
        return True

    def record(self, success: bool, now: float) -> None:
        """Account for an attempt that finished at ``now``.

        While HALF_OPEN, the first result to arrive decides, probe or not: the
        breaker cannot tell them apart, and any fresh result is news of the host.
        """
        if self._state is BreakerState.OPEN:
            # A straggler started before the breaker opened says nothing new.
            return
        if self._state is BreakerState.HALF_OPEN:
            if success:
                self._close()
            else:
                grown = self._cooldown * self.policy.cooldown_factor
                self._cooldown = min(grown, self.policy.max_cooldown)
                self._open(now)
            return
        self._recent.append(not success)
        self._run = 0 if success else self._run + 1
        if self._run >= self.policy.consecutive_failures or self._ratio_exceeded():
            self._open(now)

    def _ratio_exceeded(self) -> bool:
        attempts = len(self._recent)
        # Divide rather than multiply: 0.56 * 25 > 14 in floating point, 14 / 25 == 0.56.
        return (
            attempts >= self.policy.min_attempts
            and sum(self._recent) / attempts >= self.policy.failure_ratio
        )

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._reopens_at = now + self._cooldown
        self._probe_sent_at = None

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._recent.clear()
        self._run = 0
        self._cooldown = self.policy.cooldown
        self._probe_sent_at = None
