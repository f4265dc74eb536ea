"""The HTTP/1.1 connection layer against scripted servers on 127.0.0.1, and its pool.

aiohttp receivers (``test_transport.py``) answer correctly; these servers
answer the ways real receivers sometimes do: a body that ends when the
connection closes, a kept connection closed under a new request, bytes that
are not HTTP, a hang-up before any answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import ip_network

import pytest
from yarl import URL

from dispatcher.errors import ConnectError, InvalidHeader, InvalidResponse, ResponseTooLarge
from dispatcher.http1 import BODY_KEPT, Answer, Connection, Pool
from dispatcher.transport import AddressPolicy, HttpTransport, Request, Response

LOOPBACK = AddressPolicy(allowed_networks=(ip_network("127.0.0.0/8"),))
HANG_GUARD = 5.0


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def scripted(
    answer: Callable[[int, int, asyncio.StreamWriter], Awaitable[bool]],
) -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A server calling ``answer(connection number, request number, writer)`` per request.

    Yields its URL, the requests it read and, per connection, how many requests it read.
    """
    requests: list[bytes] = []
    per_connection: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(per_connection)
        per_connection.append(0)
        try:
            while (request := await _read_request(reader)) is not None:
                requests.append(request)
                per_connection[number] += 1
                if not await answer(number, per_connection[number], writer):
                    break
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook?x=1", requests, per_connection
    finally:
        server.close()
        await server.wait_closed()


def ok(body: bytes = b"fine", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def send(transport: HttpTransport, url: str, **headers: str) -> Response:
    async with asyncio.timeout(HANG_GUARD):
        return await transport.send(Request(url, b'{"a": 1}', headers, 2.0))


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    made = HttpTransport(LOOPBACK)
    yield made
    await made.close()


async def test_request_is_exactly_what_the_receiver_reads(transport: HttpTransport) -> None:
    async def answer(connection: int, request: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(extra=b"X-A: 1\r\nx-a: 2\r\n"))
        return True

    async with scripted(answer) as (url, requests, _):
        response = await send(transport, url, **{"webhook-id": "msg_1", "user-agent": "t/1"})
    assert response.status == 200
    assert response.headers["x-a"] == "1, 2"
    assert requests == [
        b"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nwebhook-id: msg_1\r\n"
        b'user-agent: t/1\r\nContent-Length: 8\r\n\r\n{"a": 1}' % (URL(url).port or 0)
    ]


async def test_body_ending_with_the_connection_is_an_answer(transport: HttpTransport) -> None:
    async def close_delimited(connection: int, request: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 202 Accepted\r\nServer: old\r\n\r\nread until the end")
        return False

    async with scripted(close_delimited) as (url, _, per_connection):
        for _ in range(2):
            response = await send(transport, url)
            assert (response.status, response.headers["server"]) == (202, "old")
    assert per_connection == [1, 1]  # not reused after a body that ends with it


async def test_kept_connection_closed_under_a_new_request_is_retried_once_on_a_new_one(
    transport: HttpTransport,
) -> None:
    async def answer(connection: int, request: int, writer: asyncio.StreamWriter) -> bool:
        if connection == 0 and request == 2:
            return False  # hang up on the second request without a byte of answer
        writer.write(ok())
        return True

    async with scripted(answer) as (url, requests, per_connection):
        assert (await send(transport, url)).status == 200
        assert (await send(transport, url)).status == 200
    assert per_connection == [2, 1]
    assert len(requests) == 3


async def test_hang_up_before_any_answer_on_a_new_connection_is_a_connect_error(
    transport: HttpTransport,
) -> None:
    async def answer(connection: int, request: int, writer: asyncio.StreamWriter) -> bool:
        return False

    async with scripted(answer) as (url, _, per_connection):
        with pytest.raises(ConnectError, match="closed the connection"):
            await send(transport, url)
    assert per_connection == [1]  # a fresh connection is never retried


async def test_bytes_that_are_not_http_are_an_invalid_response(transport: HttpTransport) -> None:
    async def answer(connection: int, request: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        return True

    async with scripted(answer) as (url, _, _):
        with pytest.raises(InvalidResponse, match="Expected HTTP/"):
            await send(transport, url)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            {"webhook-id": "a\r\nX-Injected: 1"},
            "the value of 'webhook-id' contains a line break or NUL",
        ),
        (
            {"webhook-id": "a\nX-Injected: 1"},
            "the value of 'webhook-id' contains a line break or NUL",
        ),
        (
            {"x-a": "1", "x-b": "a\rX-Injected: 1"},
            "the value of 'x-b' contains a line break or NUL",
        ),
        ({"x-a": "a\x00X-Injected"}, "the value of 'x-a' contains a line break or NUL"),
        ({"x-a\r\nX-Injected": "1"}, "'x-a\\r\\nX-Injected' is not a header name"),
        ({"x a": "1"}, "'x a' is not a header name"),
        ({"x-a:": "1"}, "'x-a:' is not a header name"),
        ({"": "1"}, "'' is not a header name"),
        ({"Content-Length": "5"}, "Content-Length is the transport's to set"),
        ({"host": "evil.example"}, "host is the transport's to set"),
        ({"Transfer-Encoding": "chunked"}, "Transfer-Encoding is the transport's to set"),
        ({"x-name": "Zoë €"}, "the value of 'x-name' has characters outside Latin-1"),
    ],
)
async def test_a_header_that_cannot_be_sent_sends_nothing(
    headers: dict[str, str], message: str, transport: HttpTransport
) -> None:
    async def answer(connection: int, request: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())
        return True

    async with scripted(answer) as (url, requests, _):
        with pytest.raises(InvalidHeader) as caught:
            await send(transport, url, **headers)
        assert str(caught.value) == message  # never the value: it may be a secret
        assert requests == []
        assert (await send(transport, url, **{"x-name": "Zoë"})).status == 200
        assert requests[0].split(b"\r\n")[2] == b"x-name: Zo\xeb"  # Latin-1 is sendable


async def test_keep_alive_reuses_one_connection_until_the_server_says_close(
    transport: HttpTransport,
) -> None:
    # ...across a chunked body, and an interim 100 Continue before an answer.
    async def answer(connection: int, request: int, writer: asyncio.StreamWriter) -> bool:
        if request == 3:
            writer.write(ok(extra=b"Connection: close\r\n"))
            return False
        interim = b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfine\r\n0\r\n\r\n"
        writer.write(interim + chunked if request == 2 else ok())
        return True

    async with scripted(answer) as (url, _, per_connection):
        for _ in range(4):
            response = await send(transport, url)
            assert response.status == 200
            assert "x-interim" not in response.headers
    assert per_connection == [3, 1]


class _Idle(Connection):
    def __init__(self, closed: bool = False) -> None:
        super().__init__(body_limit=0)
        self.reusable = True
        self.closed = closed
        self.dropped = False

    def close(self) -> None:
        self.dropped = True


def test_pool_hands_back_fresh_connections_newest_first_and_closes_stale_ones() -> None:
    now = [0.0]
    pool = Pool(keepalive=15.0, max_idle=3, clock=lambda: now[0])
    origin = ("http", "a.example", 80)
    old, dead, new = _Idle(), _Idle(), _Idle()
    pool.give(origin, old)
    now[0] = 10.0
    pool.give(origin, dead)
    pool.give(origin, new)
    dead.closed = True  # the server hung up while it waited

    assert pool.take(origin) is new
    assert pool.take(("http", "b.example", 80)) is None
    assert pool.take(origin) is old  # dead skipped; old has waited 10 s of 15
    assert dead.dropped
    assert not old.dropped
    pool.give(origin, old)
    now[0] = 26.0
    assert pool.take(origin) is None
    assert old.dropped


def test_pool_keeps_at_most_max_idle_and_never_an_unreusable_one() -> None:
    pool = Pool(keepalive=15.0, max_idle=2, clock=lambda: 0.0)
    oldest, kept, newest, spent = _Idle(), _Idle(), _Idle(), _Idle()
    spent.reusable = False
    for connection in [oldest, kept, newest, spent]:
        pool.give(("http", "a.example", 80), connection)
    assert oldest.dropped  # the one idle longest made room
    assert spent.dropped
    assert not kept.dropped
    assert not newest.dropped
    pool.close()
    assert kept.dropped
    assert newest.dropped
    assert pool.take(("http", "a.example", 80)) is None


def test_pool_full_of_a_finished_hosts_connections_still_keeps_the_busy_hosts() -> None:
    """Idle connections to hosts no longer delivered to must not crowd out the busy ones.

    When the cap closed the connection just handed back instead, every
    request to a busy host opened a new connection for as long as the old
    hosts' connections waited out their keep-alive.
    """
    now = [0.0]
    pool = Pool(keepalive=15.0, max_idle=4, clock=lambda: now[0])
    finished = [_Idle() for _ in range(4)]
    for idle in finished:
        pool.give(("http", "done.example", 80), idle)
    now[0] = 1.0
    busy = ("http", "busy.example", 80)
    first = _Idle()
    pool.give(busy, first)
    for _ in range(10):  # a request at a time, each on the connection the last one left
        taken = pool.take(busy)
        assert taken is first
        pool.give(busy, taken)
    assert not first.dropped
    assert sum(c.dropped for c in finished) == 1
    now[0] = 15.5  # the finished host's have waited their keep-alive out; busy's has not
    assert pool.take(("http", "done.example", 80)) is None
    assert all(c.dropped for c in finished)
    assert pool.take(busy) is first


# -- the limits, fed straight into a connection ------------------------------------------


class _Wire:
    """Stands in for a socket: records what is written and whether it was aborted."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


async def feed(*chunks: bytes, eof: bool = False) -> tuple[Answer | BaseException, Connection]:
    """Answer a request on a fresh connection with ``chunks`` (then the server's close)."""
    connection = Connection(body_limit=64 * 1024)
    wire = _Wire()
    connection.connection_made(wire)  # type: ignore[arg-type]
    waiter = connection.exchange(b"POST / HTTP/1.1\r\n\r\n")
    for chunk in chunks:
        if wire.aborted:
            break
        connection.data_received(chunk)
    if eof or wire.aborted:
        connection.connection_lost(None)
    assert waiter.done(), "the connection still waits"
    return waiter.exception() or waiter.result(), connection


def fields(count: int, size: int = 10) -> bytes:
    return b"".join(b"X-F%d: %s\r\n" % (n, b"v" * size) for n in range(count))


KIB = 1024
HEAD = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize(
    ("chunks", "refusal"),
    [
        ([HEAD + fields(128) + b"Content-Length: 0\r\n\r\n"], "more than 128 header fields"),
        ([HEAD + fields(200)], "more than 128 header fields"),
        (
            [HEAD + b"X-Big: " + b"v" * (8 * KIB - 4) + b"\r\n\r\n"],
            "header field 'X-Big' over 8 KiB",
        ),
        ([HEAD, b"X-Big: ", b"v" * (8 * KIB), b"\r\n\r\n"], "header field 'X-Big' over 8 KiB"),
        ([HEAD + fields(9, 7 * KIB + 500)], "header section over 64 KiB"),
        ([HEAD + b"X-Endless: " + b"a" * (64 * KIB)], "header section over 64 KiB"),
        ([b"HTTP/1.1 100 Continue\r\n\r\n" * 2700], "header section over 64 KiB"),
        ([HEAD + b"Content-Length: 65537\r\n\r\n", b"x" * 65537], "body over 64 KiB (HTTP 200)"),
        ([HEAD + b"Content-Length: 99999\r\n\r\n" + b"x" * 99999], "body over 64 KiB (HTTP 200)"),
        (
            [HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n" * 30000],
            "body framing over 128 KiB",
        ),
        (
            [HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: ", b"t" * 70000, b"t" * 70000],
            "body framing over 128 KiB",
        ),
        ([HEAD + b"\r\n", b"x" * 40000, b"x" * 40000], "body over 64 KiB (HTTP 200)"),
    ],
    ids=[
        "128 fields, one too many with content-length",
        "200 fields",
        "one field over 8 KiB",
        "one field over 8 KiB in pieces",
        "nine 7.5 KiB fields",
        "one value that never ends",
        "interim responses that never end",
        "content-length body one byte over",
        "body arriving with its head in one read",
        "tiny chunks",
        "a trailer that never ends",
        "body until the connection closes",
    ],
)
async def test_a_response_past_a_limit_is_refused_and_its_connection_closed(
    chunks: list[bytes], refusal: str
) -> None:
    got, connection = await feed(*chunks)
    assert isinstance(got, ResponseTooLarge)
    assert str(got) == refusal
    assert connection.closed
    assert not connection.reusable


@pytest.mark.parametrize(
    "chunks",
    [
        [HEAD + fields(127) + b"Content-Length: 2\r\n\r\nok"],
        [HEAD + b"X-Big: " + b"v" * (8 * KIB - 5) + b"\r\nContent-Length: 2\r\n\r\nok"],
        [HEAD + fields(8, 7 * KIB) + b"Content-Length: 2\r\n\r\n", b"ok"],
        [HEAD + b"Content-Length: 65536\r\n\r\n", b"x" * 65536],
        [HEAD + b"Content-Length: 65536\r\n\r\n" + b"x" * 65536],
        [
            HEAD + b"Transfer-Encoding: chunked\r\n\r\n",
            (b"1000\r\n" + b"x" * 4096 + b"\r\n") * 16 + b"0\r\n\r\n",
        ],
        [b"HTTP/1.1 100 Continue\r\n\r\n" * 100 + HEAD + b"Content-Length: 2\r\n\r\nok"],
        [bytes([byte]) for byte in HEAD + b"Content-Length: 2\r\n\r\nok"],
    ],
    ids=[
        "128 fields",
        "a field of 8 KiB",
        "a head just under 64 KiB",
        "a body of 64 KiB",
        "a body of 64 KiB with its head",
        "a chunked body of 64 KiB",
        "100 interim responses",
        "a byte at a time",
    ],
)
async def test_a_response_within_every_limit_is_an_answer(chunks: list[bytes]) -> None:
    got, connection = await feed(*chunks)
    assert isinstance(got, Answer), got
    assert got.status == 200
    assert connection.reusable


@pytest.mark.parametrize(
    ("chunks", "body_start"),
    [
        ([HEAD + b"Content-Length: 2\r\n\r\nok"], b"ok"),
        ([HEAD + b"Content-Length: 0\r\n\r\n"], b""),
        (
            [HEAD + b"Content-Length: 3000\r\n\r\n" + b"a" * 1000, b"b" * 1000, b"c" * 1000],
            b"a" * 1000 + b"b" * 24,
        ),
        (
            [HEAD + b'Transfer-Encoding: chunked\r\n\r\n3\r\n{"e\r\n4\r\nrr"}\r\n0\r\n\r\n'],
            b'{"err"}',
        ),
        ([HEAD + b"Content-Length: 4\r\n\r\n\xff\xfe\x00!"], b"\xff\xfe\x00!"),
    ],
    ids=["small", "empty", "past 1 KiB in pieces", "chunked", "not text"],
)
async def test_the_first_kib_of_the_body_is_kept_as_it_came(
    chunks: list[bytes], body_start: bytes
) -> None:
    got, _ = await feed(*chunks)
    assert isinstance(got, Answer)
    assert got.body_start == body_start
    assert len(got.body_start) <= BODY_KEPT


@pytest.mark.parametrize(
    ("chunks", "outcome"),
    [
        (
            [HEAD + b"Content-Length: 10\r\n\r\nhalf"],
            "ConnectionResetError: the server closed the connection before the body ended (HTTP 200)",
        ),
        (
            [HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n"],
            "ConnectionResetError: the server closed the connection before the body ended (HTTP 200)",
        ),
        ([HEAD + b"X-A: 1"], "ConnectionResetError: the server closed the connection"),
        ([], "ConnectionResetError: the server closed the connection"),
        ([HEAD + b"\r\nuntil the end"], "200 b'until the end'"),
    ],
    ids=["content-length", "chunked", "in the head", "before a byte", "no framing: ends with it"],
)
async def test_a_response_cut_short_by_the_server_is_not_an_answer(
    chunks: list[bytes], outcome: str
) -> None:
    got, _ = await feed(*chunks, eof=True)
    if isinstance(got, Answer):
        assert f"{got.status} {got.body_start!r}" == outcome
    else:
        assert f"{type(got).__name__}: {got}" == outcome


async def test_bytes_after_the_answer_leave_it_whole_and_close_the_connection() -> None:
    extra = b"HTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n"
    got, connection = await feed(HEAD + b"X-A: 1\r\nContent-Length: 2\r\n\r\nok" + extra)
    assert isinstance(got, Answer)
    assert (got.status, got.headers, got.body_start) == (
        200,
        {"x-a": "1", "content-length": "2"},
        b"ok",
    )
    assert not connection.reusable


async def test_trailers_are_not_headers() -> None:
    chunked = b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: 1\r\n\r\n"
    got, _ = await feed(HEAD + chunked)
    assert isinstance(got, Answer)
    assert "x-trailer" not in got.headers
