"""1xx responses from a target to the client: 103 Early Hints and friends relayed to HTTP/1.1
clients (never to HTTP/1.0 ones), a target's 100 only to a client still waiting for one."""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import h11
import pytest
import trio
import trustme
from hypothesis import given
from hypothesis import strategies as st

import balancer.listeners.forward as forward_module
from balancer.config import Forward, HttpListener, HttpsListener
from balancer.listeners.interim import interim_bytes
from proto.http1 import strip_hop_by_hop
from tests.support.balancer_http import balancer, config, front, group, listener, statuses
from tests.support.targets import TargetServer
from tests.support.tls import client_context, write_pair

LINK = b"</style.css>; rel=preload; as=style"
# A 103 as a target may send it: a Link to preload, and hop-by-hop fields to be removed.
EARLY_HINTS = h11.InformationalResponse(
    status_code=103,
    headers=[
        (b"link", LINK),
        (b"connection", b"x-hop"),
        (b"x-hop", b"secret"),
        (b"keep-alive", b"timeout=5"),
    ],
    reason=b"Early Hints",
)
CONTINUE = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")


# The decision alone, on h11 state ---------------------------------------------------------


def client_state(version: bytes, *, expect: bool = False) -> h11.Connection:
    """The balancer's h11 state for a client that sent a POST head in HTTP/``version``."""
    conn = h11.Connection(h11.SERVER)
    head = b"POST / HTTP/%s\r\nHost: x\r\nContent-Length: 5\r\n" % version
    conn.receive_data(head + (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    return conn


def parse_interim(data: bytes) -> list[h11.InformationalResponse]:
    """The 1xx in ``data``, read as a client reads them."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
    conn.receive_data(data)
    found: list[h11.InformationalResponse] = []
    while isinstance(event := conn.next_event(), h11.InformationalResponse):
        found.append(event)
    return found


FIELD_NAMES = st.sampled_from(
    [
        b"link",
        b"x-hint",
        b"connection",
        b"keep-alive",
        b"te",
        b"upgrade",
        b"proxy-connection",
    ]
)
FRAMING_FIELDS = st.sampled_from([(b"content-length", b"3"), (b"transfer-encoding", b"chunked")])
FIELD_VALUES = st.sampled_from([b"</a.js>; rel=preload", b"x-hint", b"close", b"1"])


@given(
    status=st.integers(102, 199),
    fields=st.tuples(
        st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=6),
        st.lists(FRAMING_FIELDS, unique=True),  # a target's 1xx that h11 let through
    ).map(lambda parts: parts[0] + parts[1]),
    version=st.sampled_from([b"1.0", b"1.1"]),
    expect=st.booleans(),
)
def test_any_1xx_reaches_http_1_1_clients_without_hop_by_hop_fields_and_no_http_1_0_client(
    status: int, fields: list[tuple[bytes, bytes]], version: bytes, expect: bool
) -> None:
    conn = client_state(version, expect=expect)
    waiting = conn.they_are_waiting_for_100_continue
    data = interim_bytes(conn, h11.InformationalResponse(status_code=status, headers=fields))
    if version == b"1.0":
        assert data == b""
    else:
        (relayed,) = parse_interim(data)
        assert relayed.status_code == status
        # Nor framing fields: a 1xx has no body (RFC 9110 8.6, RFC 9112 6.1).
        assert list(relayed.headers) == [
            field
            for field in strip_hop_by_hop(fields)
            if field[0] not in (b"content-length", b"transfer-encoding")
        ]
    # Only a 100 answers Expect: the client's wait for one is what it was.
    assert conn.they_are_waiting_for_100_continue == waiting
    assert conn.our_state is h11.SEND_RESPONSE  # the final response can follow


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_a_100_goes_only_to_a_client_waiting_for_one_and_only_once(version: bytes) -> None:
    assert interim_bytes(client_state(version), CONTINUE) == b""  # it never asked
    conn = client_state(version, expect=True)
    first = interim_bytes(conn, CONTINUE)
    if version == b"1.0":  # an HTTP/1.0 Expect is ignored (RFC 9110 10.1.1)
        assert first == b""
        return
    assert [event.status_code for event in parse_interim(first)] == [100]
    assert interim_bytes(conn, CONTINUE) == b""  # a second one says nothing new
    assert interim_bytes(conn, EARLY_HINTS) != b""  # other 1xx still go


def test_a_client_that_started_its_body_waits_for_no_100() -> None:
    conn = client_state(b"1.1", expect=True)
    conn.receive_data(b"he")
    assert isinstance(conn.next_event(), h11.Data)
    assert interim_bytes(conn, CONTINUE) == b""


# Through the balancer, on real sockets ----------------------------------------------------


class TargetSide:
    """One connection at a test target: the balancer's request read with h11, answers
    written as the test says."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER)

    async def head(self) -> h11.Request:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                return event

    async def body(self) -> bytes:
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return body

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(event) or b"" for event in events))

    async def answer(self, body: bytes) -> None:
        """200 with ``body``; the connection then closes."""
        await self.send(
            h11.Response(status_code=200, headers=[("content-length", str(len(body)))]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )


@contextlib.asynccontextmanager
async def target(handler: Callable[[TargetSide], Awaitable[None]]) -> AsyncIterator[TargetServer]:
    """A target on 127.0.0.1 that runs ``handler`` on each connection."""

    async def serve(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                await handler(TargetSide(stream))

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        server = TargetServer("interim")
        server.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


class ClientSide:
    """A raw client connection to the balancer that can wait for a given answer."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.received = b""

    async def until(self, pattern: bytes) -> None:
        """Read until ``pattern`` (a regular expression) has arrived."""
        while not re.search(pattern, self.received, re.DOTALL):
            data = await self.stream.receive_some(65536)
            assert data, f"closed before {pattern!r}: {self.received!r}"
            self.received += data

    async def rest(self) -> bytes:
        """Everything until the balancer closes (requests here say Connection: close)."""
        while data := await self.stream.receive_some(65536):
            self.received += data
        return self.received


def post_head(length: int, *, expect: bool = False) -> bytes:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n" % length
    return head + (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n"


def interim_heads(answer: bytes) -> list[bytes]:
    """The 1xx heads in a raw answer, each as its bytes."""
    return re.findall(rb"HTTP/1\.1 1\d\d .*?\r\n\r\n", answer, re.DOTALL)


def assert_hints_relayed(answer: bytes) -> None:
    """The 103 came through once with its Link, without the hop-by-hop fields."""
    (hints,) = [head for head in interim_heads(answer) if head.startswith(b"HTTP/1.1 103 ")]
    assert b"link: " + LINK in hints.lower()
    for hop in (b"connection", b"x-hop", b"keep-alive"):
        assert b"\r\n" + hop + b":" not in hints.lower()


async def test_curl_shows_the_targets_103_before_its_200() -> None:
    async def hints_then_page(side: TargetSide) -> None:
        await side.head()
        await side.body()
        await side.send(EARLY_HINTS)
        await side.answer(b"page")

    async with (
        target(hints_then_page) as server,
        balancer(config([listener()], [group("web", server)])) as daemon,
    ):
        host, port = front(daemon)
        with trio.fail_after(20):
            done = await trio.run_process(
                ["curl", "-sv", "--http1.1", "--max-time", "10", f"http://{host}:{port}/"],
                capture_stdout=True,
                capture_stderr=True,
            )
    assert done.stdout == b"page"
    received = [line[2:] for line in done.stderr.decode().splitlines() if line.startswith("< ")]
    assert received.index("HTTP/1.1 103 Early Hints") < received.index("HTTP/1.1 200 ")
    lowered = [line.lower() for line in received]
    assert f"link: {LINK.decode()}" in lowered
    assert not any(line.startswith(("x-hop:", "keep-alive:")) for line in lowered)


async def test_an_http_1_0_client_gets_no_1xx() -> None:
    async def hints_then_page(side: TargetSide) -> None:
        await side.head()
        await side.body()
        await side.send(EARLY_HINTS, h11.InformationalResponse(status_code=102, headers=[]))
        await side.answer(b"page")

    async with (
        target(hints_then_page) as server,
        balancer(config([listener()], [group("web", server)])) as daemon,
    ):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
                answer = await ClientSide(stream).rest()
    assert statuses(answer) == [200]
    assert answer.endswith(b"\r\n\r\npage")


@pytest.mark.parametrize("tls", [False, True])
async def test_a_103_sent_while_the_body_uploads_reaches_the_client(
    tls: bool, tmp_path: Path
) -> None:
    """The target hints after the head, before it has the body: the client reads the 103
    before it sends the rest of its body (deadlocks if the 103 waits for the upload)."""

    async def hints_early(side: TargetSide) -> None:
        await side.head()
        await side.send(EARLY_HINTS)
        await side.answer(await side.body())

    ca = trustme.CA()
    lst: HttpListener | HttpsListener = listener()
    context: ssl.SSLContext | None = None
    if tls:
        lst = HttpsListener(
            name="front",
            host="127.0.0.1",
            port=0,
            default_action=Forward(target_group="web"),
            certificates=(write_pair(ca, tmp_path, "shop", "shop.example.com"),),
        )
        context = client_context(ca)
    async with (
        target(hints_early) as server,
        balancer(config([lst], [group("web", server)])) as daemon,
    ):
        with trio.fail_after(10):
            stream: trio.abc.Stream = await trio.open_tcp_stream(*front(daemon))
            if context is not None:
                stream = trio.SSLStream(stream, context, server_hostname="shop.example.com")
            async with stream:
                client = ClientSide(stream)
                await stream.send_all(post_head(10) + b"hello")
                await client.until(rb"HTTP/1\.1 103 .*?\r\n\r\n")
                await stream.send_all(b"world")
                answer = await client.rest()
    assert statuses(answer) == [103, 200]
    assert_hints_relayed(answer)
    assert answer.endswith(b"\r\n\r\nhelloworld")


async def test_a_103_in_pieces_does_not_stop_the_upload() -> None:
    """The first bytes of a head from the target may be a 1xx: the body still goes to it
    (cutting the upload there would leave the target waiting for a body that never comes)."""

    async def hints_in_pieces(side: TargetSide) -> None:
        await side.head()
        hints = side.conn.send(EARLY_HINTS) or b""
        await side.stream.send_all(hints[:12])
        await trio.sleep(0.05)  # so that the balancer most likely reads the halves apart
        await side.stream.send_all(hints[12:])
        await side.answer(await side.body())

    async with (
        target(hints_in_pieces) as server,
        balancer(config([listener()], [group("web", server)])) as daemon,
    ):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                client = ClientSide(stream)
                await stream.send_all(post_head(10) + b"hello")
                await client.until(rb"HTTP/1\.1 103 .*?\r\n\r\n")
                await stream.send_all(b"world")
                answer = await client.rest()
    assert statuses(answer) == [103, 200]
    assert answer.endswith(b"\r\n\r\nhelloworld")


async def test_a_103_does_not_end_the_wait_for_100_continue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hints but no 100 from the target: the balancer's own 100 still comes (a client that
    waits for it would otherwise wait for nothing)."""
    monkeypatch.setattr(forward_module, "EXPECT_CONTINUE_SECONDS", 0.05)

    async def hints_only(side: TargetSide) -> None:
        await side.head()
        await side.send(EARLY_HINTS)
        await side.answer(await side.body())

    async with (
        target(hints_only) as server,
        balancer(config([listener()], [group("web", server)])) as daemon,
    ):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                client = ClientSide(stream)
                await stream.send_all(post_head(5, expect=True))
                await client.until(rb"HTTP/1\.1 100 .*?\r\n\r\n")
                await stream.send_all(b"hello")
                answer = await client.rest()
    assert statuses(answer) == [103, 100, 200]
    assert answer.endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize("when", ["during_upload", "after_upload"])
async def test_the_targets_late_100_is_dropped_and_its_103_relayed(
    when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The balancer sent its own 100 (the target was silent); the target's 100 comes after
    it, with a 103: the client gets one 100 and the 103. ``during_upload``: they arrive
    while the body is still on its way (the client waits for the 103 before sending it);
    ``after_upload``: the target reads the whole body first."""
    monkeypatch.setattr(forward_module, "EXPECT_CONTINUE_SECONDS", 0.05)
    balancer_continued = trio.Event()

    async def late_continue(side: TargetSide) -> None:
        await side.head()
        if when == "during_upload":
            await balancer_continued.wait()
            await side.send(CONTINUE, EARLY_HINTS)
            body = await side.body()
        else:
            body = await side.body()
            await side.send(CONTINUE, EARLY_HINTS)
        await side.answer(body)

    async with (
        target(late_continue) as server,
        balancer(config([listener()], [group("web", server)])) as daemon,
    ):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                client = ClientSide(stream)
                await stream.send_all(post_head(5, expect=True))
                await client.until(rb"^HTTP/1\.1 100 .*?\r\n\r\n")
                balancer_continued.set()
                if when == "during_upload":
                    await client.until(rb"HTTP/1\.1 103 .*?\r\n\r\n")
                await stream.send_all(b"hello")
                answer = await client.rest()
    assert statuses(answer) == [100, 103, 200]
    assert_hints_relayed(answer)
    assert answer.endswith(b"\r\n\r\nhello")
