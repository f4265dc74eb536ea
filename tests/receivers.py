"""Real HTTPS receivers on loopback, for tests that need the dispatcher to talk to hosts.

Each receiver is an aiohttp server on 127.0.0.1 with a certificate from a
test CA (``trustme``); the dispatcher trusts that CA through ``ca_bundle``,
so tests run the production path: https only, SSRF guard with 127.0.0.0/8
allowed, certificate verification on. The servers run on an event loop in a
background thread, so synchronous tests can wait on them.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from aiohttp import web

Behaviour = Callable[[int, web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Received:
    """One request as a receiver got it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


async def ok(_n: int, _request: web.Request) -> web.StreamResponse:
    """Acknowledge with 200."""
    return web.Response(text="OK")


def status(code: int, headers: dict[str, str] | None = None) -> Behaviour:
    """Always answer ``code``."""

    async def behave(_n: int, _request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers=headers)

    return behave


def fail_first(times: int, code: int = 500, headers: dict[str, str] | None = None) -> Behaviour:
    """Answer ``code`` to the first ``times`` requests, then 200."""

    async def behave(n: int, _request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers=headers) if n < times else web.Response(text="OK")

    return behave


def hang(seconds: float) -> Behaviour:
    """Answer nothing for ``seconds`` (past the attempt timeout), then 200."""

    async def behave(_n: int, _request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(text="late")

    return behave


@dataclass
class Receiver:
    """A running receiver: its URL and what it received."""

    url: str
    behaviour: Behaviour
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[bytes]:
        """Bodies received so far, in arrival order."""
        with self.lock:
            return [r.body for r in self.received]

    def count(self) -> int:
        """Requests received so far."""
        with self.lock:
            return len(self.received)


class Receivers:
    """Starts HTTPS receivers on loopback in a background event loop."""

    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = tmp / "test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._ssl)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []

    def start(self, behaviour: Behaviour = ok) -> Receiver:
        """A new receiver on a free port; its URL ends with ``/hook``."""
        return asyncio.run_coroutine_threadsafe(self._start(behaviour), self._loop).result(10)

    async def _start(self, behaviour: Behaviour) -> Receiver:
        receiver = Receiver(url="", behaviour=behaviour)

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            with receiver.lock:
                n = len(receiver.received)
                receiver.received.append(
                    Received(request.path, dict(request.headers), body, time.monotonic())
                )
            return await receiver.behaviour(n, request)

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self._runners.append(runner)
        port = runner.addresses[0][1]
        receiver.url = f"https://127.0.0.1:{port}/hook"
        return receiver

    def open_connections(self) -> int:
        """Connections the receivers hold open (a client that died closes its own)."""

        async def count() -> int:
            return sum(len(r.server.connections) for r in self._runners if r.server is not None)

        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(10)

    def close(self) -> None:
        """Stop every receiver and the loop."""

        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()
            # Let closed connections finish closing, and stop handlers still hanging.
            await asyncio.sleep(0.1)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.1)

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, every: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)
