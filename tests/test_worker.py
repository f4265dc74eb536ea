"""The delivery worker over a MockTransport: requests, outcomes, isolation, order, release."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from dispatcher.backoff import RetrySchedule
from dispatcher.breaker import BreakerPolicy
from dispatcher.errors import AttemptTimeout, ConnectError
from dispatcher.lane import LanePolicy
from dispatcher.transport import MockTransport, Request, Response
from dispatcher.worker import DeliveryWorker, Sink, WorkerPolicy
from models.endpoints import new_secret
from models.jobs import DeliveryStatus, Job, Result

PENDING, SUCCEEDED, FAILED = DeliveryStatus.PENDING, DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED
SECRET = new_secret(bytes(range(32)))
USER_AGENT = "sentinmail-test/1"
SCHEDULE = RetrySchedule((0, 5, 300))
SEED = 7
A, B = "https://a.example", "https://b.example"
# Every wait below ends in milliseconds; this only turns a hang into a failure.
GUARD = 5.0

Handler = Callable[[Request], Response | Awaitable[Response]]


def job(
    delivery_id: int,
    *,
    origin: str = A,
    endpoint: str = "ep-1",
    priority: int = 1,
    attempts: int = 0,
) -> Job:
    body = json.dumps({"id": f"evt-{delivery_id}", "type": "opened"}).encode()
    return Job(
        delivery_id=delivery_id,
        event_id=f"evt-{delivery_id}",
        endpoint_id=endpoint,
        url=f"{origin}/hooks/{endpoint}",
        origin=origin,
        secret=SECRET,
        rate_limit=None,
        priority=priority,
        attempts=attempts,
        body=body,
    )


def ok(status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, headers or {}, 0.001)


async def bounded(awaitable: Awaitable[object]) -> None:
    await asyncio.wait_for(awaitable, GUARD)


@dataclass
class Collector:
    """A sink that keeps every batch it is given."""

    batches: list[list[Result]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, batch: list[Result]) -> None:
        self.batches.append(batch)
        self.arrived.set()

    @property
    def results(self) -> list[Result]:
        return [result for batch in self.batches for result in batch]

    def by_id(self) -> dict[int, Result]:
        return {result.job.delivery_id: result for result in self.results}

    async def until(self, count: int) -> list[Result]:
        """The results once at least ``count`` have arrived."""

        async def wait() -> None:
            while len(self.results) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await bounded(wait())
        return self.results


@dataclass
class Rig:
    """Builds workers on one sink and one frozen wall clock; closes them at teardown."""

    sink: Collector
    wall: datetime
    workers: list[DeliveryWorker] = field(default_factory=list)

    def worker(
        self,
        handler: Handler,
        lanes: LanePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        flush_interval: float = 0.001,
        flush_size: int = 500,
        sink: Sink | None = None,
        hand_back_after: float = 5.0,
    ) -> DeliveryWorker:
        policy = WorkerPolicy(
            lanes=lanes or LanePolicy(),
            schedule=SCHEDULE,
            user_agent=USER_AGENT,
            flush_interval=flush_interval,
            flush_size=flush_size,
            hand_back_after=hand_back_after,
        )
        worker = DeliveryWorker(
            MockTransport(handler),
            sink or self.sink,
            policy,
            clock=clock,
            wall=lambda: self.wall,
            rng=random.Random(SEED),
        )
        self.workers.append(worker)
        return worker


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    # The wall clock is frozen close to the real time: standardwebhooks checks the
    # signature's timestamp against its own clock (±5 min).
    rig = Rig(Collector(), datetime.now(UTC).replace(microsecond=0))
    yield rig
    for worker in rig.workers:
        await worker.close()


async def test_request_is_the_exact_body_signed_with_standard_webhooks(rig: Rig) -> None:
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        return ok()

    body = '{"id": "evt-9",  "type":"bounced", "to": "zoë@example.com"}\n'.encode()
    sent = Job(9, "evt-9", "ep-1", f"{A}/in?x=1", A, SECRET, None, 0, 0, body)
    worker = rig.worker(handler)
    worker.submit([sent])
    await rig.sink.until(1)
    await worker.close()

    [request] = seen
    assert request.url == f"{A}/in?x=1"
    assert request.body == body
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["webhook-id"] == "evt-9"
    assert request.headers["webhook-timestamp"] == str(int(rig.wall.timestamp()))
    assert request.timeout == WorkerPolicy().attempt_timeout
    assert Webhook(SECRET).verify(request.body, dict(request.headers)) == json.loads(body)


@pytest.mark.parametrize(
    ("reply", "attempts", "status", "delay", "status_code", "error", "gone"),
    [
        pytest.param(ok(200), 0, SUCCEEDED, None, 200, None, False, id="200"),
        pytest.param(ok(204), 1, SUCCEEDED, None, 204, None, False, id="204-on-a-retry"),
        pytest.param(ok(500), 0, PENDING, (4.0, 6.0), 500, "HTTP 500", False, id="500-first"),
        pytest.param(ok(500), 1, PENDING, (240.0, 360.0), 500, "HTTP 500", False, id="500-second"),
        pytest.param(ok(500), 2, FAILED, None, 500, "HTTP 500", False, id="500-last"),
        pytest.param(ok(410), 0, FAILED, None, 410, "HTTP 410 Gone", True, id="410"),
        pytest.param(
            ok(429, {"retry-after": "120"}),
            0,
            PENDING,
            (120.0, 120.0),
            429,
            "HTTP 429",
            False,
            id="429-retry-after",
        ),
        pytest.param(
            ok(302, {"location": "https://c.example/"}),
            0,
            PENDING,
            (4.0, 6.0),
            302,
            "redirect not followed (Location: https://c.example/)",
            False,
            id="302",
        ),
        pytest.param(
            AttemptTimeout("15 s"),
            0,
            PENDING,
            (4.0, 6.0),
            None,
            "timeout after 15 s",
            False,
            id="timeout",
        ),
        pytest.param(
            ConnectError("refused"),
            0,
            PENDING,
            (4.0, 6.0),
            None,
            "connection failed: refused",
            False,
            id="connect",
        ),
        pytest.param(
            ConnectError("refused"),
            2,
            FAILED,
            None,
            None,
            "connection failed: refused",
            False,
            id="connect-last",
        ),
    ],
)
async def test_outcome_becomes_a_result(
    rig: Rig,
    reply: Response | Exception,
    attempts: int,
    status: DeliveryStatus,
    delay: tuple[float, float] | None,
    status_code: int | None,
    error: str | None,
    gone: bool,
) -> None:
    clock = [100.0]

    def handler(request: Request) -> Response:
        clock[0] += 0.25
        if isinstance(reply, Exception):
            raise reply
        return reply

    worker = rig.worker(handler, clock=lambda: clock[0])
    worker.submit([job(1, attempts=attempts)])
    [result] = await rig.sink.until(1)

    assert result.status is status
    assert result.attempted
    assert result.at == rig.wall
    assert result.status_code == status_code
    assert result.error == error
    assert result.gone is gone
    assert result.duration_ms == 250
    if delay is None:
        assert result.due_at is None
    else:
        assert result.due_at is not None
        low, high = delay
        assert low <= (result.due_at - rig.wall).total_seconds() <= high
    assert worker.stats()["in_flight"] == 0


async def test_unexpected_exception_costs_an_attempt_not_a_slot(rig: Rig) -> None:
    attempted: list[int] = []

    def handler(request: Request) -> Response:
        attempted.append(int(request.headers["webhook-id"].removeprefix("evt-")))
        if request.headers["webhook-id"] == "evt-1":
            raise RuntimeError("handler bug")
        return ok()

    # One slot: had the failed attempt kept it, nothing after it would go.
    worker = rig.worker(handler, LanePolicy(concurrency=1))
    worker.submit([job(1), job(2), job(3)])
    results = await rig.sink.until(3)

    assert attempted == [1, 2, 3]
    first = rig.sink.by_id()[1]
    assert first.status is PENDING
    assert first.attempted
    assert first.status_code is None
    assert first.error == "RuntimeError: handler bug"
    assert first.due_at is not None
    assert [r.status for r in results if r.job.delivery_id != 1] == [SUCCEEDED, SUCCEEDED]
    assert worker.stats()["in_flight"] == 0
    # The slot is still usable afterwards.
    worker.submit([job(4)])
    await rig.sink.until(4)
    assert rig.sink.by_id()[4].status is SUCCEEDED


async def test_a_hanging_host_holds_only_its_own_lane(rig: Rig) -> None:
    never = asyncio.Event()
    hung: list[str] = []

    async def handler(request: Request) -> Response:
        if request.url.startswith(A):
            hung.append(request.headers["webhook-id"])
            await never.wait()
        return ok()

    worker = rig.worker(handler, LanePolicy(concurrency=4))
    a_jobs = [job(i, origin=A) for i in range(1, 11)]
    b_jobs = [job(i, origin=B) for i in range(100, 150)]
    # A's jobs first and interleaved: nothing about order should favour B.
    worker.submit(a_jobs + b_jobs[:25])
    worker.submit(b_jobs[25:])
    results = await rig.sink.until(50)

    assert sorted(r.job.delivery_id for r in results) == list(range(100, 150))
    assert {r.status for r in results} == {SUCCEEDED}
    assert len(hung) == 4
    assert worker.stats() == {"lanes": 2, "queued": 6, "in_flight": 4, "open_breakers": 0}
    await worker.close()
    assert len(rig.sink.results) == 50  # A's were never answered


async def test_high_priority_jumps_a_backlog(rig: Rig) -> None:
    order: list[str] = []

    def handler(request: Request) -> Response:
        order.append(request.headers["webhook-id"])
        return ok()

    worker = rig.worker(handler, LanePolicy(concurrency=1))
    low = [job(i, priority=1) for i in range(1, 6)]
    high = [job(i, priority=0) for i in range(6, 9)]
    worker.submit(low + high)
    await rig.sink.until(8)
    assert order == [f"evt-{i}" for i in (6, 7, 8, 1, 2, 3, 4, 5)]


async def test_high_priority_submitted_later_goes_before_the_queued_low(rig: Rig) -> None:
    order: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        order.append(request.headers["webhook-id"])
        if request.headers["webhook-id"] == "evt-1":
            started.set()
            await release.wait()
        return ok()

    worker = rig.worker(handler, LanePolicy(concurrency=1))
    worker.submit([job(i, priority=1) for i in range(1, 5)])
    await bounded(started.wait())
    worker.submit([job(5, priority=0), job(6, priority=0)])
    release.set()
    await rig.sink.until(6)
    assert order == [f"evt-{i}" for i in (1, 5, 6, 2, 3, 4)]


async def test_forget_hands_back_the_queued_jobs_of_an_endpoint(rig: Rig) -> None:
    attempted: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        attempted.append(request.headers["webhook-id"])
        started.set()
        await release.wait()
        return ok()

    worker = rig.worker(handler, LanePolicy(concurrency=1))
    worker.submit([job(1, endpoint="ep-a"), job(2, endpoint="ep-a"), job(3, endpoint="ep-b")])
    await bounded(started.wait())
    worker.submit([job(4, endpoint="ep-b"), job(5, endpoint="ep-a")])

    # 1 is in flight; 2 and 5 are queued for ep-a, 3 and 4 for ep-b.
    assert worker.forget(["ep-a"]) == 2
    released = await rig.sink.until(2)
    assert sorted(r.job.delivery_id for r in released) == [2, 5]
    for result in released:
        assert result.status is PENDING
        assert not result.attempted
        assert result.due_at == rig.wall
        assert result.status_code is None
    assert sorted(worker.held()) == [(1, A), (3, A), (4, A)]

    release.set()
    results = await rig.sink.until(5)
    assert attempted == ["evt-1", "evt-3", "evt-4"]
    assert {r.job.delivery_id: r.status for r in results if r.attempted} == {
        1: SUCCEEDED,
        3: SUCCEEDED,
        4: SUCCEEDED,
    }
    assert worker.forget(["ep-a"]) == 0


async def test_open_breaker_hands_back_the_queue_unattempted(rig: Rig) -> None:
    attempted: list[str] = []

    def handler(request: Request) -> Response:
        attempted.append(request.headers["webhook-id"])
        return ok(500)

    breaker = BreakerPolicy(consecutive_failures=2, cooldown=30.0)
    worker = rig.worker(handler, LanePolicy(concurrency=1, breaker=breaker))
    worker.submit([job(i) for i in range(1, 7)])
    results = await rig.sink.until(6)

    assert attempted == ["evt-1", "evt-2"]
    by_id = rig.sink.by_id()
    for delivery_id in (1, 2):
        assert by_id[delivery_id].attempted
        assert by_id[delivery_id].status is PENDING
    parked = [r for r in results if not r.attempted]
    assert sorted(r.job.delivery_id for r in parked) == [3, 4, 5, 6]
    for result in parked:
        assert result.status is PENDING
        assert result.due_at is not None
        assert 29.0 <= (result.due_at - rig.wall).total_seconds() <= 30.0
    assert worker.stats()["open_breakers"] == 1
    assert worker.stats()["queued"] == 0

    # While it stays open, new work for that host comes straight back.
    worker.submit([job(7)])
    await rig.sink.until(7)
    assert not rig.sink.by_id()[7].attempted
    assert attempted == ["evt-1", "evt-2"]


async def test_a_host_that_takes_nothing_hands_its_queue_back_and_keeps_its_slots(
    rig: Rig,
) -> None:
    """Every slot stuck: the queue goes back to the database, blocked, due when they end.

    Kept, it would hold capacity that other hosts need, for as long as the
    stuck attempts take to time out.
    """
    release = asyncio.Event()
    started: list[str] = []

    async def hangs(request: Request) -> Response:
        started.append(request.headers["webhook-id"])
        await release.wait()
        return ok()

    worker = rig.worker(hangs, LanePolicy(concurrency=2), hand_back_after=0.05)
    worker.submit([job(i) for i in range(1, 6)] + [job(6, origin=B)])
    results = await rig.sink.until(3)

    assert sorted(r.job.delivery_id for r in results) == [3, 4, 5]
    for result in results:
        assert not result.attempted
        assert result.blocked
        assert result.status is PENDING
        assert result.due_at == rig.wall + timedelta(seconds=worker.policy.attempt_timeout)
    assert sorted(worker.held()) == [(1, A), (2, A), (6, B)]
    assert sorted(started) == ["evt-1", "evt-2", "evt-6"]

    release.set()  # the stuck attempts end after all: reported as usual
    done = await rig.sink.until(6)
    assert {r.job.delivery_id: r.status for r in done if r.attempted} == {
        1: SUCCEEDED,
        2: SUCCEEDED,
        6: SUCCEEDED,
    }


async def test_a_busy_host_that_answers_keeps_its_queue(rig: Rig) -> None:
    async def slowish(request: Request) -> Response:
        await asyncio.sleep(0.02)
        return ok()

    # 30 answers of 20 ms take 0.6 s in the one slot: the queue waits longer
    # than hand_back_after, but never without an answer for that long.
    worker = rig.worker(slowish, LanePolicy(concurrency=1), hand_back_after=0.25)
    worker.submit([job(i) for i in range(1, 31)])
    results = await rig.sink.until(30)
    assert all(r.attempted for r in results)
    assert all(r.status is SUCCEEDED for r in results)


async def test_held_lists_queued_and_in_flight(rig: Rig) -> None:
    answering: list[str] = []
    all_started, release = asyncio.Event(), asyncio.Event()

    async def handler(request: Request) -> Response:
        answering.append(request.headers["webhook-id"])
        if len(answering) == 3:
            all_started.set()
        await release.wait()
        return ok()

    worker = rig.worker(handler, LanePolicy(concurrency=2))
    worker.submit([job(i) for i in range(1, 5)] + [job(5, origin=B)])
    await bounded(all_started.wait())
    assert sorted(answering) == ["evt-1", "evt-2", "evt-5"]
    assert sorted(worker.held()) == [(1, A), (2, A), (3, A), (4, A), (5, B)]
    assert worker.stats()["in_flight"] == 3
    assert worker.stats()["queued"] == 2

    release.set()
    await rig.sink.until(5)
    assert worker.held() == []


async def test_results_leave_in_batches(rig: Rig) -> None:
    worker = rig.worker(lambda request: ok())
    worker.submit([job(i) for i in range(1, 41)])
    results = await rig.sink.until(40)
    assert sorted(r.job.delivery_id for r in results) == list(range(1, 41))
    assert len(rig.sink.batches) < 40 / 4
    assert max(len(batch) for batch in rig.sink.batches) > 1


async def test_a_full_batch_leaves_at_once_and_one_report_is_in_flight(rig: Rig) -> None:
    in_flight = 0
    most = 0
    gate = asyncio.Event()

    async def slow_sink(batch: list[Result]) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await gate.wait()  # the scheduler is busy: results keep arriving meanwhile
        in_flight -= 1
        await rig.sink(batch)

    answered = 0
    all_answered = asyncio.Event()

    def handler(request: Request) -> Response:
        nonlocal answered
        answered += 1
        if answered == 35:
            all_answered.set()
        return ok()

    # A flush interval no test waits for: only full batches can leave.
    worker = rig.worker(handler, flush_interval=60.0, flush_size=10, sink=slow_sink)
    worker.submit([job(i) for i in range(1, 36)])
    await bounded(all_answered.wait())
    await asyncio.sleep(0)
    assert in_flight == 1
    gate.set()
    await rig.sink.until(30)
    assert most == 1
    assert [len(batch) for batch in rig.sink.batches] == [10, 10, 10]
    await worker.close()
    assert sorted(r.job.delivery_id for r in rig.sink.results) == list(range(1, 36))


async def test_idle_hosts_are_forgotten(rig: Rig) -> None:
    now = [0.0]
    worker = rig.worker(lambda request: ok(), clock=lambda: now[0])
    worker.submit([job(1, origin=A), job(2, origin=B)])
    await rig.sink.until(2)
    assert worker.stats()["lanes"] == 2

    now[0] = 599.0
    assert worker.sweep(now[0]) == 0
    worker.submit([job(3, origin=B)])  # B is busy again
    await rig.sink.until(3)
    now[0] = 700.0  # A has been idle for 700 s, B for 101 s
    assert worker.sweep(now[0]) == 1
    assert worker.stats()["lanes"] == 1

    worker.submit([job(4, origin=A)])  # a forgotten host gets a fresh lane
    results = await rig.sink.until(4)
    assert {r.job.delivery_id: r.status for r in results} == {i: SUCCEEDED for i in range(1, 5)}
    assert worker.stats()["lanes"] == 2


@pytest.mark.parametrize(
    ("status", "kept_till"),
    [(200, 599.0), (500, 604.0)],
    ids=["healthy", "its breaker open"],
)
async def test_idle_hosts_are_forgotten_without_more_work(
    rig: Rig, status: int, kept_till: float
) -> None:
    now = [0.0]
    breaker = BreakerPolicy(consecutive_failures=1, cooldown=5.0)
    worker = rig.worker(
        lambda request: ok(status),
        lanes=LanePolicy(breaker=breaker),
        clock=lambda: now[0],
        hand_back_after=0.02,
    )
    worker.submit([job(1, origin=A)])
    await rig.sink.until(1)
    assert worker.stats()["open_breakers"] == (status != 200)
    assert worker.footprint()["pumps"] == 0  # its queue ran dry: no task waits for more
    # Quiet for 600 s, and for the failing host its breaker's cool-down over for
    # as long (it reopened at 5 s): kept till then, whoever sweeps.
    assert worker.sweep(kept_till) == 0
    assert worker.footprint()["lanes"] == 1

    now[0] = kept_till + 60.0  # no submit: the watchdog sweeps, then ends

    async def forgotten() -> None:
        while worker.footprint()["watching"]:  # noqa: ASYNC110 - it ends unannounced
            await asyncio.sleep(0.01)

    await bounded(forgotten())
    assert worker.footprint() == {
        "lanes": 0,
        "events": 0,
        "pumps": 0,
        "in_flight": 0,
        "tasks": 0,
        "results": 0,
        "watching": 0,
    }


async def test_close_reports_what_is_buffered(rig: Rig) -> None:
    answered = asyncio.Event()

    def handler(request: Request) -> Response:
        answered.set()
        return ok()

    # A flush interval no test waits for: only close can report the result.
    worker = rig.worker(handler, flush_interval=60.0)
    worker.submit([job(1)])
    await bounded(answered.wait())
    await asyncio.sleep(0)
    assert worker.stats()["in_flight"] == 0
    assert rig.sink.results == []
    await worker.close()
    assert [r.job.delivery_id for r in rig.sink.results] == [1]
