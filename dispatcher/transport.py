"""The outgoing HTTP layer: one POST per attempt, behind a small seam.

Owns the ``Transport`` protocol that delivery logic calls, its aiohttp
implementation with the SSRF guard (``AddressPolicy``, checked on the very
addresses aiohttp connects to), a ``MockTransport`` for tests, and the one
place where aiohttp/asyncio/ssl/OSError exceptions become ``dispatcher.errors``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from dispatcher.errors import (
    AttemptTimeout,
    ConnectError,
    DestinationRefused,
    DispatchError,
    TLSError,
    TransportError,
)

__all__ = [
    "AddressPolicy",
    "AiohttpTransport",
    "MockTransport",
    "Request",
    "Response",
    "Transport",
    "parse_networks",
]

_SCHEMES = frozenset({"http", "https"})
# Enough to let a small response finish so its connection returns to the pool;
# anything bigger is cut off and the connection closed instead.
_BODY_LIMIT = 64 * 1024
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
    """What an attempt got back: status, headers (lower-cased keys), seconds taken."""

    status: int
    headers: Mapping[str, str]
    elapsed: float


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


class _PolicyResolver(AbstractResolver):
    """Resolves with ``inner``, then drops the addresses the policy refuses.

    aiohttp connects only to what this returns, so the address checked is the
    address used: no second lookup for a rebinding DNS server to answer.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refusals: list[str] = []
        for result in results:
            try:
                self._policy.check(ip_address(result["host"]))
            except (DestinationRefused, ValueError) as exc:
                refusals.append(str(exc))
            else:
                kept.append(result)
        if results and not kept:
            raise DestinationRefused(f"{host}: {'; '.join(refusals)}")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class AiohttpTransport:
    """The real transport: aiohttp with a pinned, policy-checked resolver.

    One ``ClientSession`` is created lazily inside the running loop on the
    first ``send``. ``resolver`` replaces aiohttp's default resolver as the one
    asked before the policy (the transport then owns and closes it).
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        ca_bundle: str | None = None,
        limit_per_host: int = 0,
        limit: int = 1000,
        user_agent: str,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._policy = policy
        self._ssl = ssl.create_default_context()
        if ca_bundle is not None:
            self._ssl.load_verify_locations(cafile=ca_bundle)
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._user_agent = user_agent
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: _PolicyResolver | None = None
        # An endpoint is attempted many times: parse and check its URL once.
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        self._resolver = _PolicyResolver(self._policy, self._inner_resolver or DefaultResolver())
        connector = aiohttp.TCPConnector(
            resolver=self._resolver,
            ssl=self._ssl,
            limit=self._limit,
            limit_per_host=self._limit_per_host,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self._user_agent},
            # A proxy from the environment would connect on our behalf, unchecked.
            trust_env=False,
            # Cookies set by one receiver must never travel to another request.
            cookie_jar=aiohttp.DummyCookieJar(),
            # The body is discarded; decompressing it is wasted work (or a bomb).
            auto_decompress=False,
        )
        return self._session

    async def send(self, request: Request) -> Response:
        """POST ``request`` without following redirects; see ``Transport.send``."""
        started = time.monotonic()
        try:
            url = self._urls.get(request.url)
            if url is None:
                url = _checked_url(request.url, self._policy)
                if len(self._urls) >= _URL_CACHE:
                    self._urls.clear()
                self._urls[request.url] = url
            timeout = self._timeouts.get(request.timeout)
            if timeout is None:
                timeout = self._timeouts[request.timeout] = aiohttp.ClientTimeout(
                    total=request.timeout
                )
            session = self._open() if self._session is None else self._session
            async with session.post(
                url,
                data=request.body,
                headers=request.headers,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                remaining = _BODY_LIMIT
                while remaining > 0 and (chunk := await response.content.read(remaining)):
                    remaining -= len(chunk)
                headers: dict[str, str] = {}
                for key, value in response.headers.items():
                    lower = key.lower()
                    headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
                status = response.status
        except (DispatchError, aiohttp.ClientError, OSError, ValueError) as exc:
            error = _to_transport_error(exc, request.timeout)
            if error is exc:
                raise
            raise error from exc
        return Response(status=status, headers=headers, elapsed=time.monotonic() - started)

    async def close(self) -> None:
        """Close the session and its connections; safe to call twice."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            # aiohttp closes only resolvers it created itself.
            await self._resolver.close()
            self._resolver = None


def _checked_url(raw: str, policy: AddressPolicy) -> URL:
    url = URL(raw)
    if url.scheme not in _SCHEMES:
        raise DestinationRefused(f"scheme {url.scheme!r} is not allowed in {raw!r}")
    host = url.raw_host or ""
    # Same test aiohttp uses to skip the resolver, so every such host is checked here.
    if ":" in host or host.replace(".", "").isdigit():
        try:
            ip = ip_address(host)
        except ValueError:
            raise DestinationRefused(f"{host!r} is not a canonical IP address") from None
        policy.check(ip)
    return url


def _to_transport_error(exc: BaseException, timeout: float) -> TransportError:
    """Map any exception from an attempt (of ``timeout`` seconds) onto the dispatcher's tree."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    for link in chain:
        if isinstance(link, DestinationRefused):
            return link
    if isinstance(exc, TransportError):
        return exc
    # ServerTimeoutError and friends subclass asyncio.TimeoutError (= TimeoutError).
    if isinstance(exc, asyncio.TimeoutError):
        # Worded for outcome.py, which prints "timeout after <message>".
        return AttemptTimeout(f"{timeout:g} s")
    for link in chain:
        # ClientSSLError covers certificate errors; an ssl.SSLError may hide in a cause.
        if isinstance(link, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch):
            return TLSError(_describe(link))
        if isinstance(link, ssl.SSLError):
            return TLSError(_describe(link))
    return ConnectError(_describe(exc))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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
