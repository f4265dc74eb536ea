"""Webhook receivers for the benchmarks: one aiohttp server per port, in their own process.

Each port on 127.0.0.1 is one host (one origin, so one lane in the
dispatcher). A host behaves as told:

| behaviour | answer |
|---|---|
| ``ok``    | 200 at once |
| ``slow``  | 200 after ``--delay`` seconds |
| ``error`` | 500 at once |
| ``hang``  | nothing for ``--hang`` seconds (past the attempt timeout), then 200 |

Only ``POST /hook`` is recorded, as ``(host, webhook-id, time.time())`` at
arrival; ``POST /raw`` answers the same way unrecorded (the raw-limit client
uses it). A control server on its own port hands records to the harness:

| call | answer |
|---|---|
| ``GET /records?since=N`` | ``{"next": M, "records": [[host, id, at], ...]}`` from the N-th on |
| ``PUT /behaviours`` ``{"behaviours": [...]}`` | one per host, in port order |
| ``GET /stats`` | ``{"hook": [...], "raw": [...]}``: requests per host |

Run ``python -m benchmarks.receivers --hosts N``: its first stdout line is
``{"control": port, "ports": [...]}`` once every server listens. It exits when
its stdin closes (so it never outlives the harness), on SIGTERM, or after
``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web

BEHAVIOURS = ("ok", "slow", "error", "hang")


@dataclass
class Hosts:
    """Behaviours, counters and arrival records of every host."""

    behaviours: list[str]
    delay: float
    hang: float
    records: list[tuple[int, str, float]] = field(default_factory=list)
    hook_counts: list[int] = field(default_factory=list)
    raw_counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hook_counts = [0] * len(self.behaviours)
        self.raw_counts = [0] * len(self.behaviours)

    async def answer(self, host: int) -> web.Response:
        behaviour = self.behaviours[host]
        if behaviour == "error":
            return web.Response(status=500, text="error")
        if behaviour == "slow":
            await asyncio.sleep(self.delay)
        elif behaviour == "hang":
            await asyncio.sleep(self.hang)
        return web.Response(text="OK")

    def app(self, host: int) -> web.Application:
        app = web.Application()

        async def hook(request: web.Request) -> web.StreamResponse:
            at = time.time()
            await request.read()
            self.records.append((host, request.headers.get("webhook-id", ""), at))
            self.hook_counts[host] += 1
            return await self.answer(host)

        async def raw(request: web.Request) -> web.StreamResponse:
            await request.read()
            self.raw_counts[host] += 1
            return await self.answer(host)

        app.router.add_post("/hook", hook)
        app.router.add_post("/raw", raw)
        return app

    def control(self) -> web.Application:
        app = web.Application()

        async def records(request: web.Request) -> web.StreamResponse:
            since = int(request.query.get("since", "0"))
            chunk = self.records[since:]
            return web.json_response({"next": since + len(chunk), "records": chunk})

        async def behaviours(request: web.Request) -> web.StreamResponse:
            wanted = (await request.json())["behaviours"]
            if len(wanted) != len(self.behaviours) or any(b not in BEHAVIOURS for b in wanted):
                return web.json_response({"detail": f"one of {BEHAVIOURS} per host"}, status=422)
            self.behaviours[:] = wanted
            return web.json_response({"behaviours": self.behaviours})

        async def stats(_request: web.Request) -> web.StreamResponse:
            return web.json_response({"hook": self.hook_counts, "raw": self.raw_counts})

        app.router.add_get("/records", records)
        app.router.add_put("/behaviours", behaviours)
        app.router.add_get("/stats", stats)
        return app


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def serve(hosts: Hosts, lifetime: float) -> None:
    """Serve every host and the control port until stdin closes, SIGTERM or ``lifetime``."""
    runners: list[web.AppRunner] = []
    ports: list[int] = []
    apps = [hosts.app(i) for i in range(len(hosts.behaviours))]
    for app in [hosts.control(), *apps]:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        sock = _listening_socket()
        await web.SockSite(runner, sock, backlog=4096).start()
        runners.append(runner)
        ports.append(int(sock.getsockname()[1]))
    print(json.dumps({"control": ports[0], "ports": ports[1:]}), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime)
    for runner in runners:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Parse options and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, required=True, help="servers to start, one per port")
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="ok", help="of every host")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds a slow host takes")
    parser.add_argument("--hang", type=float, default=20.0, help="seconds a hanging host waits")
    parser.add_argument("--lifetime", type=float, default=1800.0, help="exit after this long")
    args = parser.parse_args(argv)
    hosts = Hosts([args.behaviour] * args.hosts, delay=args.delay, hang=args.hang)
    try:
        import uvloop  # fast receivers, so they are not what limits a run
    except ImportError:
        asyncio.run(serve(hosts, args.lifetime))
    else:
        uvloop.run(serve(hosts, args.lifetime))


if __name__ == "__main__":
    main()
