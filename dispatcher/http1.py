"""Keep-alive HTTP/1.1 connections for webhook POSTs: one parser per connection, a pool per origin.

Why not aiohttp's client: a delivery actor spends most of its CPU sending
requests, and aiohttp's ``ClientSession`` costs about 0.25 ms of CPU per
POST here, mostly in machinery a webhook does not use (cookie jar, tracing,
multidict headers, payload objects, redirects, proxies); see "What limits
them" in ``benchmarks/README.md``. This sends one prepared buffer and parses
the answer with httptools (llhttp, the parser of Node.js, which uvicorn
uses too), for a fraction of that.

It does what the transport needs and nothing more: one request at a time on
a connection, the response's status and headers, its body read up to a limit
and discarded, the connection kept for the next request when the server
allows it. Addresses, TLS contexts and timeouts are the caller's
(``dispatcher.transport``); errors are raised as they come (``OSError``,
``ssl.SSLError``, ``httptools.HttpParserError``) for it to map.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

__all__ = ["Answer", "Connection", "Origin", "Pool"]

Origin = tuple[str, str, int]
"""``(scheme, host, port)``: connections are shared only within one."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back: status and headers (keys lower-cased, repeats joined by ", ")."""

    status: int
    headers: dict[str, str]


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
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = 0

    def exchange(self, data: bytes) -> asyncio.Future[Answer]:
        """Write a whole request; the future resolves to its response."""
        assert self.transport is not None
        assert self._waiter is None
        self.reusable = self.answered = False
        self._status, self._headers, self._body = 0, {}, 0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

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
        if self._parser is None:  # nothing was asked: the connection cannot be trusted
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # 101: answered, but no longer HTTP
            self.close()
        except httptools.HttpParserError as exc:
            self._end(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._status:  # a body that runs until the server closes has ended
            self._end(None)
        else:
            self._end(exc or ConnectionResetError("the server closed the connection"))

    # -- httptools callbacks --------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        known = self._headers.get(key)
        self._headers[key] = text if known is None else f"{known}, {text}"

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self._body > self._body_limit and self._waiter is not None:
            self._end(None)  # enough: answer now, hang up on the rest
            self.close()

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200 and self._status != 101:
            self._status, self._headers = 0, {}  # interim (100 Continue): the answer follows
            return
        keep = self._parser is not None and self._parser.should_keep_alive()
        self._end(None)
        self.reusable = keep and not self.closed

    def _end(self, error: BaseException | None) -> None:
        waiter, self._waiter, self._parser = self._waiter, None, None
        if waiter is None or waiter.done():
            return
        if error is None:
            waiter.set_result(Answer(self._status, self._headers))
        else:
            waiter.set_exception(error)


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
