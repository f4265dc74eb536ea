"""SQLite writers take turns through the ``<database>-writelock`` file; PostgreSQL connects in bounded time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session

import models.db
from models.db import make_engine, reader


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = make_engine(f"sqlite:///{tmp_path}/turns.db")
    with made.begin() as connection:
        connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    yield made
    made.dispose()


def turn_is_taken(engine: Engine) -> bool:
    """Whether some connection holds the write turn (as another process would see it)."""
    fd = os.open(f"{engine.url.database}-writelock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor releases a lock it got
    return False


def test_a_write_transaction_holds_the_turn_until_it_commits(engine: Engine) -> None:
    with engine.connect() as connection:
        transaction = connection.begin()
        assert turn_is_taken(engine)
        connection.execute(text("INSERT INTO t VALUES (1)"))
        transaction.commit()
        assert not turn_is_taken(engine)


def test_a_failed_write_gives_the_turn_back(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (1)"))
    assert not turn_is_taken(engine)
    with engine.begin() as connection:  # and the next writer gets it
        connection.execute(text("INSERT INTO t VALUES (2)"))
    with reader(engine).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 2


def test_readers_do_not_take_the_turn(engine: Engine) -> None:
    with reader(engine).connect() as connection, connection.begin():
        connection.execute(text("SELECT count(*) FROM t"))
        assert not turn_is_taken(engine)


def test_a_closed_connection_gives_the_turn_back(engine: Engine) -> None:
    connection = engine.connect()
    connection.begin()
    assert turn_is_taken(engine)
    connection.invalidate()  # closes the DBAPI connection mid-transaction
    assert not turn_is_taken(engine)


def test_in_memory_databases_need_no_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    memory = make_engine("sqlite://")
    with memory.begin() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    memory.dispose()
    assert list(tmp_path.iterdir()) == []  # no ":memory:-writelock" beside nothing


def test_a_thread_holding_the_turn_is_not_made_to_wait_for_itself(engine: Engine) -> None:
    """A second write transaction in the same thread meets SQLite's own lock instead.

    That lock gives up after the busy timeout; a second ``flock`` would wait for ever.
    """
    first, second = engine.raw_connection(), engine.raw_connection()
    try:
        take = [c.dbapi_connection.take_turn for c in (first, second)]  # type: ignore[union-attr]
        take[0]()
        signal.signal(signal.SIGALRM, _give_up)
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        try:
            take[1]()  # returns at once: the thread already holds the turn
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        assert turn_is_taken(engine)
        first.rollback()
        assert not turn_is_taken(engine)
    finally:
        first.close()
        second.close()


def _give_up(signum: int, frame: object) -> None:
    raise TimeoutError("take_turn waited on its own thread")


def test_a_failed_commit_gives_the_turn_back_and_leaves_no_transaction_behind(
    engine: Engine,
) -> None:
    # SQLAlchemy takes a transaction whose commit failed for ended and pools its
    # connection as it is; the pool's reset must roll it back.
    failing = True

    def fail(_connection: object) -> None:
        if failing:
            raise OperationalError("COMMIT", {}, Exception("disk I/O error (injected)"))

    event.listen(engine, "commit", fail)
    with Session(engine) as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(OperationalError):
            session.commit()
    assert not turn_is_taken(engine)
    failing = False
    with engine.begin() as connection:  # the same pooled connection, in no transaction
        connection.execute(text("INSERT INTO t VALUES (2)"))
    with reader(engine).connect() as connection:
        assert connection.execute(text("SELECT id FROM t")).scalars().all() == [2]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word (a hung database host)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    server.close()


@pytest.mark.parametrize(("query", "expected_s"), [("", 1), ("?connect_timeout=2", 2)])
def test_a_postgresql_host_that_does_not_answer_is_given_up_on(
    silent_server: int, monkeypatch: pytest.MonkeyPatch, query: str, expected_s: float
) -> None:
    monkeypatch.setattr(models.db, "PG_CONNECT_TIMEOUT_S", 1)  # the default, made short
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{silent_server}/x{query}")
    outcome: list[BaseException] = []

    def connect() -> None:
        try:
            engine.connect().close()
        except BaseException as exc:
            outcome.append(exc)

    began = time.monotonic()
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(expected_s + 10)
    assert not thread.is_alive(), "the connection attempt is still waiting"
    assert len(outcome) == 1
    assert isinstance(outcome[0], OperationalError)
    assert time.monotonic() - began >= expected_s * 0.9  # the URL's own setting wins
    engine.dispose()
