"""Log lines: text by default, JSON on request; one per attempt; never a secret or a payload."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import ray

from dispatcher import logs
from dispatcher.breaker import BreakerPolicy
from dispatcher.lane import LanePolicy
from dispatcher.transport import MockTransport, Request, Response
from dispatcher.worker import DeliveryWorker, WorkerPolicy
from models.endpoints import new_secret
from models.jobs import Job, Result
from tests.receivers import wait_until
from tests.test_serve_e2e import free_port

SENTINMAIL = Path(sys.executable).parent / "sentinmail"
SECRET = new_secret(bytes(range(32)))
MARKER = "payload-marker-7f3a"  # in every body sent: must never reach a log line


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Log lines of this process, as ``configure`` formats them, in a buffer; undone after."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    yield stream
    for handler in [h for h in root.handlers if h.get_name() == logs.HANDLER]:
        root.removeHandler(handler)
    root.setLevel(level)


def record(extra: dict[str, Any]) -> logging.LogRecord:
    return logging.getLogger("x.y").makeRecord(
        "x.y", logging.INFO, __file__, 1, "hello %s", ("world",), None, extra=extra
    )


def test_json_lines_carry_time_level_logger_message_and_fields() -> None:
    line = logs.JsonFormatter().format(record(logs.fields(delivery_id=3, host="a.example:443")))
    entry = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("time"))
    assert entry == {
        "level": "INFO",
        "logger": "x.y",
        "message": "hello world",
        "delivery_id": 3,
        "host": "a.example:443",
    }


def test_text_lines_are_readable_with_fields_as_key_value() -> None:
    line = logs.TextFormatter().format(
        record(logs.fields(delivery_id=3, error="timeout after 15 s", missing=None))
    )
    assert re.fullmatch(
        r"\S+Z INFO x\.y: hello world delivery_id=3 error=\"timeout after 15 s\"", line
    )


def test_exceptions_stay_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


@pytest.mark.parametrize(("level", "shown"), [("INFO", True), ("WARNING", False)])
def test_the_level_setting_decides(captured: io.StringIO, level: str, shown: bool) -> None:
    logs.configure("json", level, stream=captured)
    logging.getLogger("dispatcher.worker").info("attempt succeeded")
    logging.getLogger("dispatcher.worker").warning("breaker open")
    messages = [json.loads(line)["message"] for line in captured.getvalue().splitlines()]
    assert messages == (["attempt succeeded", "breaker open"] if shown else ["breaker open"])


def job(delivery_id: int, origin: str = "https://a.example") -> Job:
    body = json.dumps({"id": f"evt-{delivery_id}", "marker": MARKER}).encode()
    return Job(delivery_id, f"evt-{delivery_id}", "ep-1", f"{origin}/hook?token=t0ps3cret",
               origin, SECRET, None, 1, 0, body)  # fmt: skip


async def attempt_all(transport: MockTransport, policy: WorkerPolicy, jobs: list[Job]) -> None:
    """Run ``jobs`` through a delivery worker until each has a result (5 s at most)."""
    results: list[Result] = []
    arrived = asyncio.Event()

    async def sink(batch: list[Result]) -> None:
        results.extend(batch)
        arrived.set()

    worker = DeliveryWorker(transport, sink, policy)
    worker.submit(jobs)
    async with asyncio.timeout(5):
        while len(results) < len(jobs):
            arrived.clear()
            await arrived.wait()
    await worker.close()


async def test_a_line_per_attempt_with_its_facts_and_no_secret(captured: io.StringIO) -> None:
    logs.configure("json", "INFO", stream=captured, success_sample=1)
    sent: list[Request] = []

    def handler(request: Request) -> Response:
        sent.append(request)
        return Response(200 if len(sent) % 2 else 503, {}, 0.001)

    breaker = BreakerPolicy(consecutive_failures=100, min_attempts=20, window=20)
    policy = WorkerPolicy(lanes=LanePolicy(breaker=breaker), flush_interval=0.001)
    await attempt_all(MockTransport(handler), policy, [job(1), job(2)])

    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    attempts = {
        line["delivery_id"]: line for line in lines if line["message"].startswith("attempt")
    }
    assert set(attempts) == {1, 2}
    for line in attempts.values():
        assert line["logger"] == "dispatcher.worker"
        assert line["event_id"] == f"evt-{line['delivery_id']}"
        assert line["endpoint_id"] == "ep-1"
        assert line["host"] == "a.example"
        assert line["attempt"] == 1
        assert isinstance(line["duration_ms"], int)
    outcomes = {(line["message"], line["status_code"]) for line in attempts.values()}
    assert outcomes == {("attempt succeeded", 200), ("attempt retry", 503)}
    retried = next(line for line in attempts.values() if line["status_code"] == 503)
    assert retried["level"] == "INFO"
    assert retried["next_attempt_at"]
    text = captured.getvalue()
    signatures = [r.headers["webhook-signature"] for r in sent]
    for secret in [SECRET, SECRET.removeprefix("whsec_"), MARKER, "t0ps3cret", *signatures]:
        assert secret not in text


async def test_failures_are_all_logged_successes_one_in_a_sample(captured: io.StringIO) -> None:
    logs.configure("json", "INFO", stream=captured, success_sample=100)
    policy = WorkerPolicy(lanes=LanePolicy(concurrency=64), flush_interval=0.001)

    def answer(request: Request) -> Response:  # multiples of 7 fail (and retry later)
        delivery_id = int(request.headers["webhook-id"].removeprefix("evt-"))
        return Response(503 if delivery_id % 7 == 0 else 200, {}, 0.001)

    await attempt_all(MockTransport(answer), policy, [job(i) for i in range(1, 401)])
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    retried = {line["delivery_id"] for line in lines if line["message"] == "attempt retry"}
    succeeded = {
        line["delivery_id"]: line["sampled"]
        for line in lines
        if line["message"] == "attempt succeeded"
    }
    assert retried == set(range(7, 401, 7))
    assert succeeded == {100: 100, 200: 100, 300: 100, 400: 100}


async def test_a_breaker_opening_is_logged(captured: io.StringIO) -> None:
    logs.configure("text", "INFO", stream=captured)
    breaker = BreakerPolicy(consecutive_failures=2)
    policy = WorkerPolicy(lanes=LanePolicy(concurrency=1, breaker=breaker), flush_interval=0.001)
    failing = MockTransport(lambda _: Response(500, {}, 0.001))
    await attempt_all(failing, policy, [job(i, "https://down.example") for i in range(1, 4)])
    opened = [line for line in captured.getvalue().splitlines() if "breaker open" in line]
    assert len(opened) == 1
    assert " WARNING dispatcher.worker: breaker open host=down.example state=open" in opened[0]


class Receiver(BaseHTTPRequestHandler):
    """Answers 200 and keeps every signature it was sent."""

    signatures: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        Receiver.signatures.append(self.headers["webhook-signature"])
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.ray
def test_a_real_run_logs_json_lines_without_secrets(
    database_url: str, ray_cluster: None, tmp_path: Path
) -> None:
    Receiver.signatures.clear()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stderr = tmp_path / "serve.err"
    env = {
        **os.environ,
        "SENTINMAIL_DATABASE_URL": database_url,
        "SENTINMAIL_LOG_FORMAT": "json",
        "SENTINMAIL_LOG_SUCCESS_SAMPLE": "1",  # its one attempt succeeds: logged all the same
        "SENTINMAIL_DELIVERY_ACTORS": "1",
    }
    # Join the session's Ray (as test_serve_e2e does); the actors are this serve's own.
    ray_address = str(ray.get_runtime_context().gcs_address)
    command = [str(SENTINMAIL), "serve", "--dev", "--port", str(port), "--ray-address", ray_address]
    with (
        stderr.open("w") as err,
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True) as proc,
    ):
        try:
            assert proc.stdout is not None
            key = proc.stdout.readline().strip()
            wait_until(lambda: _answers(f"{base}/healthz"), timeout=60, every=0.2)
            headers = {"X-API-Key": key, "Content-Type": "application/json"}
            endpoint = _post(f"{base}/api/emails/webhook-endpoints/", headers, {
                "url": f"http://127.0.0.1:{receiver.server_port}/hook?token=t0ps3cret",
                "events": ["opened"],
            })  # fmt: skip
            event = {"type": "opened", "recipient": "u@example.com", "metadata": {"m": MARKER}}
            accepted = _post(f"{base}/api/emails/events/", headers, event)
            event_id = accepted["accepted"][0]
            wait_until(lambda: len(Receiver.signatures) >= 1, timeout=30)
            ray_logs = _serve_lines(stderr, "service starting")[0]["ray_logs"]
            wait_until(lambda: bool(_attempt_lines(Path(ray_logs), event_id)), timeout=30)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            receiver.shutdown()
            receiver.server_close()

    serve_lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.strip()]
    assert {"service starting", "dispatcher ready", "service stopped"} <= {
        line["message"] for line in serve_lines
    }
    (attempt,) = _attempt_lines(Path(ray_logs), event_id)
    assert attempt["message"] == "attempt succeeded"
    assert attempt["status_code"] == 200
    assert attempt["endpoint_id"] == endpoint["id"]
    assert attempt["host"] == f"127.0.0.1:{receiver.server_port}"
    everything = stderr.read_text() + "".join(
        path.read_text(errors="replace") for path in Path(ray_logs).glob("worker-*")
    )
    for secret in [endpoint["secret"], key, MARKER, "t0ps3cret", *Receiver.signatures]:
        assert secret not in everything


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError:
        return False
    return True


def _post(url: str, headers: dict[str, str], body: object) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def _serve_lines(stderr: Path, message: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["message"] == message]


def _attempt_lines(ray_logs: Path, event_id: str) -> list[dict[str, Any]]:
    found = []
    for path in ray_logs.glob("worker-*.err"):
        for line in path.read_text(errors="replace").splitlines():
            if event_id in line and line.startswith("{"):
                entry = json.loads(line)
                if entry.get("message", "").startswith("attempt"):
                    found.append(entry)
    return found
