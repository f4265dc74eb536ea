"""The outgoing HTTP layer: one POST per attempt, behind a small seam.

Owns the ``Transport`` protocol that delivery logic calls, its real
implementation over ``dispatcher.http1`` with the SSRF guard
(``AddressPolicy``, checked on the very addresses connected to), a
``MockTransport`` for tests, and the one place where asyncio, ssl and OSError
exceptions become ``dispatcher.errors`` (``http1`` raises its refusals of a
response as ``InvalidResponse`` itself).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Protocol

from yarl import URL

from dispatcher.errors import (
    AttemptTimeout,
    ConnectError,
    DestinationRefused,
    DispatchError,
    InvalidHeader,
    TLSError,
)
from dispatcher.http1 import BODY_KEPT, Answer, Connection, Origin, Pool

__all__ = [
    "BODY_KEPT",
    "AddressPolicy",
    "HttpTransport",
    "MockTransport",
    "Request",
    "Resolver",
    "Response",
    "SystemResolver",
    "Transport",
    "parse_networks",
]

_SCHEMES = frozenset({"http", "https"})
# Enough for any answer a receiver means (an error page, a JSON echo); past it the
# attempt fails and the connection is closed (``dispatcher.http1``).
_BODY_LIMIT = 64 * 1024
# Request headers that frame the message: the transport writes them, no caller may.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.1, a field name
# Checked URLs kept per transport (one per endpoint URL); cleared when full.
_URL_CACHE = 10_000
# DNS64 synthesises these for IPv4-only hosts; what matters is the embedded IPv4.
_NAT64 = IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class Request:
    """One attempt: POST ``body`` to ``url`` with ``headers`` within ``timeout`` seconds."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    timeout: float


@dataclass(frozen=True)
class Response:
    """What an attempt got back: status, headers (lower-cased keys), seconds taken, body start."""

    status: int
    headers: Mapping[str, str]
    elapsed: float
    body_start: bytes = b""
    """The body's first ``BODY_KEPT`` (1,024) bytes, as they came; the rest was read and dropped.

    Bytes, not text: the charset is the receiver's to declare, and the cut may
    split a character. Whoever shows it decodes it (UTF-8 with
    ``errors="replace"`` is the usual choice).
    """


class Transport(Protocol):
    """Sends one request; raises only ``TransportError`` subclasses."""

    async def send(self, request: Request) -> Response:
        """POST the request and return the response, whatever its status."""
        ...

    async def close(self) -> None:
        """Release connections; the transport may not be used afterwards."""
        ...


def parse_networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """Parse a comma-separated list of CIDR networks such as ``"10.0.0.0/8, ::1/128"``."""
    networks: list[IPv4Network | IPv6Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ip_network(item))
        except ValueError as exc:
            raise ValueError(f"allowed networks: {item!r} is not a CIDR network ({exc})") from exc
    return tuple(networks)


@dataclass(frozen=True)
class AddressPolicy:
    """Which IP addresses outgoing requests may connect to.

    Refuses everything not globally routable (loopback, private, link-local,
    shared, reserved, unspecified) and multicast, judging IPv4-mapped and
    NAT64 addresses by the IPv4 address they carry. ``allow_private`` (the
    development mode) allows everything; ``allowed_networks`` allows chosen
    networks, e.g. a test receiver on loopback.
    """

    allow_private: bool = False
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()

    def check(self, ip: IPv4Address | IPv6Address) -> None:
        """Return if ``ip`` may be connected to, else raise ``DestinationRefused``."""
        if self.allow_private:
            return
        effective = _embedded_ipv4(ip)
        if any(addr in net for net in self.allowed_networks for addr in (ip, effective)):
            return
        reason = _refusal_reason(effective)
        if reason is not None:
            raise DestinationRefused(f"address {ip} is {reason}")


def _embedded_ipv4(ip: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _refusal_reason(ip: IPv4Address | IPv6Address) -> str | None:
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        # Catches what the flags above miss, e.g. 100.64.0.0/10 (shared, CGNAT).
        (not ip.is_global, "not globally routable"),
    )
    return next((reason for refused, reason in checks if refused), None)


class Resolver(Protocol):
    """Looks a host name up; the transport checks what it returns against its policy."""

    async def resolve(self, host: str, port: int) -> list[str]:
        """The host's IP addresses, as text."""
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``, in asyncio's thread pool)."""

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every distinct address ``getaddrinfo`` gives for a TCP connection."""
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class _Target:
    """A checked endpoint URL, ready to be connected to and written."""

    origin: Origin
    """``(scheme, host, port)``; the host is what to resolve, or the address itself when
    ``literal``, and the TLS server name."""
    literal: bool
    start: str
    """The request line and the Host header."""


@dataclass(slots=True)
class _Progress:
    """How far one attempt got, for the message of its timeout."""

    connecting: bool = False
    connection: Connection | None = None

    def stage(self) -> str:
        if self.connection is not None:
            return self.connection.stage()
        # Both are on our side: DNS, TCP and TLS, or this transport's own limit of attempts.
        return "connecting" if self.connecting else "waiting for a free slot"


class HttpTransport:
    """The real transport: keep-alive HTTP/1.1 (``dispatcher.http1``) behind the SSRF guard.

    Host names are resolved with ``resolver`` (the system's by default), the
    answers are checked against ``policy``, and connections are made only to
    the addresses it allows: the address checked is the address used, with no
    second lookup for a rebinding DNS server to answer. Checked answers are
    kept ``dns_ttl`` seconds. At most ``limit`` attempts run at once; a
    connection idle for ``keepalive`` seconds is closed.

    The request's timeout covers the whole attempt: DNS, connecting, TLS,
    sending and the whole response. Headers are sent as given (the worker
    sets ``user-agent``); ``Host`` and ``Content-Length`` are the transport's.

    One resend: a request written on a kept-alive connection that gets no
    byte of answer before the server closes that connection is sent once
    more, on a new connection, within the same timeout. Servers close idle
    connections when they please, and one closing just as the request
    arrives has not read it: without the resend that would be a failed
    attempt for nothing. But a server that read the request, acted on it
    and closed without answering gets it twice (same ``webhook-id``, which
    is what receivers deduplicate on). A fresh connection is never resent.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        ca_bundle: str | None = None,
        limit: int = 1000,
        resolver: Resolver | None = None,
        dns_ttl: float = 10.0,
        keepalive: float = 15.0,
    ) -> None:
        self._policy = policy
        self._ssl = ssl.create_default_context()
        if ca_bundle is not None:
            self._ssl.load_verify_locations(cafile=ca_bundle)
        self._slots = asyncio.Semaphore(limit)
        self._resolver = resolver or SystemResolver()
        self._dns_ttl = dns_ttl
        self._pool = Pool(keepalive=keepalive, max_idle=limit)
        # An endpoint is attempted many times: parse and check its URL once.
        self._targets: dict[str, _Target] = {}
        self._addresses: dict[str, tuple[float, list[str]]] = {}
        # Header names already found sendable (a handful: the worker's).
        self._names: set[str] = set()

    async def send(self, request: Request) -> Response:
        """POST ``request`` without following redirects; see ``Transport.send``."""
        started = time.monotonic()
        deadline = asyncio.timeout(request.timeout)
        progress = _Progress()
        try:
            target = self._targets.get(request.url) or self._target(request.url)
            data = self._encode(target, request)
            async with deadline, self._slots:
                progress.connecting = True
                answer = await self._exchange(target, data, progress)
        except DispatchError:
            raise
        except TimeoutError as exc:
            if deadline.expired():
                # Worded for outcome.py, which prints "timeout after <message>".
                raise AttemptTimeout(f"{request.timeout:g} s ({progress.stage()})") from None
            raise ConnectError(_describe(exc)) from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise TLSError(_describe(exc)) from exc
        except (OSError, ValueError) as exc:
            raise ConnectError(_describe(exc)) from exc
        elapsed = time.monotonic() - started
        return Response(answer.status, answer.headers, elapsed, answer.body_start)

    async def close(self) -> None:
        """Close the idle connections; safe to call twice."""
        self._pool.close()

    def _target(self, raw: str) -> _Target:
        url = URL(raw)
        if url.scheme not in _SCHEMES:
            raise DestinationRefused(f"scheme {url.scheme!r} is not allowed in {raw!r}")
        host = url.raw_host or ""
        if not host or url.port is None:
            raise DestinationRefused(f"{raw!r} names no host")
        # An IP literal, in any form a resolver would accept, is checked here.
        literal = ":" in host or host.replace(".", "").isdigit()
        if literal:
            try:
                ip = ip_address(host)
            except ValueError:
                raise DestinationRefused(f"{host!r} is not a canonical IP address") from None
            self._policy.check(ip)
        # yarl drops line breaks from a URL, so this line cannot carry a header of its own.
        start = f"POST {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host_port_subcomponent}\r\n"
        target = _Target((url.scheme, host, url.port), literal, start)
        if len(self._targets) >= _URL_CACHE:
            self._targets.clear()
        self._targets[raw] = target
        return target

    def _encode(self, target: _Target, request: Request) -> bytes:
        lines = [target.start]
        for name, value in request.headers.items():
            if name not in self._names:
                self._check_name(name)
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(request.body)}\r\n\r\n")
        head = "".join(lines)
        # Two scans of a short string, cheaper than checking each value on its own.
        breaks = len(request.headers) + 4
        if head.count("\n") != breaks or head.count("\r") != breaks or "\0" in head:
            raise InvalidHeader(_unsendable(request.headers))
        try:
            return head.encode("latin-1") + request.body
        except UnicodeEncodeError:
            raise InvalidHeader(_unsendable(request.headers)) from None

    def _check_name(self, name: str) -> None:
        if _TOKEN.fullmatch(name) is None:
            raise InvalidHeader(f"{name[:64]!r} is not a header name")
        if name.lower() in _OWN_HEADERS:
            raise InvalidHeader(f"{name} is the transport's to set")
        if len(self._names) >= _URL_CACHE:
            self._names.clear()
        self._names.add(name)

    async def _exchange(self, target: _Target, data: bytes, progress: _Progress) -> Answer:
        kept = self._pool.take(target.origin)
        if kept is not None:
            progress.connection = kept
            try:
                return await self._use(target, kept, data)
            except OSError:
                if kept.answered:
                    raise
                # Closed under the request without a byte of answer: the one resend (see
                # the class docstring), on a new connection.
            progress.connection = None
        connection = await self._connect(target)
        progress.connection = connection
        return await self._use(target, connection, data)

    async def _use(self, target: _Target, connection: Connection, data: bytes) -> Answer:
        try:
            return await connection.exchange(data)
        finally:
            self._pool.give(target.origin, connection)  # or closes it, unless it may be reused

    async def _connect(self, target: _Target) -> Connection:
        scheme, host, port = target.origin
        tls = scheme == "https"
        addresses = [host] if target.literal else await self._resolve(host, port)
        loop = asyncio.get_running_loop()
        failures: list[str] = []
        for address in addresses:
            try:
                _, connection = await loop.create_connection(
                    lambda: Connection(_BODY_LIMIT),
                    address,
                    port,
                    ssl=self._ssl if tls else None,
                    server_hostname=host if tls else None,
                )
            except (ssl.SSLError, ssl.CertificateError):
                raise
            except OSError as exc:
                failures.append(f"{address}: {_describe(exc)}")
            else:
                return connection
        raise ConnectionError(f"cannot connect to {host} port {port} ({'; '.join(failures)})")

    async def _resolve(self, host: str, port: int) -> list[str]:
        now = time.monotonic()
        cached = self._addresses.get(host)
        if cached is not None and cached[0] > now:
            return cached[1]
        kept: list[str] = []
        refusals: list[str] = []
        for address in await self._resolver.resolve(host, port):
            try:
                self._policy.check(ip_address(address))
            except (DestinationRefused, ValueError) as exc:
                refusals.append(str(exc))
            else:
                kept.append(address)
        if refusals and not kept:
            raise DestinationRefused(f"{host}: {'; '.join(refusals)}")
        if not kept:
            raise OSError(f"{host} has no address")
        if len(self._addresses) >= _URL_CACHE:
            self._addresses.clear()
        self._addresses[host] = (now + self._dns_ttl, kept)
        return kept


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _unsendable(headers: Mapping[str, str]) -> str:
    """Which header cannot be sent and why, without its value (it may be a secret)."""
    for name, value in headers.items():
        for text, part in ((name, "name"), (value, "value")):
            if any(char in text for char in "\r\n\0"):
                return f"the {part} of {name[:64]!r} contains a line break or NUL"
            if not text.isascii() and any(ord(char) > 0xFF for char in text):
                return f"the {part} of {name[:64]!r} has characters outside Latin-1"
    return "a header cannot be sent"


class MockTransport:
    """A transport that hands each request to ``handler``, sync or async.

    The handler returns a ``Response`` or raises a ``TransportError`` subclass,
    so delivery logic can be tested with a plain function and no network.
    """

    def __init__(self, handler: Callable[[Request], Response | Awaitable[Response]]) -> None:
        self._handler = handler

    async def send(self, request: Request) -> Response:
        """Return what the handler returns (awaiting it if needed)."""
        result = self._handler(request)
        if isinstance(result, Response):
            return result
        return await result

    async def close(self) -> None:
        """Nothing to release."""
