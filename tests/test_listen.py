"""The development receiver, against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from dispatcher.listen import listen, make_receiver
from dispatcher.signing import signature_headers
from models.endpoints import new_secret

ROOT = Path(__file__).resolve().parents[1]
EVENT = {
    "id": "evt-1",
    "type": "bounced",
    "recipient": "user@example.com",
    "sent_email_id": "sent-1",
    "campaign_id": "camp-1",
    "metadata": {"ip": "203.0.113.42"},
    "timestamp": "2026-04-02T14:30:00Z",
}
BODY = json.dumps(EVENT).encode()
MSG_ID = "msg_2f1e"

Client = TestClient[web.Request, web.Application]


@asynccontextmanager
async def receiver(secret: str | None) -> AsyncIterator[tuple[Client, list[str]]]:
    """A client for a live receiver, and the blocks it printed."""
    printed: list[str] = []
    async with TestClient(TestServer(make_receiver(secret, printed.append))) as client:
        yield client, printed


def signed(secret: str, body: bytes = BODY, at: datetime | None = None) -> dict[str, str]:
    # The package verifies against its own clock, so sign "now" unless a test says otherwise.
    return signature_headers(secret, MSG_ID, at or datetime.now(UTC), body)


async def test_valid_signature_is_acknowledged_and_printed() -> None:
    secret = new_secret()
    async with receiver(secret) as (client, printed):
        response = await client.post("/webhooks/sentinmail", data=BODY, headers=signed(secret))
        assert response.status == 200
        assert await response.text() == "OK"
    [block] = printed
    assert "signature:  verified" in block
    assert MSG_ID in block
    assert "bounced" in block
    assert "user@example.com" in block
    assert "INVALID" not in block


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (lambda s: signed(new_secret()), "No matching signature"),  # wrong secret
        (lambda s: signed(s, body=b'{"type": "opened"}'), "No matching signature"),  # tampered
        (lambda s: signed(s, at=datetime.now(UTC) - timedelta(minutes=10)), "too old"),
        (lambda s: {}, "Missing required headers"),
        (lambda s: {**signed(s), "webhook-signature": "v1"}, "malformed"),
        (lambda s: {**signed(s), "webhook-signature": "v1,abc"}, "malformed"),
    ],
    ids=["wrong-secret", "tampered-body", "stale", "unsigned", "no-comma", "bad-base64"],
)
async def test_bad_signature_gets_401_and_says_why(
    headers: Callable[[str], dict[str, str]], why: str
) -> None:
    secret = new_secret()
    async with receiver(secret) as (client, printed):
        response = await client.post("/", data=BODY, headers=headers(secret))
        assert response.status == 401
        assert await response.text() == "invalid signature"
    [block] = printed
    assert "INVALID" in block
    assert why in block
    assert "bounced" in block  # the payload is still shown: that is what one debugs with


async def test_without_a_secret_events_are_printed_unverified() -> None:
    async with receiver(None) as (client, printed):
        response = await client.post("/hooks", data=BODY, headers={"webhook-id": MSG_ID})
        assert response.status == 200
    [block] = printed
    assert "not verified" in block
    assert MSG_ID in block
    assert "bounced" in block
    assert '"campaign_id": "camp-1"' in block  # pretty-printed JSON


@pytest.mark.parametrize("body", [b"not json at all", b"[1, 2]", b"\xff\xfe"])
async def test_a_body_that_is_not_a_json_object_gets_400_and_is_shown_raw(body: bytes) -> None:
    async with receiver(None) as (client, printed):
        response = await client.post("/", data=body)
        assert response.status == 400
    [block] = printed
    assert "not a JSON object" in block
    assert body.decode("utf-8", errors="replace") in block


async def test_only_post_is_accepted() -> None:
    async with receiver(None) as (client, printed):
        response = await client.get("/")
        assert response.status == 405
    assert printed == []


def test_listen_rejects_a_malformed_secret_before_serving() -> None:
    app = typer.Typer()
    app.command()(listen)
    result = CliRunner().invoke(app, ["--secret", "whsec_a"])
    assert result.exit_code == 2
    assert "--secret" in result.output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for_port(port: int, proc: subprocess.Popen[str], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"listener exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listened on port {port} within {within} s")


def test_run_listener_serves_and_prints_in_a_real_process() -> None:
    port = _free_port()
    code = f"from dispatcher.listen import run_listener; run_listener('127.0.0.1', {port}, None)"
    with subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            _wait_for_port(port, proc)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/webhooks",
                data=BODY,
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
                assert response.read() == b"OK"
        finally:
            proc.terminate()
            try:
                stdout, stderr = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
    assert f"Listening on http://127.0.0.1:{port}/ (signatures: not verified" in stdout, stderr
    assert "type:       bounced" in stdout
    assert proc.returncode == 0, stderr  # SIGTERM is a graceful exit
