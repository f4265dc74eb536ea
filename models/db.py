"""Engines: one per process, configured for each backend's strengths.

SQLite runs in WAL mode with ``BEGIN IMMEDIATE`` transactions: the API and the
dispatcher write from different processes, and a deferred transaction that
reads and then writes would fail with ``SQLITE_BUSY`` instead of waiting for
the lock. Pure reads (authenticating a key on every request) use
:func:`reader`, whose transactions take no lock: in WAL mode readers never
wait for writers. ``synchronous=FULL`` because an accepted event must survive a
power cut, not only a crash of the process.

Writers also take turns through an ``flock`` on a file beside the database
(:class:`_TurnTakingConnection`) before ``BEGIN IMMEDIATE``. SQLite's own
busy handler polls for the write lock with sleeps of up to 100 ms, so a
writer that commits often (the API's ingestion, four requests at a time)
wins it again and again while another (the scheduler's claim) sleeps: every
delivery stalled until ingestion ended. The kernel wakes a blocked ``flock``
the moment the lock is released, so every writer gets its turn.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
"""Seconds a new PostgreSQL connection may take (libpq's ``connect_timeout``; the URL's wins).

libpq waits for ever by default: with the database's host gone, every thread
that needed a connection hung (a SYN unanswered is retried for ~2 minutes),
/healthz included. Now each gives up, and the API answers 503 (``api.errors``)."""
READ_ONLY = "sentinmail_read_only"


# Threads of this process that hold a write turn: a thread opening a second write
# transaction while it holds one would otherwise wait on itself for ever.
_holders: set[int] = set()
_holders_lock = threading.Lock()


class _TurnTakingConnection(sqlite3.Connection):
    """A pysqlite connection that holds an ``flock`` from its ``BEGIN IMMEDIATE`` to its end.

    The lock file is ``<database>-writelock``; in-memory databases have none
    (one process, so nobody to take turns with). A thread that already holds
    a turn through another connection does not take a second one: its
    ``BEGIN IMMEDIATE`` meets SQLite's own lock, which gives up after the
    busy timeout, as it did before turns existed.
    """

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        name = os.fsdecode(database)
        on_disk = name not in ("", ":memory:") and not name.startswith("file:")
        self._turn_fd = -1
        if on_disk:
            self._turn_fd = os.open(f"{name}-writelock", os.O_RDWR | os.O_CREAT, 0o600)
        self._turn_holder: int | None = None

    def take_turn(self) -> None:
        """Wait for this connection's turn to write (before ``BEGIN IMMEDIATE``)."""
        thread = threading.get_ident()
        if self._turn_fd < 0 or self._turn_holder is not None or thread in _holders:
            return
        fcntl.flock(self._turn_fd, fcntl.LOCK_EX)
        with _holders_lock:
            _holders.add(thread)
        self._turn_holder = thread

    @property
    def holds_turn(self) -> bool:
        """Whether this connection holds the write turn."""
        return self._turn_holder is not None

    def _end_turn(self) -> None:
        if self._turn_holder is not None:
            with _holders_lock:
                _holders.discard(self._turn_holder)
            self._turn_holder = None
            fcntl.flock(self._turn_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._end_turn()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._end_turn()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._end_turn()
            if self._turn_fd >= 0:
                os.close(self._turn_fd)
                self._turn_fd = -1


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create the engine for ``url`` (any SQLAlchemy URL).

    A connection going back to the pool is rolled back only if a transaction
    is still open on it (:func:`_roll_back_if_open`), where SQLAlchemy's
    default rolls back every one: a call per commit for nothing, and none at
    all after a failed commit, which is the one case that needs it.
    """
    kwargs.setdefault("pool_reset_on_return", None)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S} | kwargs.get(
                "connect_args", {}
            )
        engine = create_engine(url, **kwargs)
        event.listen(engine, "reset", _roll_back_if_open)
        return engine

    engine = create_engine(
        url,
        connect_args={
            "check_same_thread": False,
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            "factory": _TurnTakingConnection,
        },
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so that "begin" below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY, False):
            connection.exec_driver_sql("BEGIN")
            return
        dbapi_connection = connection.connection.dbapi_connection
        if isinstance(dbapi_connection, _TurnTakingConnection):
            dbapi_connection.take_turn()
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "reset", _roll_back_if_open)
    return engine


def _roll_back_if_open(dbapi_connection: Any, _record: Any, _state: Any) -> None:
    """Roll back a connection that comes back to the pool inside a transaction.

    A commit that fails (in the driver, or in SQLAlchemy before it) leaves the
    transaction open, and SQLAlchemy, taking it for ended, hands the connection
    out again as it is: the next ``BEGIN IMMEDIATE`` fails on SQLite, and on
    PostgreSQL the next transaction would commit the failed one's rows with
    its own. On SQLite the write turn is given back too.
    """
    if isinstance(dbapi_connection, _TurnTakingConnection):
        open_ = dbapi_connection.in_transaction or dbapi_connection.holds_turn
    elif type(dbapi_connection).__module__.startswith("psycopg"):
        from psycopg.pq import TransactionStatus  # loaded already, by the dialect

        open_ = dbapi_connection.info.transaction_status != TransactionStatus.IDLE
    else:  # a driver we cannot ask: as SQLAlchemy would
        open_ = True
    if open_:
        dbapi_connection.rollback()


def reader(engine: Engine) -> Engine:
    """``engine`` for transactions that only read (same pool; no write lock on SQLite)."""
    return engine.execution_options(**{READ_ONLY: True})
