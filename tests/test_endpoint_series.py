"""What the portal draws from the minute rollup: success rates of a page, one endpoint's series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from models.endpoint_series import series, success_rates
from models.endpoint_stats import EndpointStat

NOW = datetime(2026, 12, 2, 12, 0, 30, tzinfo=UTC)


def minutes(engine: Engine, endpoint_id: str, rows: list[tuple[timedelta, int, int]]) -> None:
    """Rollup rows of ``endpoint_id``: (how long before NOW's minute, attempts, succeeded)."""
    with Session(engine) as session:
        for ago, attempts, succeeded in rows:
            minute = NOW.replace(second=0) - ago
            session.add(
                EndpointStat(
                    endpoint_id=endpoint_id, minute=minute, attempts=attempts, succeeded=succeeded
                )
            )
        session.commit()


def test_success_rates_count_the_window_only_and_skip_endpoints_without_attempts(
    engine: Engine,
) -> None:
    minutes(engine, "a", [(timedelta(hours=1), 3, 3), (timedelta(hours=2), 1, 0)])
    minutes(engine, "b", [(timedelta(hours=25), 9, 0)])  # before the window
    with Session(engine) as session:
        rates = success_rates(session, ["a", "b", "c"], since=NOW - timedelta(hours=24))
        assert rates == {"a": 0.75}
        assert success_rates(session, [], since=NOW) == {}


def test_a_series_puts_each_minute_in_its_bucket_and_keeps_empty_ones(engine: Engine) -> None:
    minutes(
        engine,
        "a",
        [
            (timedelta(0), 2, 1),  # the current minute: the last bucket
            (timedelta(minutes=30), 4, 4),
            (timedelta(hours=23, minutes=59), 5, 0),  # the first bucket
            (timedelta(hours=30), 7, 0),  # before the window
        ],
    )
    minutes(engine, "b", [(timedelta(minutes=30), 100, 0)])  # another endpoint
    with Session(engine) as session:
        got = series(session, "a", until=NOW, span=timedelta(hours=24), buckets=24)
    assert len(got) == 24
    assert got[0] == (NOW.replace(second=0) - timedelta(hours=24), 5, 5)
    assert [(a, f) for _, a, f in got[1:23]] == [(0, 0)] * 22
    assert got[23][1:] == (6, 1)
