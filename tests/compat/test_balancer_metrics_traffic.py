"""The ALB metric set read back from the admin ``/metrics`` endpoint after real traffic.

tests/balancer/listeners/test_http_metrics.py drives the counters directly; here real HTTP
and HTTPS clients go through a running balancer to a real target, and the numbers come back
through the admin listener's text exposition, parsed by prometheus_client's own parser.
Every count asserted is one the test controls exactly (connections it opened, requests it
sent, bytes it wrote and read); timings are only bounded from below, by a target that waits
before it answers, never from above.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable

import h11
import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from balancer.config import BalancerConfig, HttpsListener, ListenerTimeouts
from monitoring import fastio
from tests.support.balancer_http import balancer, config, group, listener
from tests.support.daemons import address
from tests.support.http import request
from tests.support.targets import Reply, Seen, TargetServer, echo, running_targets
from tests.support.tls import client_context, write_pair

pytestmark = pytest.mark.slow

SLOW_SECONDS = 0.3  # what the target waits before answering /slow: a floor, never a ceiling
CONNECTIONS = 3
BODY = b"x" * 1500

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def target_handler(seen: Seen, server: TargetServer) -> Reply | str:
    if seen.target.startswith("/slow"):
        await trio.sleep(SLOW_SECONDS)
    return await echo(seen, server)


async def scrape(admin: tuple[str, int]) -> Samples:
    """Every sample of the admin endpoint's text exposition, by name and labels."""
    status, _, body = await request(admin, target="/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}"
    return samples[key]


async def wait_scrape(
    admin: tuple[str, int], done: Callable[[Samples], bool], *, limit: float = 10
) -> Samples:
    """Scrape until ``done`` holds (the balancer accounts a connection after it closes)."""
    with trio.fail_after(limit):
        while True:
            samples = await scrape(admin)
            if done(samples):
                return samples
            await trio.sleep(0.02)  # nothing to wait on: the scrape itself is under test


class CountingStream:
    """A client stream that counts the bytes written to and read from the balancer."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.sent = 0
        self.received = 0

    async def exchange(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        conn = h11.Connection(h11.CLIENT)
        headers = [("host", "metrics.example"), ("content-length", str(len(body)))]
        data = conn.send(h11.Request(method=method, target=target, headers=headers))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        with trio.fail_after(10):
            await self.stream.send_all(data)
            self.sent += len(data)
            status, payload = 0, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await self.stream.receive_some(65536)
                    self.received += len(chunk)
                    conn.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    payload += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return status, payload
                else:
                    raise AssertionError(f"unexpected {event!r}")


Opener = Callable[[tuple[str, int]], contextlib.AbstractAsyncContextManager[CountingStream]]


def plain_opener(addr: tuple[str, int]) -> contextlib.AbstractAsyncContextManager[CountingStream]:
    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[CountingStream]:
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            yield CountingStream(stream)

    return opened()


def tls_opener(context: ssl.SSLContext) -> Opener:
    def opener(addr: tuple[str, int]) -> contextlib.AbstractAsyncContextManager[CountingStream]:
        @contextlib.asynccontextmanager
        async def opened() -> AsyncIterator[CountingStream]:
            tcp = await trio.open_tcp_stream(*addr)
            stream = trio.SSLStream(tcp, context, server_hostname="metrics.example")
            async with stream:
                with trio.fail_after(10):
                    await stream.do_handshake()
                yield CountingStream(stream)

        return opened()

    return opener


@contextlib.asynccontextmanager
async def setup(tmp_path, protocol: str) -> AsyncIterator[tuple[tuple[str, int], Opener, object]]:
    """A balancer with one listener of ``protocol`` named ``front``, a target, an opener."""
    target = TargetServer("a", target_handler)
    async with running_targets(target):
        if protocol == "https":
            ca = trustme.CA()
            cert = write_pair(ca, tmp_path, "metrics", "metrics.example")
            front = HttpsListener(
                name="front",
                host="127.0.0.1",
                port=0,
                certificates=(cert,),
                default_action=listener().default_action,
                timeouts=ListenerTimeouts(),
            )
            opener: Opener = tls_opener(client_context(ca))
        else:
            front, opener = listener(), plain_opener
        cfg: BalancerConfig = config([front], [group("web", target)])
        async with balancer(cfg) as daemon:
            yield address(daemon, "admin"), opener, daemon


@pytest.mark.parametrize("protocol", ["http", "https"])
async def test_connections_requests_and_response_times_from_real_traffic(tmp_path, protocol):
    async with setup(tmp_path, protocol) as (admin, opener, daemon):
        before = await scrape(admin)
        assert value(before, "wharf_balancer_http_connections_active", listener="front") == 0
        assert value(before, "wharf_balancer_http_connections_new_total", listener="front") == 0
        front = address(daemon, "front")  # type: ignore[arg-type]
        streams: list[CountingStream] = []
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(CONNECTIONS):
                stream = await stack.enter_async_context(opener(front))
                streams.append(stream)
                # Two requests on each connection: keep-alive reuse is one new connection.
                assert (await stream.exchange("GET", "/fast"))[0] == 200
                assert (await stream.exchange("POST", "/slow", BODY))[0] == 200
            during = await scrape(admin)
            assert (
                value(during, "wharf_balancer_http_connections_active", listener="front")
                == CONNECTIONS
            )
            assert (
                value(during, "wharf_balancer_http_connections_new_total", listener="front")
                == CONNECTIONS
            )
        after = await wait_scrape(
            admin,
            lambda s: value(s, "wharf_balancer_http_connections_active", listener="front") == 0,
        )
    assert (
        value(after, "wharf_balancer_http_connections_new_total", listener="front") == CONNECTIONS
    )
    requests = 2 * CONNECTIONS
    assert (
        value(
            after,
            "wharf_balancer_http_requests_total",
            listener="front",
            rule="default",
            target_group="web",
            code_class="2xx",
            source="target",
        )
        == requests
    )
    timing = {"listener": "front", "target_group": "web"}
    assert value(after, "wharf_balancer_target_response_seconds_count", **timing) == requests
    assert value(after, "wharf_balancer_target_response_seconds_bucket", le="+Inf", **timing) == (
        requests
    )
    # The slow half waited SLOW_SECONDS at the target: none of them can sit at or under
    # 0.25 s, so that bucket holds at most the fast half, and the sum is at least theirs.
    assert (
        value(after, "wharf_balancer_target_response_seconds_bucket", le="0.25", **timing)
        <= CONNECTIONS
    )
    assert (
        value(after, "wharf_balancer_target_response_seconds_sum", **timing)
        >= CONNECTIONS * SLOW_SECONDS
    )
    # Bytes sent to clients: exactly what the clients read.
    out = value(
        after, "wharf_balancer_http_processed_bytes_total", listener="front", direction="out"
    )
    assert out == sum(s.received for s in streams)


@pytest.mark.parametrize("protocol", ["http", "https"])
async def test_a_connection_reset_before_it_is_served_is_still_a_new_one(
    tmp_path, protocol, monkeypatch
):
    # A client that resets before the balancer reads its addresses (getpeername: ENOTCONN) made
    # a TCP connection all the same, and ALB's NewConnectionCount counts TCP connections. The
    # race is the kernel's, so the reset is simulated at the one call that sees it.
    async with setup(tmp_path, protocol) as (admin, _, daemon):
        front = address(daemon, "front")  # type: ignore[arg-type]
        real = fastio.accepted_addresses

        def reset_on_front(sock: trio.socket.SocketType) -> object:
            return None if sock.getsockname()[1] == front[1] else real(sock)

        monkeypatch.setattr(fastio, "accepted_addresses", reset_on_front)
        async with await trio.open_tcp_stream(*front) as stream:
            with trio.fail_after(10):
                assert await stream.receive_some(100) == b""  # closed, nothing answered
        after = await wait_scrape(
            admin,
            lambda s: value(s, "wharf_balancer_http_connections_new_total", listener="front") == 1,
        )
    assert value(after, "wharf_balancer_http_connections_active", listener="front") == 0


@pytest.mark.parametrize("protocol", ["http", "https"])
async def test_processed_bytes_in_are_every_byte_clients_sent(tmp_path, protocol):
    async with setup(tmp_path, protocol) as (admin, opener, daemon):
        front = address(daemon, "front")  # type: ignore[arg-type]
        async with opener(front) as stream:
            assert (await stream.exchange("GET", "/fast"))[0] == 200
            assert (await stream.exchange("POST", "/fast", BODY))[0] == 200
        after = await wait_scrape(
            admin,
            lambda s: value(s, "wharf_balancer_http_connections_active", listener="front") == 0,
        )
    received = value(
        after, "wharf_balancer_http_processed_bytes_total", listener="front", direction="in"
    )
    assert received == stream.sent, (received, stream.sent)


async def _send_raw_until_closed(front: tuple[str, int], data: bytes) -> bytes:
    """Write ``data`` at once and read until the balancer closes the connection."""
    stream = await trio.open_tcp_stream(*front)
    answer = b""
    async with stream:
        with trio.fail_after(10):
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                answer += chunk
    return answer


@pytest.mark.parametrize(
    "raw",
    [
        # a request pipelined behind one that closes the connection is read, never served
        b"GET /fast HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n"
        b"GET /fast HTTP/1.1\r\nhost: m\r\n\r\n",
        # a refused (desync) request's body bytes were read before the 400 closed it
        b"POST /fast HTTP/1.1\r\nhost: m\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["pipelined-after-close", "refused-with-body"],
)
async def test_processed_bytes_in_count_what_a_closing_connection_read(tmp_path, raw):
    async with setup(tmp_path, "http") as (admin, _, daemon):
        answer = await _send_raw_until_closed(address(daemon, "front"), raw)  # type: ignore[arg-type]
        assert answer.startswith(b"HTTP/1.1 ")
        after = await wait_scrape(
            admin,
            lambda s: value(s, "wharf_balancer_http_connections_active", listener="front") == 0,
        )
    received = value(
        after, "wharf_balancer_http_processed_bytes_total", listener="front", direction="in"
    )
    assert received == len(raw), (received, len(raw))


@pytest.mark.parametrize(
    ("version", "status", "refused"),
    [(b"HTTP/3.0", b"505", "true"), (b"HTTP/1.2", b"200", "false")],
)
async def test_a_desync_count_says_refused_exactly_when_the_balancer_answered_it(
    tmp_path, version, status, refused
):
    # Both are "NonCompliantVersion": a major version it does not speak is answered here, a
    # later 1.x is served as 1.1 (RFC 9110 2.5) by the target.
    async with setup(tmp_path, "http") as (admin, _, daemon):
        answer = await _send_raw_until_closed(
            address(daemon, "front"),  # type: ignore[arg-type]
            b"GET /fast " + version + b"\r\nhost: m\r\nconnection: close\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:40]
        after = await scrape(admin)
    counted = {
        dict(labels)["refused"]: count
        for (name, labels), count in after.items()
        if name == "wharf_balancer_http_desync_requests_total"
        and dict(labels).get("reason") == "NonCompliantVersion"
    }
    assert counted == {refused: 1.0}, counted
