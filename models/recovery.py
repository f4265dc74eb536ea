"""Recovering a time window: deliveries again for an endpoint's events that never arrived.

For every event of the account accepted in ``[since, until)`` whose type the
endpoint subscribes to now and that has no succeeded delivery to it, a failed
or cancelled delivery is reopened, and one is created where none exists.
Open deliveries (pending or being attempted) are left as they are, so a second
call while the first one's work is still open creates nothing.

Every recovered delivery is low priority and due now, with a fresh retry
schedule (its ``attempts`` start again from 0; the attempts already made stay
in the log). New ones go through ingestion's own insert
(:func:`models.events.insert_deliveries`).

The window is walked in chunks of ``chunk`` events, oldest first by
``(created_at, id)`` over ``ix_event_account_created``, one transaction and
one commit each: memory holds one chunk, and no transaction holds the
database for long while the dispatcher keeps claiming and recording.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlmodel import Session

from models.driver import driver
from models.endpoints import Endpoint
from models.event_types import Priority
from models.events import insert_deliveries
from models.jobs import DeliveryStatus

CHUNK = 2000
"""Events per transaction."""

_PENDING = DeliveryStatus.PENDING.value
_SUCCEEDED = DeliveryStatus.SUCCEEDED.value
_REOPENABLE = (DeliveryStatus.FAILED.value, DeliveryStatus.CANCELLED.value)


def recover(
    session: Session,
    endpoint: Endpoint,
    *,
    since: datetime,
    until: datetime,
    now: datetime,
    chunk: int = CHUNK,
    committed: Callable[[int], None] | None = None,
) -> int:
    """Reopen or create the endpoint's missing deliveries of the window; commit per chunk.

    Returns how many deliveries were reopened or created. ``committed`` is
    called after each commit with the number that chunk made (tests count them).
    """
    types = sorted(set(endpoint.events))
    if not types or since >= until:
        return 0
    _, db = driver(session)
    m = db.mark
    walk = (
        f"SELECT id, created_at FROM event WHERE account_id = {m}"
        f" AND created_at >= {m} AND created_at < {m} AND type {db.in_list('text')}"
        # The range start alone is what the index seeks; the OR finishes the keyset.
        f" AND created_at >= {m} AND (created_at > {m} OR id > {m})"
        f" ORDER BY created_at, id LIMIT {m}"
    )
    existing = (
        f"SELECT id, event_id, status FROM delivery WHERE account_id = {m}"
        f" AND endpoint_id = {m} AND event_id {db.in_list('text')}"
    )
    reopen = (
        f"UPDATE delivery SET status = '{_PENDING}', priority = {int(Priority.LOW)},"
        f" attempts = 0, due_at = {m}, updated_at = {m}"
        f" WHERE id {db.in_list('bigint')} AND status IN {_REOPENABLE!r}"
    )
    at = db.time(now)
    last_at, last_id = db.time(since), ""
    total = 0
    while True:
        connection = session.connection()  # a new one after each commit
        events = connection.exec_driver_sql(
            walk,
            (
                endpoint.account_id,
                db.time(since),
                db.time(until),
                db.values(types),
                last_at,
                last_at,
                last_id,
                chunk,
            ),
        ).all()
        if not events:
            break
        event_ids = [e[0] for e in events]
        found: dict[str, list[tuple[int, str]]] = {}
        for delivery_id, event_id, status in connection.exec_driver_sql(
            existing, (endpoint.account_id, endpoint.id, db.values(event_ids))
        ):
            found.setdefault(event_id, []).append((delivery_id, status))
        reopened: list[int] = []
        new: list[tuple[Any, ...]] = []
        for event_id in event_ids:
            mine = found.get(event_id)
            if mine is None:
                new.append(
                    (
                        endpoint.account_id,
                        event_id,
                        endpoint.id,
                        int(Priority.LOW),
                        _PENDING,
                        0,
                        at,
                        at,
                        at,
                    )
                )
            elif all(status in _REOPENABLE for _, status in mine):
                reopened.append(max(delivery_id for delivery_id, _ in mine))
        made = len(new)
        if reopened:
            made += connection.exec_driver_sql(reopen, (at, at, db.values(reopened))).rowcount
        insert_deliveries(connection, db, new)
        session.commit()
        total += made
        if committed is not None:
            committed(made)
        # As the database gave it: naive UTC text on SQLite, which compares as stored.
        last_at, last_id = events[-1][1], events[-1][0]
        if len(events) < chunk:
            break
    return total
