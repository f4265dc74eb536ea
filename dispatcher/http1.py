"""Keep-alive HTTP/1.1 connections for webhook POSTs: one parser per connection, a pool per origin.

Why not aiohttp's client: a delivery actor spends most of its CPU sending
requests. When this module replaced aiohttp's ``ClientSession``, the
delivery actor's own code, measured in one process without Ray or a
database (``worker_limit_per_s`` of the throughput benchmark), went from
0.35 to 0.47 ms of CPU per POST to 0.14 to 0.15 ms; aiohttp's time went mostly to
machinery a webhook does not use (cookie jar, tracing, multidict headers,
payload objects, redirects, proxies). This sends one prepared buffer and
parses the answer with httptools (llhttp, the parser of Node.js, which
uvicorn uses too).

It does what the transport needs and nothing more: one request at a time on
a connection, the response's status, headers and the first
:data:`BODY_KEPT` bytes of its body, the rest of the body read and dropped,
the connection kept for the next request when the server allows it.
Addresses, TLS contexts and timeouts are the caller's
(``dispatcher.transport``); socket and TLS errors are raised as they come
(``OSError``, ``ssl.SSLError``) for it to map, and a response this module
refuses raises ``InvalidResponse`` or ``ResponseTooLarge``.

**Every part of a response is bounded**, because a receiver is anyone with
a URL. Past a limit the exchange ends at once with ``ResponseTooLarge`` and
the connection is closed, never pooled:

- the header section, interim ``1xx`` responses included: :data:`HEAD_LIMIT`
  (64 KiB) of bytes read before it ends;
- one header field, name and value: :data:`FIELD_LIMIT` (8 KiB, as aiohttp's
  client); at most :data:`FIELD_COUNT_LIMIT` (128, as aiohttp's client) fields;
- the body: ``body_limit`` bytes (64 KiB from the transport), and the bytes
  read after the header section (chunk framing and trailers included, which
  the parser buffers until each ends) twice that.

A response counts only once it has arrived whole: a connection closed before
the end its ``Content-Length`` or chunked framing declared is an error; only
a body framed by neither ends with the connection. The caller's timeout
bounds the time of the whole exchange.

Where the memory went without these limits, measured with the servers of
``tests/hostile.py`` against one transport, in the client's process alone
(tracemalloc's peak, 3 s attempts): 15 endless header values took 473 MB,
as httptools appends each piece of an unfinished value to one bytes object
(quadratic in CPU too); 15 endless header sections 289 MB, an entry of the
header dict per line; the other kinds a few MB (TLS: asyncio's 256 KiB read
buffer per connection). With the limits, 105 hosts of all kinds at once
take 6.5 MB; ``tests/test_hostile.py`` holds a hundred to a bound.

A request on a kept-alive connection that gets no byte of answer before
the connection closes is sent once more on a new connection (see
``HttpTransport``): this is the race of a server closing an idle connection
as the request arrives, but if that server had in fact read the request and
acted on it, the receiver gets it twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

from dispatcher.errors import InvalidResponse, ResponseTooLarge

__all__ = [
    "BODY_KEPT",
    "FIELD_COUNT_LIMIT",
    "FIELD_LIMIT",
    "HEAD_LIMIT",
    "Answer",
    "Connection",
    "Origin",
    "Pool",
]

HEAD_LIMIT = 64 * 1024
"""Bytes a response may take before its header section ends (interim 1xx responses included)."""
FIELD_LIMIT = 8 * 1024
"""Bytes of one header field's name and value together."""
FIELD_COUNT_LIMIT = 128
"""Header fields in one response head."""
BODY_KEPT = 1024
"""Bytes of the body kept in :attr:`Answer.body_start`."""

Origin = tuple[str, str, int]
"""``(scheme, host, port)``: connections are shared only within one."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back: status, headers (keys lower-cased, repeats joined by ", "), body start."""

    status: int
    headers: dict[str, str]
    body_start: bytes = b""
    """The body's first :data:`BODY_KEPT` bytes, as they came."""


class Connection(asyncio.Protocol):
    """One connection; :meth:`exchange` sends a request and waits for its response."""

    def __init__(self, body_limit: int) -> None:
        self._body_limit = body_limit
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        """The last response was read whole and the server keeps the connection open."""
        self.answered = False
        """Some of the current response has arrived (a request that got none may be resent)."""
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._refusal: ResponseTooLarge | None = None
        self._status = 0
        """The status once a response head has ended (an interim one's until its end)."""
        self._headers: dict[str, str] = {}
        self._fields = 0
        self._head = 0
        """Bytes read before the final header section ended."""
        self._rest = 0
        """Bytes read after the read that ended it."""
        self._body = 0
        self._kept = b""

    def exchange(self, data: bytes) -> asyncio.Future[Answer]:
        """Write a whole request; the future resolves to its response."""
        assert self.transport is not None
        assert self._waiter is None
        self.reusable = self.answered = False
        self._refusal = None
        self._status, self._headers, self._fields = 0, {}, 0
        self._head = self._rest = self._body = 0
        self._kept = b""
        self._parser = httptools.HttpResponseParser(self)
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def stage(self) -> str:
        """How far the current response got, for the message of a timeout."""
        if not self.answered:
            return "no response"
        if not self._status:
            return "response headers incomplete"
        return f"HTTP {self._status}, body incomplete"

    def close(self) -> None:
        """Drop the connection at once (it may be in any state)."""
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (Ray runs actors on uvloop) do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # nothing was asked: the connection cannot be trusted
            self.close()
            return
        self.answered = True
        try:
            if self._status:
                self._rest += len(data)
                parser.feed_data(data)
            elif len(data) <= HEAD_LIMIT - self._head:
                self._head += len(data)
                parser.feed_data(data)
            else:
                self._feed_past_head_limit(parser, data)
        except httptools.HttpParserUpgrade:  # 101: answered, but no longer HTTP
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(self._refusal or InvalidResponse(str(exc) or type(exc).__name__))
        except ResponseTooLarge as exc:
            self._fail(exc)
        else:
            if self._rest > 2 * self._body_limit and self._waiter is not None:
                self._fail(ResponseTooLarge(f"body framing over {_kib(2 * self._body_limit)}"))

    def _feed_past_head_limit(self, parser: httptools.HttpResponseParser, data: bytes) -> None:
        """Feed what the header section may still take; the rest only if the section ended."""
        room = HEAD_LIMIT - self._head
        self._head = HEAD_LIMIT
        view = memoryview(data)  # slices without copies
        if room:
            parser.feed_data(view[:room])
        if not self._status:
            raise ResponseTooLarge(f"header section over {_kib(HEAD_LIMIT)}")
        if self._parser is parser:
            self._rest += len(data) - room
            parser.feed_data(view[room:])
        else:  # answered, and more bytes than the answer: no longer trusted
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._waiter is None:
            return
        if not self._status:
            self._end(exc or ConnectionResetError("the server closed the connection"))
        elif self._ends_with_connection():
            self._end(None)
        else:
            self._end(
                ConnectionResetError(
                    f"the server closed the connection before the body ended (HTTP {self._status})"
                )
            )

    def _ends_with_connection(self) -> bool:
        """The body has neither a length nor chunks, so the connection's end is its end."""
        framing = self._headers.get("transfer-encoding", "").lower()
        return "content-length" not in self._headers and "chunked" not in framing

    # -- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second response to one request
            raise InvalidResponse("bytes after the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._status:
            return  # a trailer, after the body: not part of the answer
        self._fields += 1
        if self._fields > FIELD_COUNT_LIMIT:
            self._refusal = ResponseTooLarge(f"more than {FIELD_COUNT_LIMIT} header fields")
            raise self._refusal  # stops the parser at once
        if len(name) + len(value) > FIELD_LIMIT:
            field = name[:64].decode("latin-1")
            self._refusal = ResponseTooLarge(f"header field {field!r} over {_kib(FIELD_LIMIT)}")
            raise self._refusal
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        known = self._headers.get(key)
        self._headers[key] = text if known is None else f"{known}, {text}"

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if len(self._kept) < BODY_KEPT:
            # Slicing a bytes object whole returns it, and adding it to b"" too: no copy.
            self._kept += body[: BODY_KEPT - len(self._kept)]
        self._body += len(body)
        if self._body > self._body_limit:
            limit = _kib(self._body_limit)
            self._refusal = ResponseTooLarge(f"body over {limit} (HTTP {self._status})")
            raise self._refusal

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200 and self._status != 101:
            # Interim (100 Continue): the answer follows; its bytes still count as head.
            self._status, self._headers, self._fields = 0, {}, 0
            return
        keep = self._parser is not None and self._parser.should_keep_alive()
        self._end(None)
        self.reusable = keep and not self.closed

    def _end(self, error: BaseException | None) -> None:
        waiter, self._waiter, self._parser = self._waiter, None, None
        if waiter is None or waiter.done():
            return
        if error is None:
            waiter.set_result(Answer(self._status, self._headers, self._kept))
        else:
            waiter.set_exception(error)

    def _fail(self, error: BaseException) -> None:
        self._end(error)
        self.close()


def _kib(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} bytes"


class Pool:
    """Idle keep-alive connections by origin, oldest first across origins.

    A connection idle for ``keepalive`` seconds is closed rather than reused
    (servers drop idle ones too, and a request written into a connection the
    server is closing is lost). At most ``max_idle`` connections wait idle in
    all: past that, the one idle longest is closed, whatever its origin, so
    the hosts being delivered to keep theirs and hosts done with wait out
    their keep-alive at no one's expense.
    """

    def __init__(
        self,
        *,
        keepalive: float = 15.0,
        max_idle: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keepalive = keepalive
        self._max_idle = max_idle
        self._clock = clock
        self._idle: dict[Origin, list[Connection]] = {}
        """Per origin, most recently used last."""
        self._order: OrderedDict[Connection, Origin] = OrderedDict()
        """Every idle connection, idle longest first."""

    def take(self, origin: Origin) -> Connection | None:
        """The most recently used idle connection to ``origin`` that may still be used."""
        self._expire(self._clock())
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            del self._order[connection]
            if not idle:
                del self._idle[origin]
            if not connection.closed:
                return connection
            connection.close()
        return None

    def give(self, origin: Origin, connection: Connection) -> None:
        """Keep a connection whose exchange ended for the next request, or close it."""
        if not connection.reusable or connection.closed:
            connection.close()
            return
        connection.idle_since = self._clock()
        self._idle.setdefault(origin, []).append(connection)
        self._order[connection] = origin
        if len(self._order) > self._max_idle:
            self._drop_oldest()

    def close(self) -> None:
        """Close every idle connection."""
        for connection in self._order:
            connection.close()
        self._idle.clear()
        self._order.clear()

    def _expire(self, now: float) -> None:
        while self._order and now - next(iter(self._order)).idle_since >= self._keepalive:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        connection, origin = self._order.popitem(last=False)
        idle = self._idle[origin]
        idle.remove(connection)  # its first, being its oldest
        if not idle:
            del self._idle[origin]
        connection.close()
