"""Outcome classification: what one attempt's response means for its delivery.

This module owns the mapping from an HTTP status (or a transport error) and the
response headers to a verdict, a human-readable reason and the receiver's
``Retry-After``. It does not decide *when* to retry; that is the schedule's
job (``dispatcher.backoff``), which takes ``Outcome.retry_after`` into account.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from dispatcher.errors import (
    AttemptTimeout,
    ConnectError,
    DestinationRefused,
    InvalidHeader,
    InvalidResponse,
    ResponseTooLarge,
    TLSError,
)

# Only these statuses mean "come back later" (RFC 9110 §10.2.3, RFC 6585 §4);
# elsewhere Retry-After would let any receiver stretch our schedule.
_RETRY_AFTER_STATUSES = frozenset({429, 503})

# (kind, label, separator before the error's own message); the first that matches
# wins, so a subclass comes before its base.
_TRANSPORT_REASONS: tuple[tuple[type[Exception], str, str], ...] = (
    (AttemptTimeout, "timeout", " after "),
    (ConnectError, "connection failed", ": "),
    (TLSError, "TLS error", ": "),
    (DestinationRefused, "destination refused", ": "),
    (InvalidHeader, "request not sent", ": "),
    (ResponseTooLarge, "response too large", ": "),
    (InvalidResponse, "invalid response", ": "),
)


class Verdict(StrEnum):
    """What the dispatcher should do with the delivery after one attempt."""

    SUCCEEDED = "succeeded"
    """The receiver accepted the event (2xx)."""
    RETRY = "retry"
    """The attempt failed; the caller consults the retry schedule."""
    GONE = "gone"
    """The receiver answered 410 Gone: disable the endpoint."""


@dataclass(frozen=True)
class Outcome:
    """The classified result of one attempt."""

    verdict: Verdict
    status_code: int | None
    """The HTTP status, or None when no response was received."""
    error: str | None
    """Why the attempt failed, for operators; None on success."""
    retry_after: float | None
    """The receiver's Retry-After in seconds, clamped; None if absent or ignored."""


def classify(
    status: int | None,
    headers: Mapping[str, str],
    now: datetime,
    *,
    error: Exception | None = None,
    max_retry_after: float = 3600.0,
) -> Outcome:
    """Classify one attempt from its status and headers, or from its transport ``error``.

    ``status`` is None exactly when the attempt raised ``error``. ``now`` is an
    aware datetime, used to turn an HTTP-date Retry-After into seconds.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if max_retry_after < 0:
        raise ValueError(f"max_retry_after must be >= 0, got {max_retry_after}")
    if status is None:
        if error is None:
            raise ValueError("classify needs a status or a transport error")
        return Outcome(Verdict.RETRY, None, _transport_reason(error), None)
    if 200 <= status <= 299:
        return Outcome(Verdict.SUCCEEDED, status, None, None)
    if status == 410:
        return Outcome(Verdict.GONE, status, "HTTP 410 Gone", None)
    if 300 <= status <= 399:
        location = _header(headers, "location")
        reason = "redirect not followed"
        if location:
            reason += f" (Location: {location})"
        return Outcome(Verdict.RETRY, status, reason, None)
    retry_after = None
    if status in _RETRY_AFTER_STATUSES:
        retry_after = _retry_after(_header(headers, "retry-after"), now, max_retry_after)
    return Outcome(Verdict.RETRY, status, f"HTTP {status}", retry_after)


def _transport_reason(error: Exception) -> str:
    # An unknown error should have been mapped by the transport; its class name helps debug it.
    label, separator = next(
        ((label, sep) for kind, label, sep in _TRANSPORT_REASONS if isinstance(error, kind)),
        (type(error).__name__, ": "),
    )
    message = str(error)
    return f"{label}{separator}{message}" if message else label


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # The transport lower-cases keys; tests and other callers may not.
    return next((value for key, value in headers.items() if key.lower() == name), None)


def _retry_after(value: str | None, now: datetime, ceiling: float) -> float | None:
    """Seconds from ``now`` that ``value`` asks for, clamped to [0, ceiling]; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # float, not int: a 5000-digit value must clamp, not hit int's digit limit.
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            # "-0000" parses as naive; an HTTP-date is always GMT.
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), ceiling)
