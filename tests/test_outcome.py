"""Outcome classification: one row per status family, Retry-After form and transport error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dispatcher.errors import (
    AttemptTimeout,
    ConnectError,
    DestinationRefused,
    DispatchError,
    InvalidHeader,
    InvalidResponse,
    ResponseTooLarge,
    TLSError,
    TransportError,
)
from dispatcher.outcome import Outcome, Verdict, classify

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
RETRY, SUCCEEDED, GONE = Verdict.RETRY, Verdict.SUCCEEDED, Verdict.GONE


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {}, Outcome(SUCCEEDED, 200, None, None)),
        (204, {}, Outcome(SUCCEEDED, 204, None, None)),
        (299, {}, Outcome(SUCCEEDED, 299, None, None)),
        (200, {"Retry-After": "60"}, Outcome(SUCCEEDED, 200, None, None)),
        (410, {}, Outcome(GONE, 410, "HTTP 410 Gone", None)),
        (410, {"Retry-After": "60"}, Outcome(GONE, 410, "HTTP 410 Gone", None)),
        (301, {}, Outcome(RETRY, 301, "redirect not followed", None)),
        (
            302,
            {"Location": "https://b.example/hook"},
            Outcome(RETRY, 302, "redirect not followed (Location: https://b.example/hook)", None),
        ),
        (
            308,
            {"LOCATION": "/moved"},
            Outcome(RETRY, 308, "redirect not followed (Location: /moved)", None),
        ),
        (100, {}, Outcome(RETRY, 100, "HTTP 100", None)),
        (400, {}, Outcome(RETRY, 400, "HTTP 400", None)),
        (404, {}, Outcome(RETRY, 404, "HTTP 404", None)),
        (409, {}, Outcome(RETRY, 409, "HTTP 409", None)),
        (500, {"Retry-After": "60"}, Outcome(RETRY, 500, "HTTP 500", None)),
        (502, {"Retry-After": "60"}, Outcome(RETRY, 502, "HTTP 502", None)),
        (404, {"Retry-After": "60"}, Outcome(RETRY, 404, "HTTP 404", None)),
        (301, {"Retry-After": "60"}, Outcome(RETRY, 301, "redirect not followed", None)),
    ],
)
def test_status(status: int, headers: dict[str, str], expected: Outcome) -> None:
    assert classify(status, headers, NOW) == expected


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(
    ("header", "value", "retry_after"),
    [
        ("Retry-After", "120", 120.0),
        ("retry-after", "0", 0.0),
        ("RETRY-AFTER", " 30 ", 30.0),
        ("Retry-After", "Wed, 01 Jan 2025 12:02:00 GMT", 120.0),
        ("Retry-After", "Wed, 01 Jan 2025 12:00:00 GMT", 0.0),
        ("Retry-After", "Wed, 01 Jan 2025 11:00:00 GMT", 0.0),  # in the past
        ("Retry-After", "Wed, 01 Jan 2025 12:01:30 -0000", 90.0),  # naive parse, still GMT
        ("Retry-After", "99999", 3600.0),  # clamped
        ("Retry-After", "9" * 5000, 3600.0),  # beyond int()'s digit limit, still clamped
        ("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT", 3600.0),
        ("Retry-After", "soon", None),
        ("Retry-After", "", None),
        ("Retry-After", "-5", None),
        ("Retry-After", "1.5", None),  # delta-seconds is 1*DIGIT
        ("Retry-After", "٣", None),  # a digit, but not an ASCII one
        ("Retry-After", "Wed, 32 Jan 2025 12:00:00 GMT", None),
        ("Retry-Afterwards", "60", None),
    ],
)
def test_retry_after(status: int, header: str, value: str, retry_after: float | None) -> None:
    outcome = classify(status, {header: value}, NOW)
    assert outcome == Outcome(RETRY, status, f"HTTP {status}", retry_after)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_absent(status: int) -> None:
    assert classify(status, {}, NOW) == Outcome(RETRY, status, f"HTTP {status}", None)


@pytest.mark.parametrize(
    ("value", "ceiling", "retry_after"),
    [("120", 60.0, 60.0), ("120", 0.0, 0.0), ("Wed, 01 Jan 2025 13:00:00 GMT", 7200.0, 3600.0)],
)
def test_retry_after_ceiling(value: str, ceiling: float, retry_after: float) -> None:
    outcome = classify(429, {"Retry-After": value}, NOW, max_retry_after=ceiling)
    assert outcome.retry_after == retry_after


def test_http_date_against_a_non_utc_now() -> None:
    paris_now = NOW.astimezone(timezone(timedelta(hours=1)))
    outcome = classify(503, {"Retry-After": "Wed, 01 Jan 2025 12:02:00 GMT"}, paris_now)
    assert outcome.retry_after == 120.0


class _Unmapped(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (AttemptTimeout("15.0 s"), "timeout after 15.0 s"),
        (AttemptTimeout(), "timeout"),
        (ConnectError("connection reset by peer"), "connection failed: connection reset by peer"),
        (ConnectError(), "connection failed"),
        (TLSError("certificate verify failed"), "TLS error: certificate verify failed"),
        (DestinationRefused("10.0.0.1 is private"), "destination refused: 10.0.0.1 is private"),
        (AttemptTimeout("15 s (no response)"), "timeout after 15 s (no response)"),
        (
            AttemptTimeout("15 s (HTTP 200, body incomplete)"),
            "timeout after 15 s (HTTP 200, body incomplete)",
        ),
        (
            InvalidHeader("the value of 'x-token' contains a line break or NUL"),
            "request not sent: the value of 'x-token' contains a line break or NUL",
        ),
        (
            ResponseTooLarge("header section over 64 KiB"),
            "response too large: header section over 64 KiB",
        ),
        (
            ResponseTooLarge("body over 64 KiB (HTTP 500)"),
            "response too large: body over 64 KiB (HTTP 500)",
        ),
        (
            InvalidResponse("Expected HTTP/, RTSP/ or ICE/"),
            "invalid response: Expected HTTP/, RTSP/ or ICE/",
        ),
        (TransportError("half a response"), "TransportError: half a response"),
        (DispatchError("odd"), "DispatchError: odd"),
        (_Unmapped("boom"), "_Unmapped: boom"),
    ],
)
def test_transport_error(error: Exception, reason: str) -> None:
    assert classify(None, {}, NOW, error=error) == Outcome(RETRY, None, reason, None)


def test_status_wins_over_error() -> None:
    assert classify(200, {}, NOW, error=ConnectError("late")).verdict is SUCCEEDED


@pytest.mark.parametrize(
    ("status", "now", "ceiling", "message"),
    [
        (None, NOW, 3600.0, "status or a transport error"),
        (200, datetime(2025, 1, 1, 12, 0, 0), 3600.0, "timezone-aware"),  # naive
        (429, NOW, -1.0, "max_retry_after"),
    ],
)
def test_rejects_misuse(status: int | None, now: datetime, ceiling: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classify(status, {}, now, max_retry_after=ceiling)


def test_verdict_values_are_stable() -> None:
    # The values end up in logs and records; renaming one is a breaking change.
    assert [str(v) for v in Verdict] == ["succeeded", "retry", "gone"]
