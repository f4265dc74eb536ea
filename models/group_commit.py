"""Group commit: concurrent ingestions share one transaction and one commit.

Every request of events is validated on its own, then waits here. One writer
thread commits what is waiting in one transaction
(:func:`models.events.ingest_many`), and each request is answered when that
commit has returned: a 202 still means durably committed, but the fsync
(SQLite, ``synchronous=FULL``) or the WAL flush (PostgreSQL,
``synchronous_commit``) is paid once per group instead of once per request,
and so are the connection checkout, the lookups and the statements. A
request that finds the writer idle is committed at once, and while one group
commits the next one gathers, so groups grow with the load and with how slow
a commit is.

While requests keep coming, a commit that would start less than
``delay`` (5 ms) after the previous one started waits for the rest of it,
unless ``enough`` requests (64) are already waiting (:func:`gather_for`):
PostgreSQL's ``commit_delay`` idea. A commit costs the writer ~0.35 ms of CPU
however small its group; at 2,400 single-event posts a second, commits as
soon as the writer was free held 3 to 6 requests each, and the writer spent
0.09-0.17 ms per request; with the delay, 0.07-0.10 ms (SQLite, 64 in flight,
while delivering). A request that finds the writer idle still commits at once.

If a group's commit fails, its requests are committed again one by one, so
that a request the database refuses (none is known: every request was
validated before it joined) fails alone. A request whose own commit fails
gets :class:`models.errors.Unavailable` (the API's 503 with ``Retry-After``),
never a 202.

Overload. What waits here is held in memory, and each request waits for its
turn however long the database takes: a slow or stuck database would
otherwise pile requests up without limit, each waiting for ever. So a request
that would bring the events waiting (not yet in a commit) past
``max_waiting_events`` is refused at once, nothing of it stored, with
:class:`~models.errors.Unavailable` (:func:`admits`); one that finds nothing
waiting is always taken, however large, or it could never be. And the age of
the oldest request not yet answered (waiting, or in the commit under way) is
what ``/healthz`` judges the writer by (:func:`writer_health`): past
``stuck_after`` the writer is reported stuck.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, NoReturn

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from models.errors import Unavailable
from models.events import EventIn, Ingested, ingest_many

log = logging.getLogger(__name__)

COMMIT_DELAY = 0.005
"""Seconds between the starts of two commits of one busy period, at least."""
ENOUGH_TO_COMMIT = 64
"""Requests waiting that start a commit without the delay."""
MAX_GROUP_EVENTS = 2_000
"""Events per transaction at most (a larger request commits alone): a writer's
turn on SQLite holds off the dispatcher's claims, so turns are kept short."""
MAX_WAITING_EVENTS = 50_000
"""Events waiting for a commit at most, per API process (``SENTINMAIL_MAX_WAITING_EVENTS``).

Above what a busy fleet keeps in flight: the ingestion benchmark's heaviest
phase holds 64 requests of 500 events (32,000) against one process, and that
load is served, not refused. Small enough to matter: parsed, a typical event
holds ~1.5 KB, so ~75 MB at the bound; and at the writer's measured 5,800 to
16,000 events/s (``benchmarks/README.md``) it is 3 to 9 s of work, within any
client's timeout. Past that, queueing more only adds memory and waits that
clients give up on (and retry: more load)."""
WRITER_STUCK_AFTER = 30.0
"""Seconds the oldest request may have waited before the writer is reported stuck.

A full queue is 3 to 9 s of work, and a commit that waits for a lock gives up
after SQLite's busy timeout (30 s, ``models.db``): a request older than that
is not waiting for a slow database but for one that does not answer (a commit
that hangs, or a turn on the SQLite write lock that never comes), and its
client, at a usual 30 s timeout, has given up already."""


def admits(waiting_events: int, incoming: int, *, bound: int) -> bool:
    """Whether a request of ``incoming`` events may wait with ``waiting_events`` others.

    Refused only past ``bound`` and only if something waits: a request larger
    than the bound is taken alone, or it could never be.
    """
    return waiting_events == 0 or waiting_events + incoming <= bound


@dataclass(frozen=True, slots=True)
class WriterHealth:
    """The writer as ``/healthz`` shows it."""

    status: Literal["ok", "stuck"]
    waiting_events: int
    """Events waiting for a commit (not those of the commit under way)."""
    oldest_wait_s: float
    """How long the oldest request not yet answered has waited (0: none)."""


def writer_health(
    now: float, oldest_arrival: float | None, waiting_events: int, *, stuck_after: float
) -> WriterHealth:
    """The writer is stuck once a request not yet answered has waited over ``stuck_after``."""
    waited = 0.0 if oldest_arrival is None else max(0.0, now - oldest_arrival)
    status: Literal["ok", "stuck"] = "stuck" if waited > stuck_after else "ok"
    return WriterHealth(status, waiting_events, round(waited, 3))


def gather_for(
    now: float, previous_start: float, waiting: int, *, delay: float, enough: int
) -> float:
    """Seconds to let more requests join before the next commit of a busy period."""
    if waiting >= enough:
        return 0.0
    return max(0.0, previous_start + delay - now)


@dataclass(frozen=True, slots=True)
class _Waiting:
    account_id: str
    events: Sequence[EventIn]
    answer: asyncio.Future[Ingested]
    arrived: float


class GroupCommit:
    """Commits the events of concurrent requests together, on one writer thread.

    ``committed`` is called on the event loop after each commit with what it
    stored (the API wakes the dispatcher there). ``waiting_changed`` is called
    with the events waiting whenever that changes, and ``refused`` with the
    events of each request refused for saturation (the API's metrics). Both
    run on the event loop, in the request's path: keep them cheap.

    :meth:`health` may be called from any thread (``/healthz`` runs on one of
    the API's worker threads): it only reads.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_events: int = MAX_GROUP_EVENTS,
        delay: float = COMMIT_DELAY,
        enough: int = ENOUGH_TO_COMMIT,
        max_waiting_events: int = MAX_WAITING_EVENTS,
        stuck_after: float = WRITER_STUCK_AFTER,
        committed: Callable[[list[Ingested]], None] | None = None,
        waiting_changed: Callable[[int], None] | None = None,
        refused: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._max_events = max_events
        self._delay = delay
        self._enough = enough
        self._max_waiting_events = max_waiting_events
        self._stuck_after = stuck_after
        self._committed = committed
        self._waiting_changed = waiting_changed
        self._refused = refused
        self._clock = clock
        self._waiting: deque[_Waiting] = deque()
        self._waiting_events = 0
        self._committing_since: float | None = None
        """When the oldest request of the commit under way arrived (None: no commit)."""
        self._saturated = False
        self._writer: asyncio.Task[None] | None = None
        self._db: ThreadPoolExecutor | None = None
        self.commits = 0
        """Transactions committed so far (groups, and requests retried alone)."""

    @property
    def waiting(self) -> int:
        """Requests waiting for their group (those being committed are not counted)."""
        return len(self._waiting)

    @property
    def waiting_events(self) -> int:
        """Events waiting for their group (those being committed are not counted)."""
        return self._waiting_events

    def health(self) -> WriterHealth:
        """How much waits, and whether the oldest request has waited too long."""
        oldest = self._committing_since
        if oldest is None:
            try:
                oldest = self._waiting[0].arrived
            except IndexError:  # emptied meanwhile, by the event loop's thread
                oldest = None
        return writer_health(
            self._clock(), oldest, self._waiting_events, stuck_after=self._stuck_after
        )

    async def ingest(self, account_id: str, events: Sequence[EventIn]) -> Ingested:
        """Store ``events`` of ``account_id`` with what else waits; return once committed.

        Raises :class:`~models.errors.Unavailable` at once, nothing stored, if
        the events waiting would exceed ``max_waiting_events``.
        """
        if not admits(self._waiting_events, len(events), bound=self._max_waiting_events):
            self._refuse(len(events))
        self._saturated = False
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Ingested] = loop.create_future()
        self._waiting.append(_Waiting(account_id, events, answer, self._clock()))
        self._waiting_events += len(events)
        if self._waiting_changed is not None:
            self._waiting_changed(self._waiting_events)
        if self._writer is None or self._writer.done():
            # Started on demand, ends when nothing waits: no task outlives its loop.
            self._writer = loop.create_task(self._write())
        return await answer

    def _refuse(self, events: int) -> NoReturn:
        if not self._saturated:  # once per episode, not once per request refused
            self._saturated = True
            log.warning(
                "ingestion saturated: %d events wait for the database; refusing requests",
                self._waiting_events,
            )
        if self._refused is not None:
            self._refused(events)
        raise Unavailable(
            f"ingestion is saturated: {self._waiting_events} events are waiting for the "
            "database; nothing of this request was stored, retry"
        )

    def close(self) -> None:
        """Let the writer thread go (a later request starts another)."""
        if self._db is not None:
            self._db.shutdown(wait=True)
            self._db = None

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        if self._db is None:
            self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
        started: float | None = None  # this busy period's last commit
        while self._waiting:
            if started is not None:
                pause = gather_for(
                    loop.time(), started, len(self._waiting), delay=self._delay, enough=self._enough
                )
                if pause:
                    await asyncio.sleep(pause)
            group = self._next_group()
            if not group:
                continue
            started = loop.time()
            self._committing_since = group[0].arrived
            try:
                outcomes = await loop.run_in_executor(self._db, self._commit, group)
            except Exception as exc:  # a bug, not the database: each request fails with it
                outcomes = [exc] * len(group)
            finally:
                self._committing_since = None
            stored: list[Ingested] = []
            for waiting, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Ingested):
                    stored.append(outcome)
                if waiting.answer.done():  # its request went away meanwhile
                    continue
                if isinstance(outcome, Ingested):
                    waiting.answer.set_result(outcome)
                else:
                    waiting.answer.set_exception(outcome)
            if stored and self._committed is not None:
                try:
                    self._committed(stored)
                except Exception:  # waking the dispatcher is a hint: its poll finds the work
                    log.exception("after a commit")

    def _next_group(self) -> list[_Waiting]:
        """The oldest waiting requests, up to ``max_events`` events (at least one request)."""
        group: list[_Waiting] = []
        size = 0
        while self._waiting:
            waiting = self._waiting[0]
            if group and size + len(waiting.events) > self._max_events:
                break
            self._waiting.popleft()
            self._waiting_events -= len(waiting.events)
            if waiting.answer.done():  # cancelled before its turn: nothing to store
                continue
            group.append(waiting)
            size += len(waiting.events)
        if self._waiting_changed is not None:
            self._waiting_changed(self._waiting_events)
        return group

    def _commit(self, group: list[_Waiting]) -> list[Ingested | BaseException]:
        """On the writer thread: the group in one transaction, or one by one if that fails."""
        try:
            return list(self._transaction(group))
        except SQLAlchemyError as exc:
            if len(group) == 1:
                return [self._unavailable(exc)]
            log.warning("a group of %d requests failed to commit (%s); one by one", len(group), exc)
        outcomes: list[Ingested | BaseException] = []
        for waiting in group:
            try:
                outcomes.extend(self._transaction([waiting]))
            except SQLAlchemyError as exc:
                outcomes.append(self._unavailable(exc))
        return outcomes

    def _transaction(self, group: list[_Waiting]) -> list[Ingested]:
        with Session(self._engine) as session:
            stored = ingest_many(session, [(w.account_id, w.events) for w in group])
        self.commits += 1
        return stored

    @staticmethod
    def _unavailable(exc: SQLAlchemyError) -> Unavailable:
        log.error("ingestion failed to commit: %s", exc)
        error = Unavailable(f"the database did not commit ({type(exc).__name__}); retry")
        error.__cause__ = exc
        return error
