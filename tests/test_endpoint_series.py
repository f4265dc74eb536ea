"""What the portal draws from the statistics rollup: success rates of a page, one endpoint's series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from models.endpoint_series import series, success_rates
from models.endpoint_stats import HOUR, MINUTE, EndpointStat

NOW = datetime(2026, 12, 2, 12, 30, 30, tzinfo=UTC)


def rows(engine: Engine, endpoint_id: str, spans: list[tuple[int, datetime, int, int]]) -> None:
    """Rollup rows of ``endpoint_id``: (span, start, attempts, succeeded)."""
    with Session(engine) as session:
        for span, start, attempts, succeeded in spans:
            session.add(
                EndpointStat(
                    endpoint_id=endpoint_id,
                    span=span,
                    start=start,
                    attempts=attempts,
                    succeeded=succeeded,
                )
            )
        session.commit()


def at(hours: int, minutes: int = 0) -> datetime:
    return datetime(2026, 12, 2, 0, 0, tzinfo=UTC) + timedelta(hours=hours, minutes=minutes)


def test_success_rates_sum_whole_hours_and_the_minutes_before_them(engine: Engine) -> None:
    # A window from 11:10 yesterday: the minutes to 12:00, then whole hours.
    since = at(11, 10) - timedelta(days=1)
    rows(
        engine,
        "a",
        [
            (MINUTE, at(11, 20) - timedelta(days=1), 1, 0),  # in the window, before its first hour
            (MINUTE, at(11, 5) - timedelta(days=1), 50, 0),  # before the window
            (HOUR, at(11) - timedelta(days=1), 51, 0),  # an hour the window starts inside
            (HOUR, at(12) - timedelta(days=1), 3, 3),  # the first whole hour
            (MINUTE, at(12, 1) - timedelta(days=1), 3, 3),  # counted in its hour, not twice
        ],
    )
    rows(engine, "b", [(HOUR, at(1) - timedelta(days=1), 9, 0)])  # before the window
    with Session(engine) as session:
        assert success_rates(session, ["a", "b", "c"], since=since) == {"a": 0.75}
        assert success_rates(session, [], since=since) == {}


def test_a_series_puts_each_hour_in_its_bucket_and_keeps_empty_ones(engine: Engine) -> None:
    rows(
        engine,
        "a",
        [
            (HOUR, at(12), 2, 1),  # the current hour: the last bucket
            (HOUR, at(11), 4, 4),
            (HOUR, at(13) - timedelta(days=1), 5, 0),  # the first bucket
            (HOUR, at(12) - timedelta(days=1), 7, 0),  # before the chart
            (MINUTE, at(12, 5), 2, 1),  # minutes are not read: their hour holds them
        ],
    )
    rows(engine, "b", [(HOUR, at(11), 100, 0)])  # another endpoint
    with Session(engine) as session:
        got = series(session, "a", until=NOW, span=timedelta(hours=24), buckets=24)
        week = series(session, "a", until=NOW, span=timedelta(days=7), buckets=28)
    assert len(got) == 24
    assert got[0] == (at(13) - timedelta(days=1), 5, 5)
    assert [(a, f) for _, a, f in got[1:22]] == [(0, 0)] * 21
    assert got[22:] == [(at(11), 4, 0), (at(12), 2, 1)]
    assert week[-1] == (at(7), 6, 1)  # 07:00 to 13:00, in buckets of 6 hours
    assert sum(a for _, a, _ in week) == 18
