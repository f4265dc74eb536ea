"""A token bucket: the per-host rate limit of a delivery lane.

Tokens refill continuously at ``rate`` per second up to ``burst``; each request
takes one. The bucket never reads the clock: every call passes ``now``, a
monotonic time in seconds.
"""

from __future__ import annotations

# Refill arithmetic is not exact: without some slack, waiting exactly delay()
# could leave 0.9999999 tokens and a lane spinning on ever tinier delays.
_SLACK = 1e-9


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full at ``now``."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        _check(rate, burst)
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = now

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """The most tokens the bucket holds, so the longest run of back-to-back requests."""
        return self._burst

    def try_acquire(self, now: float, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if they are available at ``now``; say whether it did."""
        self._check_wanted(tokens)
        self._refill(now)
        if self._tokens + _SLACK < tokens:
            return False
        self._tokens = max(self._tokens - tokens, 0.0)
        return True

    def delay(self, now: float, tokens: float = 1.0) -> float:
        """Seconds from ``now`` until ``tokens`` are available (0 if they are); takes nothing."""
        self._check_wanted(tokens)
        self._refill(now)
        missing = tokens - self._tokens
        if missing <= _SLACK:
            return 0.0
        # Tokens accrue from self._last, which is later than now if the clock went back.
        return max(self._last - now, 0.0) + missing / self._rate

    def reconfigure(self, rate: float, burst: float, now: float) -> None:
        """Change the limit, keeping the tokens already earned (capped at the new ``burst``)."""
        _check(rate, burst)
        # Tokens earned so far were earned at the old rate.
        self._refill(now)
        self._rate = rate
        self._burst = burst
        self._tokens = min(self._tokens, burst)

    def _check_wanted(self, tokens: float) -> None:
        if not 0 <= tokens <= self._burst:
            # More than burst can never be satisfied: failing loudly beats waiting forever.
            raise ValueError(f"cannot take {tokens} tokens from a bucket of burst {self._burst}")

    def _refill(self, now: float) -> None:
        # Never move _last back: a clock that goes back and forth would refill twice.
        if now > self._last:
            self._tokens = min(self._tokens + (now - self._last) * self._rate, self._burst)
            self._last = now


def _check(rate: float, burst: float) -> None:
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if not burst > 0:
        raise ValueError(f"burst must be > 0, got {burst}")
