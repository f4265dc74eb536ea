"""Engines: one per process, configured for each backend's strengths.

SQLite runs in WAL mode with ``BEGIN IMMEDIATE`` transactions: the API and the
dispatcher write from different processes, and a deferred transaction that
reads and then writes would fail with ``SQLITE_BUSY`` instead of waiting for
the lock. Pure reads (authenticating a key on every request) use
:func:`reader`, whose transactions take no lock: in WAL mode readers never
wait for writers. ``synchronous=FULL`` because an accepted event must survive a
power cut, not only a crash of the process.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

# The placeholder of each DBAPI parameter style that takes values in a tuple, for the
# statements the hot paths send straight to the driver (SQLite's and psycopg's styles).
PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "sentinmail_read_only"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create the engine for ``url`` (any SQLAlchemy URL)."""
    if make_url(url).get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)

    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
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
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def reader(engine: Engine) -> Engine:
    """``engine`` for transactions that only read (same pool; no write lock on SQLite)."""
    return engine.execution_options(**{READ_ONLY: True})
