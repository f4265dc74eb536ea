"""What the portal draws of endpoints' health, read from the statistics rollup (``endpoint_stat``).

``models.endpoint_stats`` keeps, per endpoint, a row per minute and a row per
hour, written with the attempts they count; the API's ``stats/`` sums a
window of them. The portal also needs a page of endpoints' success rates at
once (two statements, not a window per endpoint) and one endpoint's attempts
over time, in buckets of whole hours.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlmodel import Session, col

from models.endpoint_stats import HOUR, MINUTE, EndpointStat, hour_of, minute_of


def success_rates(
    session: Session, endpoint_ids: Sequence[str], *, since: datetime
) -> dict[str, float]:
    """Per endpoint with attempts since ``since`` (from its minute), succeeded / attempts.

    As ``stats/`` sums a window: its whole hours, and the minutes before the first.
    """
    if not endpoint_ids:
        return {}
    start = minute_of(since)
    first_hour = hour_of(start)
    if first_hour < start:
        first_hour += timedelta(hours=1)
    totals: dict[str, list[int]] = {}
    for span, lower, upper in ((HOUR, first_hour, None), (MINUTE, start, first_hour)):
        query = select(
            col(EndpointStat.endpoint_id),
            func.sum(col(EndpointStat.attempts)),
            func.sum(col(EndpointStat.succeeded)),
        ).where(
            col(EndpointStat.endpoint_id).in_(list(endpoint_ids)),
            col(EndpointStat.span) == span,
            col(EndpointStat.start) >= lower,
        )
        if upper is not None:
            query = query.where(col(EndpointStat.start) < upper)
        for endpoint_id, attempts, succeeded in session.execute(
            query.group_by(col(EndpointStat.endpoint_id))
        ):
            total = totals.setdefault(str(endpoint_id), [0, 0])
            total[0] += int(attempts or 0)
            total[1] += int(succeeded or 0)
    return {e: succeeded / attempts for e, (attempts, succeeded) in totals.items() if attempts}


def series(
    session: Session, endpoint_id: str, *, until: datetime, span: timedelta, buckets: int
) -> list[tuple[datetime, int, int]]:
    """The endpoint's attempts and failures in ``buckets`` equal spans of whole hours.

    They end with the hour ``until`` falls in; oldest first, ``(start, attempts,
    failures)`` for each, empty ones included. ``span / buckets`` is whole hours.
    """
    step = span / buckets
    origin = hour_of(until) + timedelta(hours=1) - span
    rows = session.execute(
        select(
            col(EndpointStat.start), col(EndpointStat.attempts), col(EndpointStat.succeeded)
        ).where(
            col(EndpointStat.endpoint_id) == endpoint_id,
            col(EndpointStat.span) == HOUR,
            col(EndpointStat.start) >= origin,
        )
    ).all()
    attempts = [0] * buckets
    failures = [0] * buckets
    for start, tried, succeeded in rows:
        index = min(int((start - origin) / step), buckets - 1)
        attempts[index] += int(tried)
        failures[index] += int(tried) - int(succeeded)
    return [(origin + step * i, attempts[i], failures[i]) for i in range(buckets)]
