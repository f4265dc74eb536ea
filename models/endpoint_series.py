"""What the portal draws of endpoints' health, read from the minute rollup (``endpoint_stat``).

``models.endpoint_stats`` keeps one row per endpoint and minute, written with
the attempts it counts; the API's ``stats/`` sums a window of it. The portal
also needs a page of endpoints' success rates at once (one statement, not
one per endpoint) and one endpoint's attempts over time, in equal buckets.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlmodel import Session, col

from models.endpoint_stats import EndpointStat, minute_of


def success_rates(
    session: Session, endpoint_ids: Sequence[str], *, since: datetime
) -> dict[str, float]:
    """Per endpoint with attempts since ``since`` (from its minute), succeeded / attempts."""
    if not endpoint_ids:
        return {}
    rows = session.execute(
        select(
            col(EndpointStat.endpoint_id),
            func.sum(col(EndpointStat.attempts)),
            func.sum(col(EndpointStat.succeeded)),
        )
        .where(
            col(EndpointStat.endpoint_id).in_(list(endpoint_ids)),
            col(EndpointStat.minute) >= minute_of(since),
        )
        .group_by(col(EndpointStat.endpoint_id))
    ).all()
    return {str(e): int(s or 0) / int(a) for e, a, s in rows if a}


def series(
    session: Session, endpoint_id: str, *, until: datetime, span: timedelta, buckets: int
) -> list[tuple[datetime, int, int]]:
    """The endpoint's attempts and failures in ``buckets`` equal spans ending at ``until``.

    Oldest first: ``(start, attempts, failures)`` for each, empty spans included.
    """
    step = span / buckets
    start = minute_of(until - span)
    rows = session.execute(
        select(
            col(EndpointStat.minute), col(EndpointStat.attempts), col(EndpointStat.succeeded)
        ).where(col(EndpointStat.endpoint_id) == endpoint_id, col(EndpointStat.minute) >= start)
    ).all()
    attempts = [0] * buckets
    failures = [0] * buckets
    for minute, tried, succeeded in rows:
        index = min(int((minute - start) / step), buckets - 1)
        attempts[index] += int(tried)
        failures[index] += int(tried) - int(succeeded)
    return [(start + step * i, attempts[i], failures[i]) for i in range(buckets)]
