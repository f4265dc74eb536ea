"""Group commit: concurrent ingestions share a transaction; a 202 still means committed.

Requests are posted concurrently to the app in this process (ASGI, no
network), on both backends. Faults are injected into the commit itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, event, func
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from api.app import create_app
from dispatcher.settings import Settings
from models.events import Event, EventIn, ingest_many
from models.group_commit import (
    MAX_WAITING_EVENTS,
    GroupCommit,
    WriterHealth,
    admits,
    gather_for,
    writer_health,
)
from tests.conftest import make_key
from tests.test_ingest import EVENTS, auth, count_rows, endpoint

RETRY_AFTER = "Retry-After"


@pytest.fixture
def app(settings: Settings, engine: Engine) -> FastAPI:
    return create_app(settings, engine)


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def committer(app: FastAPI) -> GroupCommit:
    group_commit: GroupCommit = app.state.ingestion
    return group_commit


def one(event_id: str, event_type: str = "opened") -> dict[str, Any]:
    return {"id": event_id, "type": event_type, "recipient": "user@example.com"}


async def post_all(http: httpx2.AsyncClient, posts: list[tuple[str, Any]]) -> list[httpx2.Response]:
    """Every ``(key, body)`` posted at once."""
    return list(
        await asyncio.gather(*(http.post(EVENTS, json=body, headers=auth(k)) for k, body in posts))
    )


def stored_ids(engine: Engine) -> set[tuple[str, str]]:
    """``(account id, event id)`` of every stored event."""
    with Session(engine) as session:
        return {(e.account_id, e.id) for e in session.exec(select(Event)).all()}


def account_of(engine: Engine, key: str) -> str:
    from models.accounts import authenticate

    with Session(engine) as session:
        account = authenticate(session, key)
    assert account is not None
    return account.id


class Hold:
    """The first commit waits in :attr:`entered` until :meth:`release` (or 10 s)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._released = threading.Event()

    def __call__(self, _connection: Any) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self._released.wait(10)

    def release(self) -> None:
        self._released.set()


@pytest.fixture
def held_commit(engine: Engine) -> Iterator[Hold]:
    hold = Hold()
    event.listen(engine, "commit", hold)
    yield hold
    hold.release()
    event.remove(engine, "commit", hold)


async def first_commit_held(http: httpx2.AsyncClient, key: str, hold: Hold) -> Any:
    """Post ``evt-first``; return its task once its commit is held."""
    first = asyncio.ensure_future(post_all(http, [(key, one("evt-first"))]))
    await until(hold.entered.is_set)
    return first


async def until(condition: Any, within: float = 10.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


# --- every 202 is stored ----------------------------------------------------------------------


async def test_concurrent_single_event_posts_are_all_stored(
    http: httpx2.AsyncClient, client_keys: list[str], engine: Engine
) -> None:
    posts = [(client_keys[n % 3], one(f"evt-{n}")) for n in range(150)]
    responses = await post_all(http, posts)
    assert [r.status_code for r in responses] == [202] * 150
    accepted = {
        (account_of(engine, key), event_id)
        for (key, _), r in zip(posts, responses, strict=True)
        for event_id in r.json()["accepted"]
    }
    assert len(accepted) == 150
    assert stored_ids(engine) == accepted


async def test_concurrent_requests_share_one_commit_and_each_gets_its_own_answer(
    app: FastAPI, http: httpx2.AsyncClient, client_keys: list[str], held_commit: Hold
) -> None:
    first = await first_commit_held(http, client_keys[0], held_commit)
    rest: list[tuple[str, Any]] = [
        (client_keys[n % 3], [one(f"evt-{n}"), one(f"evt-{n}b")]) for n in range(20)
    ]
    rest.append((client_keys[0], one("evt-first")))  # a duplicate of the first, still uncommitted
    others = asyncio.ensure_future(post_all(http, rest))
    await until(lambda: committer(app).waiting == len(rest))
    held_commit.release()
    (answer,), answers = await first, await others
    assert answer.json() == {"accepted": ["evt-first"], "duplicates": [], "deliveries": 1}
    for n, response in enumerate(answers[:-1]):
        assert response.status_code == 202
        assert response.json() == {
            "accepted": [f"evt-{n}", f"evt-{n}b"],
            "duplicates": [],
            "deliveries": 2,
        }
    assert answers[-1].json() == {"accepted": [], "duplicates": ["evt-first"], "deliveries": 0}
    assert committer(app).commits == 2  # the first alone, then the 21 that waited for it


# --- duplicates --------------------------------------------------------------------------------


async def test_duplicates_posted_concurrently_are_counted_once_per_account(
    http: httpx2.AsyncClient, client_keys: list[str], engine: Engine
) -> None:
    acme, globex, _ = client_keys
    posts = [(acme, one("evt-same")) for _ in range(20)] + [(globex, one("evt-same"))] * 5
    responses = await post_all(http, posts)
    assert {r.status_code for r in responses} == {202}
    bodies = [r.json() for r in responses]
    for key in (acme, globex):
        mine = [b for (k, _), b in zip(posts, bodies, strict=True) if k == key]
        assert sum(b["accepted"] == ["evt-same"] for b in mine) == 1
        assert sum(b["duplicates"] == ["evt-same"] for b in mine) == len(mine) - 1
        assert sum(b["deliveries"] for b in mine) == 1
    assert count_rows(engine) == (2, 2)


# --- a commit that fails -----------------------------------------------------------------------


def fail_commits(engine: Engine, should_fail: Any) -> Any:
    """Make a commit raise (as a full disk or a lost server would) while ``should_fail()``."""

    def fail(_connection: Any) -> None:
        if should_fail():
            raise OperationalError("COMMIT", {}, Exception("disk I/O error (injected)"))

    event.listen(engine, "commit", fail)
    return fail


async def test_a_group_whose_commit_fails_answers_503_to_each_and_stores_nothing(
    app: FastAPI,
    http: httpx2.AsyncClient,
    client_keys: list[str],
    engine: Engine,
    held_commit: Hold,
) -> None:
    failing = False
    hook = fail_commits(engine, lambda: failing)
    first = await first_commit_held(http, client_keys[0], held_commit)
    posts = [(client_keys[n % 3], one(f"evt-{n}")) for n in range(12)]
    others = asyncio.ensure_future(post_all(http, posts))
    await until(lambda: committer(app).waiting == len(posts))
    failing = True  # the held commit and every later one
    try:
        held_commit.release()
        responses = [*(await first), *(await others)]
    finally:
        event.remove(engine, "commit", hook)
    for response in responses:
        assert response.status_code == 503
        assert response.headers[RETRY_AFTER] == "1"
        assert "did not commit" in response.json()["detail"]
    assert count_rows(engine) == (0, 0)
    # The database is back: the same posts are accepted, and stored.
    again = await post_all(http, posts)
    assert [r.status_code for r in again] == [202] * 12
    assert count_rows(engine)[0] == 12


async def test_a_request_the_database_refuses_fails_alone(
    app: FastAPI,
    http: httpx2.AsyncClient,
    client_keys: list[str],
    engine: Engine,
    held_commit: Hold,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import models.group_commit

    real = ingest_many

    def refusing(session: Session, submissions: Any) -> Any:
        if any(e.id == "evt-poison" for _, events in submissions for e in events):
            raise OperationalError("INSERT", {}, Exception("refused (injected)"))
        return real(session, submissions)

    monkeypatch.setattr(models.group_commit, "ingest_many", refusing)
    first = await first_commit_held(http, client_keys[0], held_commit)
    posts: list[tuple[str, Any]] = [(client_keys[n % 3], one(f"evt-{n}")) for n in range(6)]
    posts.insert(3, (client_keys[1], [one("evt-ok"), one("evt-poison")]))
    others = asyncio.ensure_future(post_all(http, posts))
    await until(lambda: committer(app).waiting == len(posts))
    held_commit.release()
    await first
    responses = await others
    assert [r.status_code for r in responses] == [202, 202, 202, 503, 202, 202, 202]
    with Session(engine) as session:
        ids = set(session.exec(select(Event.id)).all())
    assert ids == {"evt-first", *(f"evt-{n}" for n in range(6))}


async def test_no_202_is_ever_answered_without_its_rows(
    http: httpx2.AsyncClient, client_keys: list[str], engine: Engine
) -> None:
    # Every other commit fails: whatever each request gets, a 202 has its rows.
    commits = iter(range(10_000))
    hook = fail_commits(engine, lambda: next(commits) % 2 == 0)
    try:
        posts = [(client_keys[n % 3], one(f"evt-{n}")) for n in range(60)]
        responses = await post_all(http, posts)
    finally:
        event.remove(engine, "commit", hook)
    stored = stored_ids(engine)
    accepted = [
        (account_of(engine, key), body["id"])
        for (key, body), r in zip(posts, responses, strict=True)
        if r.status_code == 202
    ]
    assert {r.status_code for r in responses} <= {202, 503}
    assert set(accepted) <= stored
    assert 503 in {r.status_code for r in responses}  # the fault did strike
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Event)).one() == len(stored)


@pytest.fixture
def client_keys(app: FastAPI, engine: Engine) -> list[str]:
    """Keys of three accounts, each with one endpoint subscribed to every type."""
    from fastapi.testclient import TestClient

    keys = [make_key(engine, name) for name in ("acme", "globex", "initech")]
    with TestClient(app) as client:
        for key in keys:
            endpoint(client, key)
    return keys


@pytest.mark.parametrize(
    ("now", "previous_start", "waiting", "expected"),
    [
        (10.000, 10.000, 1, 0.005),  # a commit just started: let more join for 5 ms
        (10.003, 10.000, 1, 0.002),  # the rest of the 5 ms
        (10.005, 10.000, 1, 0.0),  # the previous commit took the 5 ms itself
        (10.020, 10.000, 40, 0.0),
        (10.001, 10.000, 63, 0.004),
        (10.001, 10.000, 64, 0.0),  # enough are waiting: commit now
    ],
)
def test_a_busy_writer_lets_requests_gather_for_the_delay_unless_enough_wait(
    now: float, previous_start: float, waiting: int, expected: float
) -> None:
    assert gather_for(now, previous_start, waiting, delay=0.005, enough=64) == pytest.approx(
        expected
    )


async def test_a_failing_after_commit_hook_neither_fails_requests_nor_stops_the_writer(
    engine: Engine, client_keys: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_stored: list[Any]) -> None:
        raise RuntimeError("the dispatcher is gone")

    group_commit = GroupCommit(engine, committed=broken)
    account = account_of(engine, client_keys[0])
    first = await group_commit.ingest(account, [EventIn.model_validate(one("evt-1"))])
    second = await group_commit.ingest(account, [EventIn.model_validate(one("evt-2"))])
    group_commit.close()
    assert (first.accepted, second.accepted) == (["evt-1"], ["evt-2"])
    assert "the dispatcher is gone" in caplog.text


# --- overload: a bounded queue, a stuck writer -------------------------------------------------


@pytest.mark.parametrize(
    ("waiting_events", "incoming", "bound", "admitted"),
    [
        (0, 1, 5, True),
        (4, 1, 5, True),  # exactly at the bound
        (5, 1, 5, False),
        (3, 3, 5, False),  # the whole request must fit, not only its first events
        (0, 1_000, 5, True),  # nothing waits: larger than the bound, taken alone
        (1, 1_000, 5, False),
        (49_000, 1_000, 50_000, True),
        (49_001, 1_000, 50_000, False),
    ],
)
def test_a_request_is_queued_only_while_the_events_waiting_stay_within_the_bound(
    waiting_events: int, incoming: int, bound: int, admitted: bool
) -> None:
    assert admits(waiting_events, incoming, bound=bound) is admitted


@pytest.mark.parametrize(
    ("now", "oldest_arrival", "expected"),
    [
        (100.0, None, WriterHealth("ok", 7, 0.0)),  # nothing waits
        (100.0, 100.0, WriterHealth("ok", 7, 0.0)),
        (130.0, 100.0, WriterHealth("ok", 7, 30.0)),  # at the bound: not yet
        (130.0004, 100.0, WriterHealth("stuck", 7, 30.0)),
        (160.25, 100.0, WriterHealth("stuck", 7, 60.25)),
        (99.0, 100.0, WriterHealth("ok", 7, 0.0)),  # a clock read before the arrival
    ],
)
def test_the_writer_is_stuck_once_a_request_has_waited_over_the_bound(
    now: float, oldest_arrival: float | None, expected: WriterHealth
) -> None:
    assert writer_health(now, oldest_arrival, 7, stuck_after=30.0) == expected


def test_the_settings_default_bound_is_the_documented_one() -> None:
    assert Settings().max_waiting_events == MAX_WAITING_EVENTS


async def test_a_request_larger_than_the_bound_is_taken_when_nothing_waits(
    engine: Engine, client_keys: list[str]
) -> None:
    group_commit = GroupCommit(engine, max_waiting_events=1)
    account = account_of(engine, client_keys[0])
    try:
        result = await group_commit.ingest(
            account, [EventIn.model_validate(one(f"evt-{n}")) for n in range(3)]
        )
    finally:
        group_commit.close()
    assert result.accepted == ["evt-0", "evt-1", "evt-2"]


@asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def sample(app: FastAPI, name: str) -> float | None:
    value: float | None = app.state.metrics.registry.get_sample_value(name)
    return value


async def test_saturated_ingestion_refuses_at_once_with_503_stores_nothing_then_drains(
    settings: Settings, engine: Engine, client_keys: list[str], held_commit: Hold
) -> None:
    app = create_app(settings.model_copy(update={"max_waiting_events": 5}), engine)
    key = client_keys[0]
    async with client_of(app) as http:
        first = await first_commit_held(http, key, held_commit)  # in the commit: not waiting
        queued = asyncio.ensure_future(
            post_all(
                http,
                [(key, [one("evt-a"), one("evt-b")]), (key, [one(f"evt-{c}") for c in "cde"])],
            )
        )
        await until(lambda: committer(app).waiting_events == 5)
        assert sample(app, "sentinmail_ingest_waiting_events") == 5
        # Answered while the writer is still held: refused at once, not queued.
        (refused,) = await asyncio.wait_for(post_all(http, [(key, one("evt-over"))]), 10)
        assert refused.status_code == 503
        assert refused.headers[RETRY_AFTER] == "1"
        assert "saturated" in refused.json()["detail"]
        assert not queued.done()
        assert committer(app).waiting_events == 5
        assert sample(app, "sentinmail_ingest_saturated_requests_total") == 1
        held_commit.release()
        answers = [*(await first), *(await queued)]
        assert [r.status_code for r in answers] == [202, 202, 202]
        assert sample(app, "sentinmail_ingest_waiting_events") == 0
        stored = {event_id for _, event_id in stored_ids(engine)}
        assert stored == {"evt-first", *(f"evt-{c}" for c in "abcde")}  # not evt-over
        # Drained: the same request is accepted now, and stored.
        (again,) = await post_all(http, [(key, one("evt-over"))])
        assert again.status_code == 202
        assert again.json()["accepted"] == ["evt-over"]
    assert "evt-over" in {event_id for _, event_id in stored_ids(engine)}


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_healthz_is_503_naming_ingestion_while_the_writer_is_stuck_then_200(
    app: FastAPI, engine: Engine, client_keys: list[str], held_commit: Hold
) -> None:
    clock = Clock()
    app.state.ingestion = GroupCommit(engine, stuck_after=30.0, clock=clock)
    async with client_of(app) as http:
        first = await first_commit_held(http, client_keys[0], held_commit)
        try:
            healthy = await asyncio.wait_for(http.get("/healthz"), 10)
            assert healthy.status_code == 200
            assert healthy.json()["ingestion"] == {
                "status": "ok",
                "waiting_events": 0,
                "oldest_wait_s": 0.0,
            }
            clock.now += 31  # the request in the commit has waited 31 s
            stuck = await asyncio.wait_for(http.get("/healthz"), 10)
            assert stuck.status_code == 503
            body = stuck.json()
            assert body["status"] == "unavailable"
            assert body["database"] == "ok"  # the database answers: the writer is the cause
            assert body["ingestion"] == {
                "status": "stuck",
                "waiting_events": 0,
                "oldest_wait_s": 31.0,
            }
        finally:
            held_commit.release()
        ((answer,),) = [await first]
        assert answer.status_code == 202
        recovered = await asyncio.wait_for(http.get("/healthz"), 10)
        assert recovered.status_code == 200
        assert recovered.json()["ingestion"]["status"] == "ok"
    app.state.ingestion.close()
