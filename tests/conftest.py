"""Fixtures shared by the suite: a migrated database per test, on every backend.

Every test that asks for ``database_url`` (or ``engine``, ``client``...) runs
against SQLite, and also against PostgreSQL when ``SENTINMAIL_TEST_DATABASE_URL``
points at a server (``.ci/run`` sets it). The PostgreSQL database is created
with a unique name for the session, migrated once, emptied before each test
and dropped at the end.

``make test`` runs the suite in two phases: the tests not marked ``serial`` on
two pytest-xdist workers, then those marked ``serial`` (see
:func:`pytest_collection_modifyitems`) in one process, alone on the machine.
A plain ``pytest`` runs everything in one process.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel, col

import models.tables  # noqa: F401 - the metadata lists every table
from api.app import create_app
from dispatcher.settings import Settings
from models import accounts, deliveries, migrate
from models.db import make_engine
from models.deliveries import Delivery
from models.jobs import Job

PG_SERVER = os.environ.get("SENTINMAIL_TEST_DATABASE_URL")
BACKENDS = ["sqlite", *(["postgresql"] if PG_SERVER else [])]


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects on the marker added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``serial`` every test that needs Ray, so that ``-m`` can run them apart.

    Ray in tests is one ``ray.init(num_cpus=2)`` per session (an xdist worker
    each would be two Ray clusters on two cores), and the Ray tests and the
    benchmark scripts (Rays of their own) are timed for a machine they do not
    share with another test: the tiny isolation run gives attempts 1 s, say.
    Tests that assert wall-clock bounds of their own carry ``pytest.mark.serial``
    by hand.
    """
    for item in items:
        if item.get_closest_marker("ray") or "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this run of the test."""
    return str(request.param)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database of this session, migrated, dropped at the end."""
    assert PG_SERVER, "SENTINMAIL_TEST_DATABASE_URL is not set"
    name = f"sentinmail_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database_url(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> str:
    """The URL of an empty, migrated database for this test."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db')}/sentinmail.db"
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        return url
    return emptied(str(request.getfixturevalue("postgres_database")))


def emptied(url: str) -> str:
    """Empty every table of the database at ``url``; return the URL."""
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on this test's database."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Production defaults (https only) on this test's database."""
    return Settings(database_url=database_url)


@pytest.fixture
def client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    """A test client on an app built for this test."""
    with TestClient(create_app(settings, engine)) as test_client:
        yield test_client


def make_key(engine: Engine, account: str) -> str:
    """A new live key of ``account``."""
    with Session(engine) as session:
        return accounts.create_key(session, account)[1]


def lease_due(
    session: Session,
    *,
    now: datetime,
    limit: int,
    lease: timedelta = timedelta(seconds=60),
    excluding: Sequence[str] = (),
) -> list[Job]:
    """Lease up to ``limit`` due deliveries and commit: a claim without capacity rules."""
    jobs = deliveries.due(session, now=now, limit=limit, excluding=excluding)
    deliveries.lease(session, [j.delivery_id for j in jobs], now=now, until=now + lease)
    session.commit()
    return jobs


def delivery_statuses(engine: Engine) -> dict[str, int]:
    """How many deliveries stand in each status now."""
    with Session(engine) as session:
        status = col(Delivery.status)
        rows = session.execute(select(status, func.count()).group_by(status))
        return {str(status): int(n) for status, n in rows}


@pytest.fixture
def api_key(engine: Engine) -> str:
    """A key of the account ``acme``."""
    return make_key(engine, "acme")


@pytest.fixture
def other_key(engine: Engine) -> str:
    """A key of another account, ``globex``."""
    return make_key(engine, "globex")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray for the whole session, shut down at the end (only the one we started)."""
    import ray

    # "local": a Ray of its own, even while another suite has a cluster up on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
