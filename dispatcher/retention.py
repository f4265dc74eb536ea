"""The purge: expired rows deleted in small transactions, paced so that nobody waits for it.

:class:`Purger` runs passes over the events, oldest first, one chunk per
transaction (the statements are ``models.retention``'s). :class:`PurgePace`
decides, without I/O, how big the next chunk is and how long to rest after
one: chunks are sized to about ``max_rows`` rows of every table (an event
may have many deliveries, a delivery many attempts), and while it catches up
the purge holds the database for at most ``duty`` of the time, so that
SQLite's one write lock and PostgreSQL's rows stay free for claims and
ingestion. Once a pass finds nothing more, the next starts ``idle`` seconds
later.

The scheduler actor runs the purge continuously on a thread of its own;
``sentinmail db purge`` runs one pass by hand.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from models import endpoint_stats
from models.base import utcnow
from models.retention import Chunk, EventKey, purge_chunk

STATS_KEPT = timedelta(seconds=endpoint_stats.MAX_WINDOW)
"""The statistics rollup is kept for the longest stats window, or the retention if longer."""

log = logging.getLogger(__name__)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a sum of them (``1d12h``), as a timedelta.

    ValueError for anything else, or for a duration of zero.
    """
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != compact.replace(" ", ""):
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h, 90m, 45s or 1d12h")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class PurgePolicy:
    """How the purge sizes its chunks and shares the database."""

    max_rows: int = 2_000
    """Rows (events, deliveries and attempts together) one transaction aims to delete."""
    max_events: int = 1_000
    """Events one chunk examines at most."""
    duty: float = 0.1
    """The share of the time the purge may hold the database while it catches up.

    Deleting a row costs about what inserting it did: at this share, a purge
    that deletes 55,000 rows/s when it runs flat out (SQLite or PostgreSQL on
    this 2-core machine, under load) keeps up with 5,500 rows/s, about 1,800
    deliveries a second of one attempt each, and takes 3 minutes to catch up
    on a million rows while the service delivers flat out (``benchmarks.overhead
    purge``)."""
    idle: float = 60.0
    """Seconds from a pass that found nothing more to the next."""

    @classmethod
    def for_retention(cls, retention: timedelta, duty: float = duty) -> PurgePolicy:
        """The policy for ``retention``: passes at least ten times per retention period."""
        return cls(duty=duty, idle=min(cls.idle, max(1.0, retention.total_seconds() / 10)))


@dataclass
class PurgePace:
    """The next chunk's size and the rest after each chunk (pure: no clock, no I/O)."""

    policy: PurgePolicy
    limit: int = 0
    """Events the next chunk examines: at first as if each had 100 rows (20 endpoints,
    five attempts each), then as the last chunk found them."""

    def __post_init__(self) -> None:
        if not self.limit:
            self.limit = max(1, min(self.policy.max_events, self.policy.max_rows // 100))

    def after(self, chunk: Chunk, seconds: float) -> float:
        """Learn from a chunk that took ``seconds``; return the seconds to rest before the next.

        Returns ``policy.idle`` when the chunk was the pass's last (it found fewer
        events than it asked for).
        """
        asked, self.limit = self.limit, self._next_limit(chunk)
        if chunk.examined < asked:
            return self.policy.idle
        return seconds * (1 - self.policy.duty) / self.policy.duty

    def _next_limit(self, chunk: Chunk) -> int:
        # Rows per event examined, as this chunk found them; an event without
        # expired rows still costs its look-up, so it counts as one.
        per_event = max(chunk.rows, chunk.examined) / chunk.examined if chunk.examined else 1.0
        wanted = int(self.policy.max_rows / per_event)
        # Grow at most twofold a chunk: one chunk of cheap events says little of the next.
        return max(1, min(wanted, 2 * self.limit, self.policy.max_events))


@dataclass
class Purged:
    """What a purge removed, in all."""

    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    examined: int = 0
    """Events looked at (an event kept is looked at once a pass)."""
    stats: int = 0
    """Rows of the statistics rollup deleted."""
    chunks: int = 0
    largest_chunk: int = 0
    """The most rows one transaction deleted."""

    def add(self, chunk: Chunk) -> None:
        self.events += chunk.events
        self.deliveries += chunk.deliveries
        self.attempts += chunk.attempts
        self.examined += chunk.examined
        self.stats += chunk.stats
        self.chunks += 1
        self.largest_chunk = max(self.largest_chunk, chunk.rows)

    @property
    def rows(self) -> int:
        return self.events + self.deliveries + self.attempts


@dataclass
class Purger:
    """Runs purge passes over one database; each chunk is one transaction."""

    engine: Engine
    policy: PurgePolicy = field(default_factory=PurgePolicy)
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = utcnow
    pace: PurgePace = field(init=False)
    _after: EventKey | None = field(default=None, init=False)
    _events_done: bool = field(default=False, init=False)
    """This pass has examined every event; only rollup rows are left to delete."""

    def __post_init__(self) -> None:
        self.pace = PurgePace(self.policy)

    def chunk(self, cutoff: datetime) -> tuple[Chunk, float]:
        """Purge the pass's next chunk and commit; return it and the seconds to rest.

        A chunk also deletes up to ``max_rows`` rows of the statistics rollup
        older than ``cutoff`` and the longest stats window; the pass goes on
        while they keep coming, after its events are done.
        """
        started, asked = self.clock(), self.pace.limit
        stats_cutoff = min(cutoff, self.wall() - STATS_KEPT)
        with Session(self.engine) as session:
            chunk = Chunk(examined=0)
            if not self._events_done:
                chunk = purge_chunk(session, cutoff=cutoff, after=self._after, limit=asked)
            stats = endpoint_stats.purge(session, cutoff=stats_cutoff, limit=self.policy.max_rows)
            session.commit()
        chunk = replace(chunk, stats=stats)
        seconds = self.clock() - started
        if self._events_done:
            rest = self.policy.idle
        else:
            rest = self.pace.after(chunk, seconds)
            self._after = chunk.last if chunk.examined >= asked else None
            self._events_done = self._after is None
        if stats >= self.policy.max_rows:  # more rollup rows to go: catching up, as events do
            rest = seconds * (1 - self.policy.duty) / self.policy.duty
        elif self._events_done:
            self._events_done = False  # a pass ends: start over
        return chunk, rest

    def restart_pass(self) -> None:
        """Start the next chunk from the oldest event again."""
        self._after = None
        self._events_done = False

    @property
    def between_passes(self) -> bool:
        """Whether the last chunk ended a pass (the next starts again from the oldest event)."""
        return self._after is None and not self._events_done

    def run_pass(self, cutoff: datetime, *, sleep: Callable[[float], None] = time.sleep) -> Purged:
        """One whole pass, resting between chunks as the pace says."""
        purged = Purged()
        self._after = None
        while True:
            chunk, rest = self.chunk(cutoff)
            purged.add(chunk)
            if self.between_passes:
                return purged
            sleep(rest)


async def purge_continuously(
    purger: Purger, retention: timedelta, *, wall: Callable[[], datetime] = utcnow
) -> None:
    """Purge for ever: each chunk on a thread of its own, a line logged per pass that removed rows.

    A failed chunk (the database away, a lock timeout) is logged and retried
    at the next pass: nothing it did was committed.
    """
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="purge") as thread:
        purged = Purged()
        started = loop.time()
        while True:
            try:
                chunk, rest = await loop.run_in_executor(thread, purger.chunk, wall() - retention)
                purged.add(chunk)
            except Exception:
                log.exception("purge failed; the next pass tries again")
                purger.restart_pass()
                rest = purger.policy.idle
            if purger.between_passes:
                if purged.rows:
                    log.info(
                        "purge pass removed %d events, %d deliveries and %d attempts",
                        purged.events,
                        purged.deliveries,
                        purged.attempts,
                        extra={
                            "fields": {
                                "events": purged.events,
                                "deliveries": purged.deliveries,
                                "attempts": purged.attempts,
                                "transactions": purged.chunks,
                                "seconds": round(loop.time() - started, 3),
                            }
                        },
                    )
                purged, started = Purged(), loop.time() + rest
            await asyncio.sleep(rest)
