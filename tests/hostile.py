"""Receivers that misbehave on purpose: raw asyncio servers on 127.0.0.1, each doing one bad thing.

aiohttp would not let a test server break HTTP this way, so each kind is a
few lines over a plain socket:

| kind | what the server does |
|---|---|
| ``endless_headers`` | a status line, then 1 KiB header lines forever |
| ``endless_value``   | a status line, then one header value that never ends |
| ``endless_chunked`` | a whole head, then a chunked body forever |
| ``drip``            | a whole, small response, one byte every ``drip`` seconds |
| ``never_read``      | accepts the connection and never reads (a 4 KiB receive buffer) |
| ``huge_length``     | ``Content-Length: 1000000000``, ten bytes of it, then nothing |
| ``tls_stall``       | accepts, reads the TLS ClientHello and never answers it |
| ``ok``              | a well-behaved keep-alive receiver: ``200`` with ``ok`` |

``test_hostile.py`` starts them with :func:`serve` in the test's own event
loop. Its memory test runs a hundred of them in a child process
(``python -m tests.hostile endless_headers=15 ...``, one JSON line of URLs on
stdout, exits when its stdin closes), so that the test process's memory is
the client's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

HEAD = b"HTTP/1.1 200 OK\r\n"
DRIP_SECONDS = 0.2
DRIPPED = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: " + b"s" * 64 + b"\r\n\r\nok"


async def read_request(reader: asyncio.StreamReader) -> bool:
    """Read one request (head and ``Content-Length`` body); False once the client is gone."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return False
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    try:
        await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    return True


async def _flood(writer: asyncio.StreamWriter, first: bytes, more: bytes) -> None:
    """Write ``first``, then ``more`` again and again until the client hangs up."""
    writer.write(first)
    with contextlib.suppress(ConnectionError):
        while True:
            writer.write(more)
            await writer.drain()  # bounded by the client's reading, not by this server's memory


async def endless_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader):
        lines = b"".join(b"X-Flood-%d: %s\r\n" % (n, b"v" * 1000) for n in range(64))
        await _flood(writer, HEAD, lines)


async def endless_value(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader):
        await _flood(writer, HEAD + b"X-Endless: ", b"a" * 65536)


async def endless_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader):
        chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
        await _flood(writer, HEAD + b"Transfer-Encoding: chunked\r\n\r\n", chunk * 16)


async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader):
        with contextlib.suppress(ConnectionError):
            for byte in DRIPPED:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(DRIP_SECONDS)


async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()


async def huge_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await read_request(reader):
        writer.write(HEAD + b"Content-Length: 1000000000\r\n\r\n" + b"x" * 10)
        await asyncio.Event().wait()


async def tls_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):  # the ClientHello, and whatever follows it: no answer
        pass


async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await read_request(reader):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        with contextlib.suppress(ConnectionError):
            await writer.drain()


KINDS: dict[str, Behaviour] = {
    "endless_headers": endless_headers,
    "endless_value": endless_value,
    "endless_chunked": endless_chunked,
    "drip": drip,
    "never_read": never_read,
    "huge_length": huge_length,
    "tls_stall": tls_stall,
    "ok": ok,
}
HOSTILE = tuple(kind for kind in KINDS if kind != "ok")


@contextlib.asynccontextmanager
async def serve(kind: str, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Run one server of ``kind`` on 127.0.0.1; yield its URL (``https`` for TLS kinds)."""
    behave = KINDS[kind]
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await behave(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client hung up, or the server is closing: either way this one is done
        finally:
            handlers.discard(task)
            writer.transport.abort()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if kind == "never_read":
        # Accepted sockets inherit it: the client's request backs up on its side.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(handle, sock=sock, ssl=tls, backlog=512)
    port = sock.getsockname()[1]
    scheme = "https" if tls is not None or kind == "tls_stall" else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}/hook"
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def _main(counts: dict[str, int]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        urls = {
            kind: [await stack.enter_async_context(serve(kind)) for _ in range(count)]
            for kind, count in counts.items()
        }
        print(json.dumps(urls), flush=True)
        # Until the test closes our stdin (or dies, which closes it too).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("counts", nargs="+", metavar="KIND=N", help=f"kinds: {', '.join(KINDS)}")
    args = parser.parse_args()
    counts = {kind: int(n) for kind, n in (item.split("=", 1) for item in args.counts)}
    unknown = set(counts) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    asyncio.run(_main(counts))


if __name__ == "__main__":
    main()
