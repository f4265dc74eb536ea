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
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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


class GroupCommit:
    """Commits the events of concurrent requests together, on one writer thread.

    ``committed`` is called on the event loop after each commit with what it
    stored (the API wakes the dispatcher there).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_events: int = MAX_GROUP_EVENTS,
        delay: float = COMMIT_DELAY,
        enough: int = ENOUGH_TO_COMMIT,
        committed: Callable[[list[Ingested]], None] | None = None,
    ) -> None:
        self._engine = engine
        self._max_events = max_events
        self._delay = delay
        self._enough = enough
        self._committed = committed
        self._waiting: deque[_Waiting] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._db: ThreadPoolExecutor | None = None
        self.commits = 0
        """Transactions committed so far (groups, and requests retried alone)."""

    @property
    def waiting(self) -> int:
        """Requests waiting for their group (those being committed are not counted)."""
        return len(self._waiting)

    async def ingest(self, account_id: str, events: Sequence[EventIn]) -> Ingested:
        """Store ``events`` of ``account_id`` with what else waits; return once committed."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Ingested] = loop.create_future()
        self._waiting.append(_Waiting(account_id, events, answer))
        if self._writer is None or self._writer.done():
            # Started on demand, ends when nothing waits: no task outlives its loop.
            self._writer = loop.create_task(self._write())
        return await answer

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
            try:
                outcomes = await loop.run_in_executor(self._db, self._commit, group)
            except Exception as exc:  # a bug, not the database: each request fails with it
                outcomes = [exc] * len(group)
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
            if waiting.answer.done():  # cancelled before its turn: nothing to store
                continue
            group.append(waiting)
            size += len(waiting.events)
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
