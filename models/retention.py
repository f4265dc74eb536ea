"""Retention: delete expired events with their deliveries and attempts, one small chunk at a time.

An event is expired once it was accepted before the cutoff and every one of
its deliveries is finished (``succeeded``, ``failed``, ``cancelled``) and was
last changed before the cutoff: a delivery that retried for days keeps its
event for the whole retention after its last attempt. An event with an open
delivery is never deleted.

:func:`purge_chunk` examines the next events of a pass, oldest first (the
``ix_event_created`` index), and deletes the expired ones in the caller's
transaction: their attempts, then their deliveries, then the events (the
foreign keys' order). It commits nothing; ``dispatcher.retention`` paces the
chunks and commits each.

Safe against concurrent writers:

- SQLite runs one write transaction at a time (``BEGIN IMMEDIATE``): what the
  chunk reads is what it deletes.
- PostgreSQL: the chunk locks its events (``FOR UPDATE SKIP LOCKED``), so no
  delivery can be added to them until it commits, then locks the finished
  deliveries it would delete, re-checked on their latest version (``FOR
  UPDATE SKIP LOCKED``). A delivery reopened (a manual retry) before that
  lock is no longer finished; one being changed is locked by its writer and
  skipped. Either way its event stays. A retry that comes after the lock
  waits for the chunk's commit and then finds the delivery gone. Skipping
  never waits, so the chunk cannot deadlock with the scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlmodel import Session

from models import counters
from models.driver import Driver, driver

EventKey = tuple[Any, str, str]
"""``(created_at as the driver returns it, account id, event id)``: where a pass is."""

_FINISHED = "('succeeded', 'failed', 'cancelled')"


@dataclass(frozen=True)
class Chunk:
    """What one chunk examined and deleted."""

    examined: int
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    last: EventKey | None = None
    """The last event examined: the next chunk of the pass starts after it."""
    stats: int = 0
    """Rows of the statistics rollup deleted (``models.endpoint_stats``), apart from ``rows``."""

    @property
    def rows(self) -> int:
        """Rows deleted, of every table."""
        return self.events + self.deliveries + self.attempts


@lru_cache(maxsize=8)
def _examine_sql(db: Driver, resume: bool) -> str:
    m = db.mark
    after = f" AND created_at >= {m} AND (created_at, account_id, id) > ({m}, {m}, {m})"
    return (
        "WITH e AS (SELECT created_at, account_id, id FROM event"
        f" WHERE created_at < {m}{after if resume else ''}"
        f" ORDER BY created_at, account_id, id LIMIT {m}"
        + (" FOR UPDATE SKIP LOCKED" if db.postgresql else "")
        + ")"
        " SELECT e.created_at, e.account_id, e.id, d.id,"
        f" CASE WHEN d.status IN {_FINISHED} AND d.updated_at < {m} THEN 1 ELSE 0 END"
        " FROM e LEFT JOIN delivery AS d ON d.account_id = e.account_id AND d.event_id = e.id"
    )


@lru_cache(maxsize=4)
def _lock_sql(db: Driver) -> str:
    return (
        f"SELECT id FROM delivery WHERE id {db.in_list('bigint')}"
        f" AND status IN {_FINISHED} AND updated_at < {db.mark} FOR UPDATE SKIP LOCKED"
    )


def purge_chunk(session: Session, *, cutoff: datetime, after: EventKey | None, limit: int) -> Chunk:
    """Examine up to ``limit`` events accepted before ``cutoff``, from ``after`` on; delete
    the expired ones with their deliveries and attempts, and count them (no commit)."""
    connection, db = driver(session)
    at = db.time(cutoff)
    params: tuple[Any, ...] = (at,)
    if after is not None:
        params += (after[0], *after)
    rows = connection.exec_driver_sql(_examine_sql(db, after is not None), (*params, limit, at))
    events: dict[tuple[str, str], list[int]] = {}
    keep: set[tuple[str, str]] = set()
    last: EventKey | None = None
    for created_at, account_id, event_id, delivery_id, expired in rows:
        key = (account_id, event_id)
        if last is None or (created_at, account_id, event_id) > last:
            last = (created_at, account_id, event_id)
        ids = events.setdefault(key, [])
        if delivery_id is None:
            continue
        if expired:
            ids.append(delivery_id)
        else:
            keep.add(key)
    if not events:
        return Chunk(examined=0)
    doomed = {key: ids for key, ids in events.items() if key not in keep}
    if db.postgresql and doomed:
        doomed = _locked(session, db, doomed, at)
    deliveries = [i for ids in doomed.values() for i in ids]
    attempts = removed = 0
    if deliveries:
        attempts = _delete_in(session, db, "attempt", "delivery_id", deliveries)
        removed = _delete_in(session, db, "delivery", "id", deliveries)
    purged = _delete_events(session, db, list(doomed))
    counters.add(
        session,
        {
            (counters.PURGED, "event"): purged,
            (counters.PURGED, "delivery"): removed,
            (counters.PURGED, "attempt"): attempts,
        },
    )
    return Chunk(len(events), purged, removed, attempts, last)


def _locked(
    session: Session, db: Driver, doomed: dict[tuple[str, str], list[int]], at: Any
) -> dict[tuple[str, str], list[int]]:
    """Those of ``doomed`` whose every delivery this transaction could lock still finished."""
    wanted = [i for ids in doomed.values() for i in ids]
    if not wanted:
        return doomed
    connection, _ = driver(session)
    locked = set(connection.exec_driver_sql(_lock_sql(db), (db.values(wanted), at)).scalars())
    return {key: ids for key, ids in doomed.items() if locked.issuperset(ids)}


def _delete_in(session: Session, db: Driver, table: str, column: str, ids: Sequence[int]) -> int:
    connection, _ = driver(session)
    sql = f"DELETE FROM {table} WHERE {column} {db.in_list('bigint')}"
    return int(connection.exec_driver_sql(sql, (db.values(ids),)).rowcount)


def _delete_events(session: Session, db: Driver, keys: Sequence[tuple[str, str]]) -> int:
    if not keys:
        return 0
    connection, _ = driver(session)
    if db.postgresql:
        a = db.list_mark
        sql = (
            "DELETE FROM event WHERE (account_id, id) IN"
            f" (SELECT * FROM unnest({a}::text[], {a}::text[]))"
        )
        params = ([k[0] for k in keys], [k[1] for k in keys])
        return int(connection.exec_driver_sql(sql, params).rowcount)
    m = db.mark
    sql = f"DELETE FROM event WHERE account_id = {m} AND id = {m}"
    return int(connection.exec_driver_sql(sql, list(keys)).rowcount)
