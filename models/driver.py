"""Plain SQL straight to the DBAPI driver: how the hot paths write SQL and bind values.

Ingestion inserts every event and delivery, and the scheduler claims and
settles every delivery, through statements sent with ``exec_driver_sql``.
Built with SQLAlchemy, its own work cost several times the database's: an IN
list was compiled afresh for every claim, and every row of an executemany
went through a dict and a type processor per value (five times the CPU of the
driver's own executemany). So these are plain SQL with positional
parameters, written once per backend; a list of values is one parameter (a
JSON array on SQLite, an array on PostgreSQL), whatever its length. The
statements themselves live with their resource (``models.deliveries``,
``models.events``, ``models.endpoints``); this module owns only how they are
written and bound.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection
from sqlmodel import Session

# The placeholder of each DBAPI parameter style that takes values in a tuple
# (SQLite's and psycopg's styles).
PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


@dataclass(frozen=True, slots=True)
class Driver:
    """How the hot paths write SQL and bind values for one backend (SQLite or PostgreSQL)."""

    postgresql: bool
    mark: str  # the positional placeholder of the driver's paramstyle
    # The placeholder of a list: psycopg's binary one, ``%b``, dumps a list of
    # 300 values in a quarter of the time its text one takes, ``%s``.
    list_mark: str

    def marks(self, count: int) -> str:
        """``count`` placeholders, comma-separated: ``IN (...)`` of values bound one by one."""
        return ", ".join([self.mark] * count)

    def in_list(self, sql_type: str) -> str:
        """``IN`` a list bound by :meth:`values` (whose elements PostgreSQL types ``sql_type``)."""
        if self.postgresql:
            return f"= ANY({self.list_mark}::{sql_type}[])"
        return f"IN (SELECT value FROM json_each({self.list_mark}))"

    def values(self, values: Sequence[Any]) -> Any:
        """``values`` as the one parameter of :meth:`in_list` or of a PostgreSQL ``unnest``."""
        return list(values) if self.postgresql else json.dumps(values)

    def time(self, value: datetime | None) -> Any:
        """An aware datetime as ``models.base.UTCDateTime`` binds it (naive UTC text on SQLite)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"expected an aware datetime, got {value!r}")
        if self.postgresql:
            return value
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        # SQLAlchemy's SQLite format, "YYYY-MM-DD HH:MM:SS.ffffff", without the "+00:00".
        return value.isoformat(" ", "microseconds")[:26]


def driver(session: Session) -> tuple[Connection, Driver]:
    """The session's connection (in its transaction) and how to talk to its driver."""
    connection = session.connection()
    dialect = connection.dialect
    return connection, _driver(dialect.name, dialect.driver, dialect.paramstyle)


@lru_cache(maxsize=8)
def _driver(name: str, driver: str, paramstyle: str) -> Driver:
    if name not in ("sqlite", "postgresql") or paramstyle not in PLACEHOLDERS:
        raise NotImplementedError(
            "plain SQL supports SQLite and PostgreSQL with positional parameters,"
            f" not {name} with {paramstyle} parameters"
        )
    mark = PLACEHOLDERS[paramstyle]
    return Driver(
        postgresql=name == "postgresql",
        mark=mark,
        list_mark="%b" if driver == "psycopg" else mark,
    )


def insert_rows(
    connection: Connection,
    db: Driver,
    table: str,
    columns: dict[str, str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """INSERT ``rows`` (values of ``columns``, each name with its PostgreSQL type) into ``table``.

    On SQLite, one executemany. On PostgreSQL, one statement over one array
    per column (``unnest``), bound in binary: an executemany of 500 events and
    their deliveries cost the API 25 us of CPU per event, the arrays 8. Values must
    be as the driver takes them: str and int columns as they are, times
    through :meth:`Driver.time`. ``connection`` and ``db`` as :func:`driver`
    gives them (a session's ``connection()`` costs ~18 us a call).
    """
    if not rows:
        return
    sql = _insert_sql(db, table, tuple(columns.items()))
    if db.postgresql:
        connection.exec_driver_sql(sql, tuple(list(column) for column in zip(*rows, strict=True)))
    else:
        connection.exec_driver_sql(sql, rows)


@lru_cache(maxsize=16)
def _insert_sql(db: Driver, table: str, columns: tuple[tuple[str, str], ...]) -> str:
    names = ", ".join(name for name, _ in columns)
    if db.postgresql:
        arrays = ", ".join(f"{db.list_mark}::{sql_type}[]" for _, sql_type in columns)
        return f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})"
    return f"INSERT INTO {table} ({names}) VALUES ({db.marks(len(columns))})"
