from __future__ import annotations

import datetime
import email.utils
import gc
import itertools
import socket
import ssl
import struct
import tracemalloc

import h11
import msgspec
import pytest
import trio
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from monitoring.httpserver import (
    BodyBudget,
    Draining,
    Refusal,
    Request,
    Response,
    UnsendableResponse,
    serve_http,
)
from monitoring.settings import HttpLimits
from tests.support.http import raw_exchange, read_response, request

FAST = HttpLimits(
    header_timeout_seconds=0.5,
    body_timeout_seconds=0.5,
    idle_timeout_seconds=0.5,
    write_timeout_seconds=0.5,
)


class Server:
    def __init__(
        self,
        nursery,
        handler,
        limits=FAST,
        max_body=1024,
        on_refusal=None,
        on_refused=None,
        budget=None,
    ):
        self.nursery = nursery
        self.budget = budget
        self.on_refusal = on_refusal
        self.on_refused = on_refused
        self.handler = handler
        self.limits = limits
        self.max_body = max_body
        self.draining = Draining()
        self.errors: list[BaseException] = []
        self.addr: tuple[str, int] = ("", 0)

    async def start(self):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.addr = listeners[0].socket.getsockname()
        await self.nursery.start(trio.serve_listeners, self._handle, listeners)
        return self

    async def _handle(self, stream):
        await serve_http(
            stream,
            self.handler,
            self.limits,
            client=("127.0.0.1", 0),
            draining=self.draining,
            on_error=self.errors.append,
            max_body_bytes=self.max_body,
            on_refusal=self.on_refusal,
            on_refused=self.on_refused,
            body_budget=self.budget,
        )


async def echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path == "/slow":
        await trio.sleep(0.3)
    return Response(200, request.method + b" " + request.target + b" " + request.body)


@pytest.fixture
async def server(nursery):
    return await Server(nursery, echo).start()


async def test_keep_alive_serves_several_requests_on_one_connection(server):
    stream = await trio.open_tcp_stream(*server.addr)
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        for i in range(3):
            body = f"n={i}".encode()
            data = conn.send(
                h11.Request(
                    method="POST",
                    target=f"/x?{i}",
                    headers=[("host", "t"), ("content-length", str(len(body)))],
                )
            )
            data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            status, _, got = await read_response(conn, stream)
            assert (status, got) == (200, f"POST /x?{i} n={i}".encode())
            conn.start_next_cycle()


async def test_pipelined_requests_are_answered_in_order(server):
    # Requests that arrive in one read are queued in order and answered one by one.
    reply = await raw_exchange(
        server.addr,
        b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz"
        b"GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(reply)
    conn.receive_data(b"")
    bodies = []
    for target in ("/a", "/b", "/c"):
        conn.send(h11.Request(method="GET", target=target, headers=[("host", "t")]))
        conn.send(h11.EndOfMessage())
        response = conn.next_event()
        assert isinstance(response, h11.Response)
        assert response.status_code == 200
        body = b""
        while isinstance(event := conn.next_event(), h11.Data):
            body += event.data
        bodies.append(body)
        if target != "/c":
            conn.start_next_cycle()
    assert bodies == [b"GET /a ", b"POST /b xyz", b"GET /c "]
    assert (b"connection", b"close") in response.headers


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Close\r\n\r\n",
    ],
)
async def test_a_client_that_does_not_keep_alive_is_answered_then_closed(server, head):
    reply = await raw_exchange(server.addr, head)  # returns once the server closes
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower().split(b"\r\n")
    assert body == b"GET / "


async def test_a_response_header_that_cannot_be_sent_is_not_sent(nursery):
    async def bad(request: Request) -> Response:
        return Response(200, b"x", headers=[("x-injected", "a\r\nset-cookie: b")])

    server = await Server(nursery, bad).start()
    client = _ScriptedStream([b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"])  # reads nothing back
    with pytest.raises(BaseExceptionGroup) as raised:
        async with trio.open_nursery() as inner:
            inner.start_soon(server._handle, client)
    assert raised.group_contains(UnsendableResponse)
    assert client.sent == b""


class _ScriptedStream(trio.abc.Stream):
    """A client that sends ``chunks`` one read at a time, then closes its side."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)
        self.sent = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += bytes(data)

    async def wait_send_all_might_not_block(self) -> None:
        return

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._chunks.pop(0) if self._chunks else b""

    async def aclose(self) -> None:
        return


async def test_chunked_body_is_reassembled(server):
    reply = await raw_exchange(
        server.addr,
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"POST /c abcde")


async def test_declared_oversized_body_is_refused_before_it_is_read(server):
    reply = await raw_exchange(
        server.addr, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"exceeds the limit of 1024" in reply


async def test_chunked_body_is_cut_off_at_the_limit(server):
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    reply = await raw_exchange(
        server.addr,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3,
    )
    assert reply.startswith(b"HTTP/1.1 413 ")


async def test_header_timeout_answers_408(server):
    reply = await raw_exchange(server.addr, b"GET / HTTP/1.1\r\nHost: t\r\n")
    assert reply.startswith(b"HTTP/1.1 408 ")


async def test_idle_connection_is_closed_after_the_idle_timeout(server):
    stream = await trio.open_tcp_stream(*server.addr)
    async with stream:
        with trio.fail_after(5):
            assert await stream.receive_some(10) == b""


async def test_oversized_headers_get_431(server):
    reply = await raw_exchange(
        server.addr, b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 431 ")


async def test_handler_exception_is_answered_500_and_reported(server):
    status, headers, _ = await request(server.addr, target="/boom")
    assert status == 500
    assert headers["connection"] == "close"
    assert [type(e) for e in server.errors] == [RuntimeError]
    assert (await request(server.addr, target="/ok"))[0] == 200


async def test_draining_closes_idle_connections_and_finishes_busy_ones(server):
    idle = await trio.open_tcp_stream(*server.addr)
    busy = await trio.open_tcp_stream(*server.addr)
    async with idle, busy:
        await busy.send_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await trio.sleep(0.05)
        server.draining.start()
        with trio.fail_after(2):
            assert await idle.receive_some(10) == b""
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/slow", headers=[("host", "t")]))
        status, headers, body = await read_response(conn, busy)
        assert (status, body) == (200, b"GET /slow ")
        assert headers["connection"] == "close"


async def test_head_has_no_body(server):
    reply = await raw_exchange(
        server.addr, b"HEAD /h HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"\r\n\r\n")


async def test_expect_100_continue(server):
    stream = await trio.open_tcp_stream(*server.addr)
    async with stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        with trio.fail_after(2):
            first = await stream.receive_some(100)
        assert first.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"hi")
        conn = h11.Connection(h11.CLIENT)
        conn.send(
            h11.Request(method="POST", target="/", headers=[("host", "t"), ("content-length", "2")])
        )
        conn.send(h11.Data(data=b"hi"))
        conn.send(h11.EndOfMessage())
        status, _, body = await read_response(conn, stream)
        assert (status, body) == (200, b"POST / hi")


async def test_client_that_never_reads_is_cut_off_by_the_write_timeout(nursery):
    big = b"x" * (64 << 20)

    async def huge(request: Request) -> Response:
        return Response(200, big)

    srv = await Server(nursery, huge).start()
    stream = await trio.open_tcp_stream(*srv.addr)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        with trio.fail_after(5):
            # Never read the body: the server gives up after its write timeout and closes.
            await trio.sleep(1.5)
        received = 0
        with trio.fail_after(10):
            while chunk := await stream.receive_some(1 << 20):
                received += len(chunk)
        assert received < len(big)


# ---------------------------------------------------------------------- refusals shaped by the app


class Shaper:
    """An ``on_refusal`` hook that records what it was given and answers in JSON."""

    def __init__(self, fail: bool = False) -> None:
        self.seen: list[Refusal] = []
        self.fail = fail

    def __call__(self, refusal: Refusal) -> Response:
        self.seen.append(refusal)
        if self.fail:
            raise RuntimeError("hook bug")
        body = f'{{"status": {refusal.status}, "limit": {refusal.max_body_bytes}}}'.encode()
        return Response(
            refusal.status,
            body,
            content_type="application/json",
            headers=[("x-shaped", "yes"), ("connection", "keep-alive")],
        )


async def test_on_refusal_shapes_413_for_a_declared_body(nursery):
    shaper = Shaper()
    server = await Server(nursery, echo, on_refusal=shaper).start()
    reply = await raw_exchange(
        server.addr,
        b"POST /q?x=1 HTTP/1.1\r\nHost: t\r\nX-Amz-Target: A.B\r\nContent-Length: 5000\r\n\r\n",
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"content-type: application/json" in head
    assert b"x-shaped: yes" in head
    assert b"connection: close" in head  # always closes
    assert b"keep-alive" not in head
    assert body == b'{"status": 413, "limit": 1024}'
    (refusal,) = shaper.seen
    assert (refusal.method, refusal.target) == (b"POST", b"/q?x=1")
    assert refusal.header(b"x-amz-target") == b"A.B"
    assert "exceeds the limit of 1024" in refusal.message


async def test_on_refusal_shapes_413_for_a_chunked_body(nursery):
    shaper = Shaper()
    server = await Server(nursery, echo, on_refusal=shaper).start()
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    reply = await raw_exchange(
        server.addr,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3,
    )
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert reply.endswith(b'{"status": 413, "limit": 1024}')
    assert shaper.seen[0].method == b"POST"


async def test_on_refusal_shapes_408_with_and_without_a_head(nursery):
    shaper = Shaper()
    server = await Server(nursery, echo, on_refusal=shaper).start()
    stalled_head = await raw_exchange(server.addr, b"POST / HTTP/1.1\r\nHost: t\r\n")
    stalled_body = await raw_exchange(
        server.addr, b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc"
    )
    for reply in (stalled_head, stalled_body):
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert reply.endswith(b'{"status": 408, "limit": 1024}')
    without, with_head = shaper.seen
    assert (without.method, without.target, without.headers) == (None, None, [])
    assert (with_head.method, with_head.target) == (b"POST", b"/b")
    assert with_head.header(b"content-length") == b"10"


async def test_a_failing_hook_is_reported_and_the_plain_answer_goes_out(nursery):
    server = await Server(nursery, echo, on_refusal=Shaper(fail=True)).start()
    reply = await raw_exchange(
        server.addr, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"exceeds the limit of 1024" in reply
    assert [str(e) for e in server.errors] == ["hook bug"]


async def test_a_hook_shapes_431_and_400_stays_plain(nursery):
    # A 431 is a client's request refused whole, as a 413 is: the application answers it in
    # its protocol's shape (the broker's fuzz test found a plain one reaching botocore).
    shaper = Shaper()
    server = await Server(nursery, echo, on_refusal=shaper).start()
    reply = await raw_exchange(
        server.addr, b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"x-shaped: yes" in reply
    assert [refusal.status for refusal in shaper.seen] == [431]
    reply = await raw_exchange(server.addr, b"GET / HTTP/1.1\r\nHost t\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert [refusal.status for refusal in shaper.seen] == [431]


async def test_every_request_the_server_refuses_itself_is_reported(nursery):
    refused: list[int] = []
    server = await Server(nursery, echo, on_refusal=Shaper(), on_refused=refused.append).start()
    for payload in (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: t\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: t\r\n\r\n",  # a version llhttp does not know: 505 still
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\n",  # stalls: 408
    ):
        await raw_exchange(server.addr, payload)
    await raw_exchange(server.addr, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    # The answered request is not one.
    assert refused == [413, 400, 431, 505, 505, 501, 400, 408]


async def test_a_failing_refusal_counter_is_reported_and_the_answer_still_goes_out(nursery):
    def broken(status: int) -> None:
        raise RuntimeError("counter bug")

    server = await Server(nursery, echo, on_refused=broken).start()
    reply = await raw_exchange(server.addr, b"GARBAGE\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert [str(e) for e in server.errors] == ["counter bug"]


# ---------------------------------------------------------------------- framing edge cases


def _responses(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of every final response in ``data``, parsed by h11 as a client."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    found: list[tuple[int, bytes]] = []
    while True:
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "t")]))
        conn.send(h11.EndOfMessage())
        event = conn.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = conn.next_event()
        if not isinstance(event, h11.Response):
            return found
        body = b""
        while isinstance(part := conn.next_event(), h11.Data):
            body += part.data
        found.append((event.status_code, body))
        if conn.their_state is not h11.DONE:
            return found
        conn.start_next_cycle()


async def _serve_script(chunks: list[bytes], max_body: int = 1024) -> bytes:
    client = _ScriptedStream(chunks)
    with trio.fail_after(5):
        await serve_http(
            client,
            echo,
            FAST,
            client=("127.0.0.1", 0),
            draining=Draining(),
            on_error=lambda exc: None,
            max_body_bytes=max_body,
        )
    return client.sent


PIPELINE = (
    b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz"
    b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nab\r\n1\r\nc\r\n0\r\nX-Trailer: dropped\r\n\r\n"
    b"GET /d?q=1 HTTP/1.1\r\nhOsT: t\r\nX-Padded:   v  \r\nConnection: close\r\n\r\n"
)
PIPELINE_ANSWERS = [
    (200, b"GET /a "),
    (200, b"POST /b xyz"),
    (200, b"POST /c abc"),
    (200, b"GET /d?q=1 "),
]


@given(cuts=st.sets(st.integers(min_value=1, max_value=len(PIPELINE) - 1), max_size=12))
@settings(max_examples=60, deadline=None)
def test_requests_are_the_same_however_the_bytes_are_split(cuts):
    bounds = [0, *sorted(cuts), len(PIPELINE)]
    chunks = [PIPELINE[a:b] for a, b in itertools.pairwise(bounds)]
    sent = trio.run(_serve_script, chunks)
    assert _responses(sent) == PIPELINE_ANSWERS


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        # Desync attempts llhttp refuses: both framings, two lengths, a bad chunk size.
        (
            b"POST / HTTP/1.1\r\nHost: t\r\n"
            b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        # RFC 9110 15.6.6: any major version but 1 is a 505, also those llhttp does not know.
        (b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505),
        (b"GET / HTTP/2.1\r\nHost: t\r\n\r\n", 505),
        (b"GET / HTTP/9.9\r\n\r\n", 505),
        (b"GET / HTTP/10.0\r\nHost: t\r\n\r\n", 400),  # no HTTP-version (one digit each)
        (b"GET / HTTP/1.1\r\nHost: t\r\n", 400),  # the client closed mid-head
    ],
)
async def test_ambiguous_or_malformed_requests_are_refused_and_closed(payload, status):
    sent = await _serve_script([payload])
    assert sent.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"connection: close" in sent.lower()


async def test_a_malformed_request_after_good_ones_is_refused_after_they_are_answered():
    sent = await _serve_script(
        [b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n"]
    )
    assert sent.startswith(b"HTTP/1.1 200 ")
    assert sent.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 400 " in sent


async def test_an_upgrade_request_is_answered_then_the_connection_closes():
    sent = await _serve_script(
        [
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
            b"GET /never HTTP/1.1\r\nHost: t\r\n\r\n"
        ]
    )
    assert _responses(sent) == [(200, b"GET /ws ")]
    assert b"/never" not in sent


async def test_a_head_that_trickles_in_past_the_limit_gets_431():
    # httptools hands a header over only once it is whole: the bound must hold before that.
    trickle = [b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: "] + [b"a" * 1000] * 40
    sent = await _serve_script(trickle)
    assert sent.startswith(b"HTTP/1.1 431 ")


async def test_trailers_count_against_the_body_limit():
    sent = await _serve_script(
        [
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
            + b"X-T: "
            + b"b" * 2000
            + b"\r\n\r\n"
        ]
    )
    assert sent.startswith(b"HTTP/1.1 413 ")


async def test_a_long_pipeline_split_inside_heads_is_served_whole():
    # Reads larger than the header limit that end inside a head must not count as that head.
    one = b"GET /p HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 150 + b"\r\n\r\n"
    stream = one * 400
    chunks = [stream[i : i + 20_000] for i in range(0, len(stream), 20_000)]
    chunks[-1] += b"GET /end HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    sent = await _serve_script(chunks)
    assert _responses(sent) == [(200, b"GET /p ")] * 400 + [(200, b"GET /end ")]


async def test_a_client_pipelining_many_requests_does_not_hold_the_event_loop(nursery):
    # The requests are all there at once and every answer fits the socket buffer, so no read
    # or write has to wait: the server must still yield between requests, or another client
    # would wait until the whole pipeline was served.
    served: list[bytes] = []
    all_served = trio.Event()

    async def record(request: Request) -> Response:
        served.append(request.target)  # never yields
        if len(served) == 301:
            all_served.set()
        return Response(200, b"ok")

    srv = await Server(nursery, record).start()
    busy = await trio.open_tcp_stream(*srv.addr)
    other = await trio.open_tcp_stream(*srv.addr)
    async with busy, other:
        pipeline = b"GET /busy HTTP/1.1\r\nHost: t\r\n\r\n" * 300
        await busy.send_all(pipeline)
        await other.send_all(b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n")
        with trio.fail_after(5):
            await all_served.wait()
    assert served.count(b"/busy") == 300
    assert served.index(b"/other") < 300  # served while the pipeline was, not after it


# ---------------------------------------------------------------------- hostile streams


async def test_an_endless_chunk_extension_is_bounded_and_never_holds_the_event_loop(nursery):
    # One chunk whose extension never ends: llhttp reads it, the body bound never sees it.
    served: list[bytes] = []

    async def record(request: Request) -> Response:
        served.append(request.target)
        return Response(200, b"ok")

    srv = await Server(nursery, record, max_body=4 << 20).start()
    answered_meanwhile = False
    hostile = await trio.open_tcp_stream(*srv.addr)
    async with hostile:
        await hostile.send_all(
            b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1;e="
        )
        sent = 0
        with trio.fail_after(20):
            try:
                while sent < 64 << 20:  # bounded; the server must stop it far earlier
                    await hostile.send_all(b"e" * 65536)
                    sent += 65536
                    if sent == 1 << 20:  # mid-stream: does anyone else get served?
                        other = await request(srv.addr, target="/other")
                        answered_meanwhile = other[0] == 200
            except trio.BrokenResourceError:
                pass  # the server closed after its 413
            answer = b""
            with trio.move_on_after(2):
                while chunk := await hostile.receive_some(65536):
                    answer += chunk
    assert answered_meanwhile
    # refused past head + twice the body limit + a framing allowance (~8 MiB), then at most
    # 8 MiB more read and dropped while the 413 is given a chance to be read
    assert sent < 20 << 20
    assert served == [b"/other"]
    assert answer.startswith(b"HTTP/1.1 413 ") or answer == b""  # the reset may beat it


async def test_an_upgrade_request_with_a_body_is_refused_not_run_without_it():
    # llhttp ends an Upgrade request at its head: the body would be lost, the action run empty.
    sent = await _serve_script(
        [
            b"POST /x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        ]
    )
    assert sent.startswith(b"HTTP/1.1 400 ")
    assert b"POST /x" not in sent


async def test_an_empty_line_between_keep_alive_requests_is_ignored(server):
    stream = await trio.open_tcp_stream(*server.addr)
    async with stream:
        received = b""
        with trio.fail_after(5):
            await stream.send_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
            while b"GET /a " not in received:
                received += await stream.receive_some(65536)
            await stream.send_all(b"\r\n")
            await trio.sleep(0.1)  # its own read, as the empty line of a separate write
            await stream.send_all(b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            while chunk := await stream.receive_some(65536):
                received += chunk
    assert _responses(received) == [(200, b"GET /a "), (200, b"GET /b ")]


async def test_a_steady_slow_reader_gets_a_response_longer_than_the_write_timeout(nursery):
    # The write timeout bounds a pause in reading, not the whole transfer: a large answer to
    # a client that reads steadily must arrive whole (ReceiveMessage: else it is lost in flight).
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the loopback buffers hold
    limits = HttpLimits(write_timeout_seconds=1.0, idle_timeout_seconds=5)

    async def huge(request: Request) -> Response:
        return Response(200, big)

    srv = await Server(nursery, huge, limits=limits).start()
    stream = await trio.open_tcp_stream(*srv.addr)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        received = bytearray()
        with trio.fail_after(60):
            while chunk := await stream.receive_some(512 * 1024):
                received += chunk
                await trio.sleep(0.1)  # ~5 MB/s: several seconds in all, no long pause
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == big


async def test_a_client_still_sending_a_refused_body_reads_the_413_not_a_reset(nursery):
    # http.client sends the whole body before it reads: a close with its bytes unread would
    # reset the connection, and the reset discards the 413 waiting in the client's buffer.
    srv = await Server(nursery, echo, max_body=1024).start()
    stream = await trio.open_tcp_stream(*srv.addr)
    async with stream:
        body = b"b" * (2 << 20)
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        with trio.fail_after(10):
            await stream.send_all(body)
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_an_unknown_transfer_coding_is_not_implemented():
    sent = await _serve_script(
        [
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        ]
    )
    assert sent.startswith(b"HTTP/1.1 501 ")


# ---------------------------------------------------------------------- the client, watched


class PeerObserver:
    """A handler that watches its client: ``/wait`` until it goes, ``/hold`` until released."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.gone = trio.Event()
        self.release = trio.Event()
        self.gone_nowait: list[bool] = []
        self.returned_from_wait = False

    async def handle(self, request: Request) -> Response:
        peer = request.peer
        assert peer is not None
        self.gone_nowait.append(peer.gone_nowait())
        self.entered.set()
        if request.path == "/wait":
            await peer.wait_gone()
            self.gone_nowait.append(peer.gone_nowait())
            self.gone.set()
        elif request.path == "/hold":
            await self.release.wait()
            self.gone_nowait.append(peer.gone_nowait())
            with trio.move_on_after(0.2):  # a client still there: never seen gone
                await peer.wait_gone()
                self.returned_from_wait = True
        return Response(200, request.path.encode())


def http_get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nhost: t\r\n\r\n".encode()


def close_with_reset(sock: trio.socket.SocketType) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_handler_sees_its_client_go(nursery, how):
    observer = PeerObserver()
    server = await Server(nursery, observer.handle).start()
    with trio.socket.socket() as sock, trio.fail_after(10):
        await sock.connect(server.addr)
        await sock.send(http_get("/wait"))
        await observer.entered.wait()
        if how == "reset":
            close_with_reset(sock)
        else:
            sock.close()  # FIN
        await observer.gone.wait()
    assert observer.gone_nowait == [False, True]
    assert server.errors == []


async def test_a_live_client_is_never_seen_gone_and_gets_its_answer(nursery):
    observer = PeerObserver()
    server = await Server(nursery, observer.handle).start()
    stream = await trio.open_tcp_stream(*server.addr)
    async with stream:
        await stream.send_all(http_get("/hold"))
        with trio.fail_after(10):
            await observer.entered.wait()
            observer.release.set()
            conn = h11.Connection(h11.CLIENT)
            conn.send(h11.Request(method="GET", target="/hold", headers=[("host", "t")]))
            conn.send(h11.EndOfMessage())
            status, _, body = await read_response(conn, stream)
    assert (status, body) == (200, b"/hold")
    assert observer.gone_nowait == [False, False]
    assert not observer.returned_from_wait


@pytest.mark.parametrize("buffered", ["in the parser", "in the kernel"])
async def test_a_client_that_pipelined_its_next_request_is_not_seen_gone(nursery, buffered):
    # Its next request's bytes are all the server could read: they cannot tell it anything,
    # and they must be left for the next request's read.
    observer = PeerObserver()
    server = await Server(nursery, observer.handle).start()
    stream = await trio.open_tcp_stream(*server.addr)
    async with stream:
        if buffered == "in the parser":
            await stream.send_all(http_get("/hold") + http_get("/next"))
        else:
            await stream.send_all(http_get("/hold"))
        with trio.fail_after(10):
            await observer.entered.wait()
            if buffered == "in the kernel":
                await stream.send_all(http_get("/next"))
                await trio.sleep(0.05)  # loopback: there by now, not read by the server
            observer.release.set()
            received = b""
            while received.count(b"HTTP/1.1 200") < 2:
                received += await stream.receive_some(65536)
    assert received.index(b"/hold") < received.index(b"/next")
    assert observer.gone_nowait[:2] == [False, False]
    assert not observer.returned_from_wait


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_handler_sees_its_tls_client_go(nursery, tmp_path, how):
    # Seen at the TCP level, under TLS: a reset, or a close with no close_notify first.
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    observer = PeerObserver()
    server = Server(nursery, observer.handle)

    async def handle_tls(stream):
        tls = trio.SSLStream(stream, server_context, server_side=True, https_compatible=True)
        await tls.do_handshake()
        await Server._handle(server, tls)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, handle_tls, listeners)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    transport = await trio.open_tcp_stream(*listeners[0].socket.getsockname())
    tls = trio.SSLStream(transport, client_context, server_hostname="127.0.0.1")
    with transport.socket, trio.fail_after(10):
        await tls.send_all(http_get("/wait"))
        await observer.entered.wait()
        if how == "reset":
            close_with_reset(transport.socket)
        else:
            transport.socket.close()  # FIN, without TLS's close_notify
        await observer.gone.wait()
    assert observer.gone_nowait == [False, True]


@pytest.mark.parametrize(
    "hosts",
    [
        [b"a.example", b"b.example"],  # RFC 9112 3.2: more than one Host line
        [b"a/b"],
        [b"a?b"],
        [b"::1:19904"],  # an IPv6 literal needs brackets (RFC 3986 3.2.2)
        [b"[::1"],
        [b"x:99999"],
        [b"[1::2::3]"],
    ],
)
async def test_a_host_that_is_no_single_authority_is_a_400(server, hosts):
    head = b"".join(b"Host: " + host + b"\r\n" for host in hosts)
    reply = await raw_exchange(server.addr, b"GET / HTTP/1.1\r\n" + head + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:60]
    assert b"GET /" not in reply  # the handler never saw it


async def test_every_answer_carries_a_date(server):
    reply = await raw_exchange(
        server.addr, b"GET /d HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 200 ")
    (date,) = [
        line.split(b":", 1)[1].strip()
        for line in reply.split(b"\r\n\r\n")[0].split(b"\r\n")
        if line.lower().startswith(b"date:")
    ]
    sent = email.utils.parsedate_to_datetime(date.decode())
    assert sent.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.UTC) - sent).total_seconds()) < 120


async def test_an_absolute_form_target_is_served_as_its_path_and_host(nursery):
    seen: list[Request] = []

    async def record(request: Request) -> Response:
        seen.append(request)
        return Response(200, request.target)

    srv = await Server(nursery, record).start()
    reply = await raw_exchange(
        srv.addr,
        b"POST http://user@broker.test:9324/000000000000/q?x=1 HTTP/1.1\r\n"
        b"Host: other.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"\r\n\r\n/000000000000/q?x=1")
    (request,) = seen
    assert request.path == "/000000000000/q"
    assert [v for n, v in request.headers if n == b"host"] == [b"broker.test:9324"]


@pytest.mark.parametrize(
    "target", [b"*", b"broker.test:443", b"http:///nohost", b"ftp://h/x", b"http://h:99999/"]
)
async def test_a_target_that_is_no_path_or_http_url_is_a_400(server, target):
    reply = await raw_exchange(
        server.addr, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:60]
    assert b"GET " not in reply  # the handler never saw it


async def test_a_closing_answer_is_a_half_close_that_reads_what_the_client_still_sends(server):
    # RFC 9112 §9.6: a full close with the client's next bytes unread sends RST, which on a
    # real network can reach the client before the answer and make it drop the answer.
    stream = await trio.open_tcp_stream(*server.addr)
    async with stream:
        with trio.fail_after(5):
            await stream.send_all(b"GET /first HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some(65536):  # until the server's FIN
                reply += chunk
            assert reply.endswith(b"GET /first ")
            for _ in range(3):  # a closed socket would answer these with RST, then EPIPE
                await stream.send_all(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
                await trio.sleep(0.05)


async def test_a_client_gone_before_its_refusal_is_not_a_handler_error(nursery):
    """A client that sends part of a body (or too big a head) and closes: the refusal's
    half-close finds it gone, which is the client's doing, not a bug to count (found by a
    report-only hunt: trio's BrokenResourceError from send_eof reached on_error)."""
    server = await Server(nursery, echo).start()
    for sent in (
        b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab",
        b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"y" * 100_000 + b"\r\n\r\n",
    ):
        client = socket.create_connection(server.addr)
        client.sendall(sent)
        await trio.sleep(0.1)
        client.close()
    await trio.sleep(FAST.body_timeout_seconds + 0.5)  # every refusal made and lingered on
    assert server.errors == []


@pytest.mark.parametrize("how", ["stalls", "closes"])
async def test_a_connection_that_ends_mid_body_frees_its_body_at_once(nursery, how):
    # The parser and llhttp refer to each other: the body being received stayed in a cycle
    # after its connection ended, until the cyclic GC's oldest generation ran, which the
    # broker runs seldom. Clients sending large bodies and going away grew it without bound.
    ended = trio.Event()

    class Watched(Server):
        async def _handle(self, stream):
            await super()._handle(stream)
            ended.set()  # serve_http is done with the connection

    server = await Watched(nursery, echo, max_body=4 << 20).start()
    partial = 2 << 20
    payload = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (4 << 20)
    payload += b"x" * partial
    gc.disable()  # what the broker's thresholds make of a few large requests
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        if how == "stalls":  # answered 408 after the body timeout, then closed
            answer = await raw_exchange(server.addr, payload)
            assert answer.startswith(b"HTTP/1.1 408 ")
        else:  # the client half-closes mid-body: 400, then closed
            with trio.fail_after(10):
                stream = await trio.open_tcp_stream(*server.addr)
                async with stream:
                    await stream.send_all(payload)
                    await stream.send_eof()
                    answer = b""
                    while chunk := await stream.receive_some(65536):
                        answer += chunk
            assert answer.startswith(b"HTTP/1.1 400 ")
        with trio.fail_after(10):
            await ended.wait()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert held < partial // 2, held


# ---------------------------------------------------------------------- the listener's body budget


def test_a_reservation_takes_what_fits_and_gives_everything_back_once():
    budget = BodyBudget(100)
    with budget.reservation() as first, budget.reservation() as second:
        assert first.take(60)
        assert not second.take(41)  # refused whole: nothing reserved
        assert budget.held == 60
        assert second.take(40)
        assert not first.take(1)
        first.give_back(10)
        assert (budget.held, first.held, second.held) == (90, 50, 40)
        first.close()
        first.close()  # again: nothing more to give
        assert budget.held == 40
        budget.limit = 30  # lowered (a reload): what is held stays, nothing new fits
        assert not first.take(1)
    assert budget.held == 0


def test_a_reservation_left_by_an_exception_gives_everything_back():
    budget = BodyBudget(100)

    def connection() -> None:
        with budget.reservation() as reservation:
            assert reservation.take(70)
            raise RuntimeError("the connection's task failed")

    with pytest.raises(RuntimeError):
        connection()
    assert budget.held == 0


class Ended(Server):
    """A server that tells when serve_http is done with each connection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ended = 0

    async def _handle(self, stream):
        try:
            await super()._handle(stream)
        finally:
            self.ended += 1

    async def until(self, predicate):
        with trio.fail_after(10):
            while not predicate():  # noqa: ASYNC110 - bounded poll of an internal count
                await trio.sleep(0.01)


def post(length: int, extra: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: t\r\n%sContent-Length: %d\r\n\r\n" % (extra, length)


async def test_a_declared_body_without_room_is_refused_503_before_it_is_read(nursery):
    refused: list[int] = []
    budget = BodyBudget(3000)
    server = await Ended(
        nursery, echo, max_body=2048, on_refused=refused.append, budget=budget
    ).start()
    holder = await trio.open_tcp_stream(*server.addr)
    await holder.send_all(post(2000) + b"x" * 1900)  # the rest of its body is still to come
    await server.until(lambda: budget.held == 1900)  # what arrived, not what was declared
    # 1900 + 1101 does not fit: answered before a byte of the body is sent, and no 100 Continue.
    reply = await raw_exchange(server.addr, post(1101, b"Expect: 100-continue\r\n"))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"100 Continue" not in head
    assert b"connection: close" in head
    assert b"request bodies" in body
    assert refused == [503]
    assert budget.held == 1900
    # What fits is served while the first one holds its part.
    reply = await raw_exchange(server.addr, post(1000, b"Connection: close\r\n") + b"y" * 1000)
    assert reply.startswith(b"HTTP/1.1 200 ")
    await holder.send_all(b"x" * 100)
    answer = b""
    with trio.fail_after(10):
        while len(answer.partition(b"\r\n\r\n")[2]) < len(b"POST / ") + 2000:
            answer += await holder.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert budget.held == 0  # answered: given back, with the connection still open
    await holder.aclose()


async def test_a_declared_length_never_sent_holds_nothing(nursery):
    """A client that declares 4 MiB and sends nothing cannot fill the budget by itself."""
    budget = BodyBudget(3000)
    server = await Ended(nursery, echo, max_body=2048, budget=budget).start()
    idle = [await trio.open_tcp_stream(*server.addr) for _ in range(3)]
    for stream in idle:
        await stream.send_all(post(2000))
    reply = await raw_exchange(server.addr, post(2000, b"Connection: close\r\n") + b"y" * 2000)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert budget.held == 0
    for stream in idle:
        await stream.aclose()


async def test_a_body_that_outgrows_the_room_is_refused_once_it_no_longer_fits(nursery):
    budget = BodyBudget(2500)
    server = await Ended(nursery, echo, max_body=4096, budget=budget).start()
    stream = await trio.open_tcp_stream(*server.addr)
    await stream.send_all(post(2000) + b"x" * 1000)
    await server.until(lambda: budget.held == 1000)
    other = await raw_exchange(server.addr, post(400, b"Connection: close\r\n") + b"y" * 400)
    assert other.startswith(b"HTTP/1.1 200 ")
    holder = await trio.open_tcp_stream(*server.addr)
    await holder.send_all(post(1500) + b"z" * 1200)  # fits beside the 1000 that arrived
    await server.until(lambda: budget.held == 2200)
    await stream.send_all(b"x" * 1000)  # 3200 > 2500: refused as it arrives
    with trio.fail_after(10):
        reply = b""
        while data := await stream.receive_some(65536):
            reply += data
    assert reply.startswith(b"HTTP/1.1 503 ")
    assert b"connection: close" in reply
    await stream.aclose()
    await holder.aclose()
    await server.until(lambda: server.ended == 3)
    assert budget.held == 0


async def test_a_chunked_body_reserves_as_it_grows_and_is_refused_when_it_no_longer_fits(nursery):
    refused: list[int] = []
    budget = BodyBudget(1500)
    server = await Ended(
        nursery, echo, max_body=4096, on_refusal=Shaper(), on_refused=refused.append, budget=budget
    ).start()
    chunk = b"200\r\n" + b"x" * 512 + b"\r\n"
    stream = await trio.open_tcp_stream(*server.addr)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    await stream.send_all(chunk * 2)
    await server.until(lambda: budget.held == 1024)
    await stream.send_all(chunk)  # 1536 > 1500
    with trio.fail_after(10):
        reply = b""
        while data := await stream.receive_some(65536):
            reply += data
    await stream.aclose()
    assert reply.startswith(b"HTTP/1.1 503 ")
    assert b"connection: close" in reply
    assert reply.endswith(b'{"status": 503, "limit": 4096}')  # the application shapes it
    assert refused == [503]
    await server.until(lambda: server.ended == 1)
    assert budget.held == 0


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize(
    "ending", ["answered", "reset", "closed", "body_timeout", "pipelined_unanswered", "too_large"]
)
async def test_the_budget_is_whole_again_however_a_connection_ends(nursery, ending):
    budget = BodyBudget(1 << 20)
    gate = trio.Event()

    async def gated(request: Request) -> Response:
        if request.path == "/gate":
            await gate.wait()
        return await echo(request)

    server = await Ended(nursery, gated, max_body=64 << 10, budget=budget).start()
    client = socket.create_connection(server.addr)
    client.setblocking(False)
    try:
        if ending == "answered":
            client.sendall(post(5000, b"Connection: close\r\n") + b"x" * 5000)
        elif ending == "pipelined_unanswered":  # the first is handled, the second waits
            first = post(5000).replace(b"POST / ", b"POST /gate ")
            client.sendall(first + b"x" * 5000 + post(6000) + b"y" * 6000)
        elif ending == "too_large":  # one held, then a 413 on the same connection
            client.sendall(post(5000) + b"x" * 5000 + post(1 << 20))
        else:
            client.sendall(post(50_000) + b"x" * 20_000)
            await server.until(lambda: budget.held == 20_000)
        if ending in ("reset", "pipelined_unanswered"):
            if ending == "pipelined_unanswered":
                await server.until(lambda: budget.held == 11_000)
            _reset(client)
            gate.set()  # the first one's answer finds the client gone; the second is dropped
        elif ending == "closed":
            client.close()
        await server.until(lambda: server.ended == 1)  # body_timeout: the 408 ends it
    finally:
        client.close()
    assert budget.held == 0


async def test_the_budget_is_whole_again_when_the_connection_is_cancelled_in_its_handler(nursery):
    budget = BodyBudget(1 << 20)
    handling = trio.Event()

    async def stuck(request: Request) -> Response:
        handling.set()
        await trio.sleep_forever()
        raise AssertionError

    async with trio.open_nursery() as scope_nursery:
        server = await Ended(scope_nursery, stuck, max_body=64 << 10, budget=budget).start()
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(*server.addr)
            await stream.send_all(post(7000) + b"x" * 7000)
            await handling.wait()
        assert budget.held == 7000  # the handler has the body: still held
        scope_nursery.cancel_scope.cancel()  # the daemon's frame cancels its connections
    assert server.ended == 1
    assert budget.held == 0
    await stream.aclose()


async def test_a_failing_handler_gives_its_body_back(nursery):
    budget = BodyBudget(1 << 20)
    server = await Ended(nursery, echo, max_body=64 << 10, budget=budget).start()
    reply = await raw_exchange(
        server.addr, b"POST /boom HTTP/1.1\r\nHost: t\r\nContent-Length: 3000\r\n\r\n" + b"z" * 3000
    )
    assert reply.startswith(b"HTTP/1.1 500 ")
    await server.until(lambda: server.ended == 1)
    assert budget.held == 0


# ---------------------------------------------------------------------- the body's minimum rate


@pytest.fixture
def lazy_clock():
    # Real I/O on 127.0.0.1 finishes well within 0.1 s of real time; only then does the
    # clock jump to the next deadline, so the clients below wait in virtual seconds.
    return trio.testing.MockClock(autojump_threshold=0.1)


SLOW_BODY = HttpLimits(
    header_timeout_seconds=10,
    body_timeout_seconds=10,
    idle_timeout_seconds=10,
    write_timeout_seconds=10,
    min_body_rate_bytes_per_second=100,
)


async def test_a_body_dripped_below_the_minimum_rate_gets_408_though_it_never_pauses_long(
    nursery, lazy_clock
):
    # The slow-POST attack: one byte every 4 s never pauses as long as the 10 s body timeout,
    # and without a minimum rate held the connection (and its body's reservation of the
    # budget) until the declared length had dripped in. mod_reqtimeout's body=10,MinRate=100:
    # the body had 10 s, plus one for every 100 bytes received.
    refused: list[int] = []
    budget = BodyBudget(1 << 20)
    server = await Ended(
        nursery,
        echo,
        limits=SLOW_BODY,
        max_body=4096,
        on_refusal=Shaper(),
        on_refused=refused.append,
        budget=budget,
    ).start()
    async with await trio.open_tcp_stream(*server.addr) as stream:
        await stream.send_all(post(3000) + b"x")
        await server.until(lambda: budget.held == 1)
        reply = b""
        drips = 0
        while not reply and drips < 30:  # 30 drips: 120 s, far past the 10.3 s the rate allows
            with trio.move_on_after(4):  # < body_timeout_seconds
                reply = await stream.receive_some(65536)
            if not reply:
                await stream.send_all(b"x")
                drips += 1
        assert reply, f"still receiving the body after {drips} drips"
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                reply += data
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert reply.endswith(b'{"status": 408, "limit": 4096}')  # the application shapes it
    assert b"connection: close" in reply
    assert drips < 30
    assert refused == [408]
    await server.until(lambda: server.ended == 1)
    assert budget.held == 0


@pytest.mark.parametrize("min_rate", [50, 0])
async def test_a_body_above_the_minimum_rate_finishes_past_the_body_timeout(
    nursery, lazy_clock, min_rate
):
    # 1500 bytes at 100 bytes a second: 15 s, longer than the 10 s body timeout and more than
    # 10 s x 50 bytes a second. The rate is met, and no pause is as long as the timeout; with
    # the rate off (0) only pauses count, as before.
    limits = msgspec.structs.replace(SLOW_BODY, min_body_rate_bytes_per_second=min_rate)
    budget = BodyBudget(1 << 20)
    server = await Ended(nursery, echo, limits=limits, max_body=4096, budget=budget).start()
    async with await trio.open_tcp_stream(*server.addr) as stream:
        await stream.send_all(post(1500, b"Connection: close\r\n"))
        for _ in range(15):
            await trio.sleep(1)
            await stream.send_all(b"y" * 100)
        reply = b""
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                reply += data
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"POST / " + b"y" * 1500)
    await server.until(lambda: server.ended == 1)
    assert budget.held == 0


async def test_a_body_sent_fast_may_not_then_pause_on_the_credit_it_earned(nursery, lazy_clock):
    # 2000 bytes at once earn 20 s past the 10 s; the pause rule still ends a silence of 10 s.
    refused: list[int] = []
    server = await Ended(
        nursery, echo, limits=SLOW_BODY, max_body=4096, on_refused=refused.append
    ).start()
    async with await trio.open_tcp_stream(*server.addr) as stream:
        await stream.send_all(post(3000))
        await trio.sleep(1)
        await stream.send_all(b"z" * 2000)
        reply = b""
        with trio.fail_after(20):
            while data := await stream.receive_some(65536):
                reply += data
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert refused == [408]
