"""The transport against real aiohttp receivers on 127.0.0.1, and the address policy."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
import trustme
import uvloop
from aiohttp import web

from dispatcher.errors import (
    AttemptTimeout,
    ConnectError,
    DestinationRefused,
    ResponseTooLarge,
    TLSError,
)
from dispatcher.transport import (
    AddressPolicy,
    HttpTransport,
    MockTransport,
    Request,
    Response,
    parse_networks,
)

LOOPBACK = AddressPolicy(allowed_networks=(ip_network("127.0.0.0/8"),))
USER_AGENT = "sentinmail-test/1"
# Every network test finishes far below this; it only turns a hang into a failure.
HANG_GUARD = 5.0


@dataclass
class Hit:
    """One request a receiver got."""

    path: str
    body: bytes
    headers: dict[str, str]
    peer_port: int


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that records what reaches it."""

    port: int = 0
    hits: list[Hit] = field(default_factory=list)

    def url(self, path: str, *, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def record(self, request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.hits.append(
            Hit(request.path, await request.read(), dict(request.headers), peer[1] if peer else 0)
        )

    async def hook(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response(status=202, headers={"X-Receiver-Note": "Yes"})

    async def redirect(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response(status=302, headers={"Location": "/target"})

    async def refuse(self, request: web.Request) -> web.Response:
        await self.record(request)
        return web.Response(status=400, text="unknown event type ✗ " + "x" * 2000)

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    async def huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        # Unbounded for this test's purposes; the client hangs up after 64 KiB.
        with contextlib.suppress(ConnectionResetError):
            for _ in range(100_000):
                await response.write(b"x" * 65536)
        return response


async def _serve(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    app.router.add_post("/redirect", receiver.redirect)
    app.router.add_post("/target", receiver.hook)
    app.router.add_post("/refuse", receiver.refuse)
    app.router.add_post("/slow", receiver.slow)
    app.router.add_post("/huge", receiver.huge)
    runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    receiver.port = runner.addresses[0][1]
    try:
        yield receiver
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async for served in _serve():
        yield served


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_receiver(ca: trustme.CA) -> AsyncIterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    async for served in _serve(context):
        yield served


@pytest.fixture
async def make_transport() -> AsyncIterator[Callable[..., HttpTransport]]:
    made: list[HttpTransport] = []

    def make(policy: AddressPolicy = LOOPBACK, **kwargs: object) -> HttpTransport:
        made.append(HttpTransport(policy, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for transport in made:
        await transport.close()


async def post(transport: HttpTransport, url: str, seconds: float = 2.0) -> Response:
    async with asyncio.timeout(HANG_GUARD):
        return await transport.send(Request(url, b"{}", {}, seconds))


class FakeDNS:
    """Answers every lookup with fixed addresses and counts the lookups."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return list(self.answers)


async def test_post_arrives_exactly_and_response_headers_are_lower_cased(
    receiver: Receiver, make_transport: Callable[..., HttpTransport]
) -> None:
    body = b'{"type": "delivered"}\n\x00\xff'
    headers = {"Content-Type": "application/json", "webhook-id": "msg_1", "User-Agent": USER_AGENT}
    async with asyncio.timeout(HANG_GUARD):
        response = await make_transport().send(Request(receiver.url("/hook"), body, headers, 2))

    assert response.status == 202
    assert response.headers["x-receiver-note"] == "Yes"
    assert all(key == key.lower() for key in response.headers)
    assert response.elapsed > 0
    [hit] = receiver.hits
    assert hit.body == body
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["webhook-id"] == "msg_1"
    assert hit.headers["User-Agent"] == USER_AGENT


async def test_keep_alive_connection_is_reused(
    receiver: Receiver, make_transport: Callable[..., HttpTransport]
) -> None:
    transport = make_transport()
    await post(transport, receiver.url("/hook"))
    await post(transport, receiver.url("/hook"))
    assert receiver.hits[0].peer_port == receiver.hits[1].peer_port


async def test_the_receivers_own_words_come_back_the_first_kib_of_them(
    receiver: Receiver, make_transport: Callable[..., HttpTransport]
) -> None:
    transport = make_transport()
    response = await post(transport, receiver.url("/refuse"))
    assert response.status == 400
    assert response.body_start == ("unknown event type ✗ " + "x" * 2000).encode()[:1024]
    assert (await post(transport, receiver.url("/hook"))).body_start == b""
    assert receiver.hits[0].peer_port == receiver.hits[1].peer_port  # the rest was read


async def test_redirect_is_returned_not_followed(
    receiver: Receiver, make_transport: Callable[..., HttpTransport]
) -> None:
    response = await post(make_transport(), receiver.url("/redirect"))
    assert response.status == 302
    assert response.headers["location"] == "/target"
    assert [hit.path for hit in receiver.hits] == ["/redirect"]


@pytest.mark.serial  # a wall-clock bound: alone on the machine in `make test`
async def test_slow_receiver_times_out_within_the_attempt_timeout(
    receiver: Receiver, make_transport: Callable[..., HttpTransport]
) -> None:
    started = time.monotonic()
    with pytest.raises(AttemptTimeout, match=r"^0\.3 s \(no response\)$"):
        await post(make_transport(), receiver.url("/slow"), seconds=0.3)
    assert time.monotonic() - started < 1.5


async def test_body_past_64_kib_fails_the_attempt_at_once(
    receiver: Receiver, make_transport: Callable[..., HttpTransport]
) -> None:
    # Reading the whole body would run into the timeout instead.
    transport = make_transport()
    with pytest.raises(ResponseTooLarge, match=r"^body over 64 KiB \(HTTP 200\)$"):
        await post(transport, receiver.url("/huge"), seconds=30)
    assert (await post(transport, receiver.url("/hook"))).status == 202


async def test_a_timeout_waiting_for_the_transports_own_limit_says_so(
    receiver: Receiver, make_transport: Callable[..., HttpTransport]
) -> None:
    transport = make_transport(limit=1)
    hanging = asyncio.ensure_future(post(transport, receiver.url("/slow"), seconds=3))
    await asyncio.sleep(0.2)
    with pytest.raises(AttemptTimeout, match=r"^0\.2 s \(waiting for a free slot\)$"):
        await post(transport, receiver.url("/hook"), seconds=0.2)
    hanging.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await hanging
    assert (await post(transport, receiver.url("/hook"))).status == 202


async def test_closed_port_is_a_connect_error(
    make_transport: Callable[..., HttpTransport],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError):
        await post(make_transport(), f"http://127.0.0.1:{port}/hook")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://127.1:{port}/hook",
        "http://2130706433:{port}/hook",
        "ftp://127.0.0.1:{port}/hook",
    ],
)
async def test_default_policy_refuses_loopback_before_connecting(
    url: str, receiver: Receiver, make_transport: Callable[..., HttpTransport]
) -> None:
    with pytest.raises(DestinationRefused):
        await post(make_transport(AddressPolicy()), url.format(port=receiver.port))
    assert receiver.hits == []


@pytest.mark.parametrize("policy", [LOOPBACK, AddressPolicy(allow_private=True)])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_allowed_by_network_or_development_mode(
    policy: AddressPolicy,
    host: str,
    receiver: Receiver,
    make_transport: Callable[..., HttpTransport],
) -> None:
    response = await post(make_transport(policy), receiver.url("/hook", host=host))
    assert response.status == 202


async def test_connects_only_to_checked_addresses_resolved_once(
    receiver: Receiver, make_transport: Callable[..., HttpTransport]
) -> None:
    dns = FakeDNS("10.0.0.1", "127.0.0.1")
    transport = make_transport(resolver=dns)
    for _ in range(2):
        response = await post(transport, receiver.url("/hook", host="hook.invalid"))
        assert response.status == 202
    assert dns.lookups == ["hook.invalid"]

    refusing = make_transport(resolver=FakeDNS("10.0.0.1", "169.254.169.254"))
    with pytest.raises(DestinationRefused, match=r"10\.0\.0\.1.*169\.254\.169\.254"):
        await post(refusing, receiver.url("/hook", host="hook.invalid"))
    assert len(receiver.hits) == 2


async def test_tls_with_test_ca(
    tls_receiver: Receiver,
    ca: trustme.CA,
    tmp_path: Path,
    make_transport: Callable[..., HttpTransport],
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    trusting = make_transport(ca_bundle=str(ca_file))
    for host in ("127.0.0.1", "localhost"):
        response = await post(trusting, tls_receiver.url("/hook", host=host, scheme="https"))
        assert response.status == 202

    with pytest.raises(TLSError):
        await post(make_transport(), tls_receiver.url("/hook", scheme="https"))
    assert len(tls_receiver.hits) == 2


def test_plain_and_tls_on_uvloop_as_in_a_ray_actor(ca: trustme.CA, tmp_path: Path) -> None:
    """Ray runs actors on uvloop, whose transports are not asyncio's classes."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    serve = contextlib.asynccontextmanager(_serve)

    async def scenario() -> list[Hit]:
        async with serve() as plain, serve(context) as tls:
            transport = HttpTransport(LOOPBACK, ca_bundle=str(ca_file))
            try:
                for url in [plain.url("/hook"), tls.url("/hook", scheme="https")] * 2:
                    assert (await post(transport, url)).status == 202
            finally:
                await transport.close()
            return plain.hits + tls.hits

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        hits = runner.run(scenario())
    assert len(hits) == 4
    assert hits[0].peer_port == hits[1].peer_port  # kept alive
    assert hits[2].peer_port == hits[3].peer_port


REFUSED = [
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "127.0.0.1",
    "::1",
    "fe80::1",
    "ff02::1",
    "224.0.0.1",
    "0.0.0.0",
    "::",
    "240.0.0.1",
    "255.255.255.255",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "64:ff9b::a00:1",
    "100.64.0.1",
    "fc00::1",
    "192.0.2.1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700::1", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_policy_refuses_non_public_addresses(address: str) -> None:
    with pytest.raises(DestinationRefused, match=r"address .* is "):
        AddressPolicy().check(ip_address(address))
    AddressPolicy(allow_private=True).check(ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_policy_allows_public_addresses(address: str) -> None:
    AddressPolicy().check(ip_address(address))


@pytest.mark.parametrize(
    ("networks", "address", "allowed"),
    [
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "192.168.1.1", False),
        ("127.0.0.0/8", "::ffff:127.0.0.1", True),
        ("127.0.0.0/8", "::1", False),
        ("::1/128", "::1", True),
    ],
)
def test_policy_allowed_networks(networks: str, address: str, allowed: bool) -> None:
    policy = AddressPolicy(allowed_networks=parse_networks(networks))
    if allowed:
        policy.check(ip_address(address))
    else:
        with pytest.raises(DestinationRefused):
            policy.check(ip_address(address))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("10.0.0.0/8", (ip_network("10.0.0.0/8"),)),
        (" 127.0.0.1 , ::1/128,", (ip_network("127.0.0.1/32"), ip_network("::1/128"))),
    ],
)
def test_parse_networks(text: str, expected: tuple[object, ...]) -> None:
    assert parse_networks(text) == expected


@pytest.mark.parametrize("text", ["10.0.0.0/33", "intranet", "10.0.0.1/8", "10.0.0.0/8,,bad"])
def test_parse_networks_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match=r"allowed networks: .* is not a CIDR network"):
        parse_networks(text)


async def test_mock_transport_with_sync_and_async_handlers() -> None:
    request = Request("https://example.com/hook", b"{}", {"webhook-id": "msg_1"}, 1)

    def sync_handler(got: Request) -> Response:
        return Response(200, {"x-id": got.headers["webhook-id"]}, 0.0)

    async def async_handler(got: Request) -> Response:
        await asyncio.sleep(0)
        return Response(503, {"retry-after": "5"}, 0.1, body_start=b"down for maintenance")

    async def failing_handler(got: Request) -> Response:
        raise AttemptTimeout("simulated")

    assert await MockTransport(sync_handler).send(request) == Response(200, {"x-id": "msg_1"}, 0)
    answered = await MockTransport(async_handler).send(request)
    assert (answered.status, answered.body_start) == (503, b"down for maintenance")
    failing = MockTransport(failing_handler)
    with pytest.raises(AttemptTimeout):
        await failing.send(request)
    await failing.close()
