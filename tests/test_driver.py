"""Plain SQL to the driver: placeholders and bound values as SQLAlchemy would bind them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, func, select
from sqlmodel import Session

from models import accounts
from models.base import UTCDateTime
from models.db import make_engine
from models.deliveries import Delivery
from models.driver import Driver, _driver
from models.event_types import EventType
from models.events import Event, EventIn, ingest


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://", Driver(postgresql=False, mark="?", list_mark="?")),
        ("postgresql+psycopg://", Driver(postgresql=True, mark="%s", list_mark="%b")),
    ],
)
def test_each_backend_gets_its_placeholders(url: str, expected: Driver) -> None:
    dialect = create_engine(url).dialect  # no connection: only the dialect
    assert _driver(dialect.name, dialect.driver, dialect.paramstyle) == expected


@pytest.mark.parametrize(
    ("name", "driver", "paramstyle"),
    [
        ("sqlite", "pysqlite", "named"),
        ("sqlite", "pysqlite", "numeric"),
        ("mysql", "mysqldb", "format"),
    ],
)
def test_other_backends_and_parameter_styles_are_refused(
    name: str, driver: str, paramstyle: str
) -> None:
    with pytest.raises(NotImplementedError, match=f"not {name} with {paramstyle} parameters"):
        _driver(name, driver, paramstyle)


def test_ingestion_on_a_driver_taking_named_parameters_stores_nothing(
    backend: str, database_url: str, api_key: str
) -> None:
    if backend != "sqlite":
        pytest.skip("only pysqlite takes both parameter styles")
    named = make_engine(database_url, paramstyle="named")
    try:
        with Session(named) as session:
            account = accounts.authenticate(session, api_key)
            assert account is not None
            event = EventIn(id="evt-1", type=EventType.OPENED, recipient="user@example.com")
            with pytest.raises(NotImplementedError):
                ingest(session, account.id, [event])
            session.rollback()
            counts = [
                session.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (Event, Delivery)
            ]
            assert counts == [0, 0]
    finally:
        named.dispose()


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC),
        datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),  # no microseconds: still written out
        datetime(2026, 3, 4, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    ],
)
def test_times_are_bound_as_sqlalchemy_binds_them(value: datetime) -> None:
    for url in ["sqlite://", "postgresql+psycopg://"]:
        dialect = create_engine(url).dialect
        bind = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
        assert bind is not None
        db = _driver(dialect.name, dialect.driver, dialect.paramstyle)
        assert db.time(value) == bind(value)


def test_a_naive_time_is_refused() -> None:
    db = Driver(postgresql=False, mark="?", list_mark="?")
    with pytest.raises(ValueError, match="aware"):
        db.time(datetime(2026, 1, 1))
