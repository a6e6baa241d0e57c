"""The forward action on real sockets: headers the target sees, ALB's error answers,
streaming both ways, 100-continue, pooled connections and the stale-connection retry."""

from __future__ import annotations

import contextlib
import email.utils
import errno
import functools
import json
import socket
import ssl
import struct
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import h11
import pytest
import trio
import trustme

import balancer.listeners.forward as forward_module
import balancer.upstream as upstream_module
from balancer.config import (
    AccessLog,
    Conditions,
    FixedResponse,
    Forward,
    HttpsListener,
    ListenerTimeouts,
    Rule,
)
from balancer.listeners.exchange import parse_address
from balancer.listeners.forward import is_trusted
from balancer.runtime import ListenerRuntime
from proto.http1 import verdict
from tests.support.balancer_http import (
    Client,
    balancer,
    config,
    front,
    group,
    listener,
    raw,
    sample,
    statuses,
)
from tests.support.http import read_response
from tests.support.targets import Action, Reply, Seen, TargetServer, running_targets
from tests.support.tls import client_context, write_pair


def seen_headers(body: bytes) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in json.loads(body)["headers"]:
        found.setdefault(name, []).append(value)
    return found


async def test_the_target_sees_forwarded_headers_a_trace_id_and_the_clients_host():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        port = str(front(daemon)[1])
        async with Client.connect(front(daemon)) as client:
            _, _, body = await client.request(
                headers=[
                    ("host", "shop.example.com"),
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-proto", "https"),
                    ("connection", "keep-alive, x-hop"),
                    ("x-hop", "secret"),
                    ("keep-alive", "timeout=5"),
                    ("te", "trailers"),
                    ("x-amzn-trace-id", "Root=1-00000000-aaaaaaaaaaaaaaaaaaaaaaaa"),
                ]
            )
    headers = seen_headers(body)
    assert headers["host"] == ["shop.example.com"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]  # the spoofed address is gone
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-port"] == [port]
    for hop in ("connection", "keep-alive", "te", "x-hop"):
        assert hop not in headers
    (trace,) = headers["x-amzn-trace-id"]
    assert trace.startswith("Self=1-")
    assert trace.endswith(";Root=1-00000000-aaaaaaaaaaaaaaaaaaaaaaaa")


async def test_the_trace_header_keeps_its_fields_unless_the_head_is_over_7_kb():
    root = "Root=1-00000000-aaaaaaaaaaaaaaaaaaaaaaaa"
    custom = root + ";Custom=" + "c" * 1100  # a long header in a small head: kept
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        for padding in (0, 7 * 1024):
            request = (
                f"GET / HTTP/1.1\r\nHost: h\r\nX-Amzn-Trace-Id: {custom}\r\n"
                f"X-Pad: {'p' * padding}\r\nConnection: close\r\n\r\n"
            )
            assert statuses(await raw(front(daemon), request.encode())) == [200]
        small, large = (seen.header("x-amzn-trace-id") for seen in target.seen)
        assert small is not None
        assert small.startswith("Self=1-")
        assert small.endswith(";" + custom)
        assert large is not None
        assert large.startswith("Root=1-")
        assert ";" not in large  # AWS: over 7 KB of headers, only a Root


@pytest.mark.parametrize("drop", [False, True])
async def test_invalid_header_names_are_dropped_when_the_listener_says_so(drop: bool):
    """ALB's routing.http.drop_invalid_header_fields.enabled: names outside [-A-Za-z0-9]+
    (which CGI-style servers read as X-Forwarded-For...) go; off by default, as on ALB."""
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(
            config([listener(drop_invalid_header_fields=drop)], [group("web", target)])
        ) as daemon,
    ):
        answer = await raw(
            front(daemon),
            b"GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 6.6.6.6\r\nX.Real.IP: 6.6.6.6\r\n"
            b"X-Good-2: kept\r\nConnection: close\r\n\r\n",
        )
        assert statuses(answer) == [200]
    (seen,) = target.seen
    assert seen.header("x-good-2") == "kept"
    assert seen.header("host") == "h"
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    dropped = {"x_forwarded_for", "x.real.ip"}
    assert dropped.isdisjoint(name for name, _ in seen.headers) is drop


async def test_host_is_passed_unchanged():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        answer = await raw(
            front(daemon),
            b"GET / HTTP/1.1\r\nHost: Shop.Example.com:8443\r\nConnection: close\r\n\r\n",
        )
        assert statuses(answer) == [200]
        assert target.seen[0].header("host") == "Shop.Example.com:8443"


async def test_a_response_without_date_gets_one_and_a_targets_own_is_kept():
    """RFC 9110 6.6.1: a recipient with a clock MUST append a Date to a response it forwards
    without one; a Date the target sent is passed on unchanged, and never doubled."""
    own = "Tue, 15 Nov 1994 08:12:31 GMT"

    async def answer(seen: Seen, server: TargetServer) -> Reply:
        headers = [("date", own)] if seen.target == "/dated" else []
        return Reply(200, [*headers, ("content-type", "text/plain")], b"ok")

    async with (
        running_targets(TargetServer("a", answer)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        for path, expected in (("/undated", None), ("/dated", own)):
            request = f"GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            answer = await raw(front(daemon), request.encode())
            assert statuses(answer) == [200]
            head = answer.partition(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
            dates = [line.partition(": ")[2] for line in head if line.lower().startswith("date:")]
            assert len(dates) == 1, head
            if expected is None:
                sent = email.utils.parsedate_to_datetime(dates[0])
                assert abs(sent.timestamp() - time.time()) < 60
            else:
                assert dates == [expected]


async def test_trusted_proxies_keep_their_chain_and_client_ports_can_be_added():
    lst = listener(trusted_proxies=("127.0.0.0/8",), x_forwarded_for_client_port=True)
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        await client.request(
            headers=[("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "https")]
        )
        local_port = client.stream.socket.getsockname()[1]
    seen = target.seen[0]
    assert seen.header("x-forwarded-for") == f"203.0.113.9, 127.0.0.1:{local_port}"
    assert seen.header("x-forwarded-proto") == "https"


def test_trust_is_by_network():
    lst = ListenerRuntime.compile(listener(trusted_proxies=("10.0.0.0/8", "2001:db8::/32")))
    assert is_trusted(parse_address("10.1.2.3"), lst)
    assert is_trusted(parse_address("::ffff:10.1.2.3"), lst)
    assert is_trusted(parse_address("2001:db8::5"), lst)
    assert not is_trusted(parse_address("192.0.2.1"), lst)
    assert not is_trusted(parse_address("not-an-ip"), lst)
    assert not is_trusted(parse_address("10.1.2.3"), ListenerRuntime.compile(listener()))


async def test_503_when_the_group_has_no_targets():
    async with (
        balancer(config([listener()], [group("web")])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        assert (await client.request())[0] == 503
        assert (await client.request())[0] == 503  # and the connection stays usable


async def test_502_when_the_target_refuses_connections():
    async with running_targets(TargetServer("a")) as (target,):
        cfg = config([listener()], [group("web", target)])
    # The target has stopped: its port now refuses.
    async with balancer(cfg) as daemon:
        async with Client.connect(front(daemon)) as client:
            assert (await client.request())[0] == 502
        value = daemon.metrics.registry.get_sample_value(
            "wharf_balancer_target_connection_errors_total", {"target_group": "web"}
        )
        assert value == 1


async def test_503_when_the_balancer_itself_cannot_open_a_socket(monkeypatch, tmp_path):
    async def exhausted(host: str, port: int, tls: object) -> trio.SocketStream:
        raise OSError(errno.EMFILE, "Too many open files")

    path = tmp_path / "access.log"
    logged = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    async with running_targets(TargetServer("a")) as (target,):
        monkeypatch.setattr(upstream_module, "_open", exhausted)
        async with balancer(config([logged], [group("web", target)])) as daemon:
            async with Client.connect(front(daemon)) as client:
                assert (await client.request())[0] == 503
                assert (await client.request())[0] == 503
            value = daemon.metrics.registry.get_sample_value(
                "wharf_balancer_target_connection_errors_total", {"target_group": "web"}
            )
            assert value in (None, 0)  # not the target's fault
            await trio.sleep(1.3)  # the app flushes access logs once a second
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert all('"BalancerOutOfResources"' in line for line in lines), lines


@pytest.mark.parametrize("outcome", [Action.GARBAGE, Action.CLOSE])
async def test_502_when_the_target_answers_garbage_or_nothing(outcome: str, tmp_path) -> None:
    async def broken(seen: Seen, server: TargetServer) -> Reply | str:
        return outcome

    path = tmp_path / "access.log"
    logged = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    async with (
        running_targets(TargetServer("a", broken)) as (target,),
        balancer(config([logged], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        assert (await client.request("POST", body=b"x"))[0] == 502
        await trio.sleep(1.3)  # the app flushes access logs once a second
    (line,) = path.read_text().splitlines()
    times = line.split(" ")[5:8]
    if outcome == Action.CLOSE:  # ALB: all three -1 when the target closes before answering
        assert times == ["-1", "-1", "-1"]
    else:  # it answered, if with garbage: the request was dispatched
        assert times[0] != "-1"
        assert times[1:] == ["-1", "-1"]


async def test_without_a_response_timeout_the_idle_timeout_bounds_a_silent_target():
    # ALB has no separate response timeout: raising the idle timeout lets slow targets answer.
    async def slow(seen: Seen, server: TargetServer) -> Reply | str:
        await trio.sleep(2)
        return Reply()

    patient, hasty = listener(idle_timeout_seconds=30), listener(idle_timeout_seconds=1)
    assert patient.response_timeout_seconds == 30
    assert (
        listener(timeouts=ListenerTimeouts(target_response_seconds=5)).response_timeout_seconds == 5
    )
    for lst, status in ((hasty, 504), (patient, 200)):
        async with (
            running_targets(TargetServer("a", slow)) as (target,),
            balancer(config([lst], [group("web", target)])) as daemon,
            Client.connect(front(daemon)) as client,
        ):
            with trio.fail_after(5):
                assert (await client.request())[0] == status


async def test_504_when_the_target_is_too_slow():
    async def slow(seen: Seen, server: TargetServer) -> Reply | str:
        await trio.sleep(5)
        return Reply()

    lst = listener(timeouts=ListenerTimeouts(target_response_seconds=0.3))
    async with (
        running_targets(TargetServer("a", slow)) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        with trio.fail_after(3):
            assert (await client.request())[0] == 504
        labels = {
            "listener": "front",
            "rule": "default",
            "target_group": "web",
            "code_class": "5xx",
            "source": "elb",
        }
        value = daemon.metrics.registry.get_sample_value(
            "wharf_balancer_http_requests_total", labels
        )
        assert value == 1
        by_code = daemon.metrics.registry.get_sample_value(
            "wharf_balancer_http_elb_5xx_responses_total", {"listener": "front", "code": "504"}
        )
        assert by_code == 1


async def test_stale_keep_alive_connections_are_retried_for_idempotent_requests():
    async def hang_up(seen: Seen, server: TargetServer) -> Reply | str:
        # Closes every connection after answering, without a Connection: close header.
        return Reply(200, body=b"ok", hang_up=True)

    async with (
        running_targets(TargetServer("a", hang_up)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        for _ in range(5):
            assert (await client.request())[0] == 200
            await trio.sleep(0.05)  # let the target's close arrive
        assert target.accepts >= 5


async def test_connections_to_targets_are_reused_across_clients():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        for _ in range(10):
            async with Client.connect(front(daemon)) as client:
                assert (await client.request())[0] == 200
        assert target.accepts == 1
        assert daemon.app.pools.idle_connections() == 1  # type: ignore[attr-defined]


async def test_large_bodies_stream_both_ways_without_being_buffered():
    """The target gets the first bytes of an upload before the client sends the last, and
    the client gets the first bytes of a download before the target sends the last."""
    first_upload_bytes = trio.Event()
    first_download_bytes = trio.Event()
    received = 0

    async def streaming_target(stream: trio.SocketStream) -> None:
        nonlocal received
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    received += len(event.data)
                    first_upload_bytes.set()
                elif isinstance(event, h11.EndOfMessage):
                    break
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=[])))
            await stream.send_all(conn.send(h11.Data(data=b"a" * 65536)))
            with trio.fail_after(5):
                await first_download_bytes.wait()  # deadlocks if the balancer buffers
            for _ in range(15):
                await stream.send_all(conn.send(h11.Data(data=b"b" * 65536)))
            await stream.send_all(conn.send(h11.EndOfMessage()))

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, streaming_target, listeners)
        target = TargetServer("stream")
        target.port = port
        async with balancer(config([listener()], [group("web", target)])) as daemon:
            with trio.fail_after(20):
                stream = await trio.open_tcp_stream(*front(daemon))
                async with stream:
                    conn = h11.Connection(h11.CLIENT)
                    await stream.send_all(
                        conn.send(
                            h11.Request(
                                method="POST",
                                target="/",
                                headers=[("host", "x"), ("transfer-encoding", "chunked")],
                            )
                        )
                    )
                    await stream.send_all(conn.send(h11.Data(data=b"u" * 65536)))
                    await first_upload_bytes.wait()  # deadlocks if the balancer buffers
                    for _ in range(31):
                        await stream.send_all(conn.send(h11.Data(data=b"u" * 65536)))
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    total = 0
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            conn.receive_data(await stream.receive_some(65536))
                        elif isinstance(event, h11.Data):
                            total += len(event.data)
                            first_download_bytes.set()
                        elif isinstance(event, h11.EndOfMessage):
                            break
                    assert total == 16 * 65536
                    assert received == 32 * 65536
        nursery.cancel_scope.cancel()


async def post_after_100_continue(
    address: tuple[str, int], body: bytes, interim_line: bytes = b"HTTP/1.1 100 "
) -> tuple[int, bytes]:
    """POST with ``Expect: 100-continue``: the head, a 100 (starting ``interim_line``), then
    the body; status and body."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\n\r\n" % len(body)
        )
        interim = await stream.receive_some(100)
        assert interim.startswith(interim_line), interim
        await stream.send_all(body)
        conn = h11.Connection(h11.CLIENT)  # only to parse the response
        conn.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        status, _, answer = await read_response(conn, stream)
    return status, answer


async def test_expect_100_continue_is_answered_before_the_body_is_sent(
    monkeypatch: pytest.MonkeyPatch,
):
    """The target ignores Expect (never sends 100): the balancer sends its own."""
    monkeypatch.setattr(forward_module, "EXPECT_CONTINUE_SECONDS", 0.05)
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        with trio.fail_after(5):
            # The balancer's own, with its reason phrase (a client may wait for the text).
            own = b"HTTP/1.1 100 Continue\r\n\r\n"
            status, body = await post_after_100_continue(front(daemon), b"hello", own)
        assert status == 200
        assert json.loads(body)["body_length"] == 5
        assert target.seen[0].header("expect") == "100-continue"


async def test_a_streamed_chunked_response_reaches_an_http_1_0_client_close_delimited():
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"part%d;" % i

    async def chunked(seen: Seen, server: TargetServer) -> Reply | str:
        return Reply(200, chunks=chunks())

    async with (
        running_targets(TargetServer("a", chunked)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        answer = await raw(front(daemon), b"GET / HTTP/1.0\r\n\r\n")
        assert answer.endswith(b"part0;part1;part2;")
        assert b"transfer-encoding" not in answer.lower()


# Early responses: the target answers before it has read the whole request body -----------

BIG_BODY = 8 << 20  # far more than the socket buffers between client, balancer and target
TOO_LARGE = (
    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 14\r\nConnection: close\r\n\r\n"
    b"body too large"
)


@contextlib.asynccontextmanager
async def raw_target(
    handler: Callable[[trio.SocketStream], Awaitable[None]], *, receive_buffer: int = 0
) -> AsyncIterator[TargetServer]:
    """A target on 127.0.0.1 that runs ``handler`` on every connection (raw bytes);
    ``receive_buffer`` shrinks its connections' SO_RCVBUF (0: the kernel's)."""

    async def serve(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                await handler(stream)

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        if receive_buffer:  # inherited by the connections it accepts
            listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        target = TargetServer("raw")
        target.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        try:
            yield target
        finally:
            nursery.cancel_scope.cancel()


async def read_request_head(stream: trio.SocketStream) -> h11.Request:
    """Read up to the end of a request head, leaving its body unread (mostly)."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(4096))
        elif isinstance(event, h11.Request):
            return event


def reset(stream: trio.SocketStream) -> None:
    """Close with an RST (SO_LINGER 0), however much is unread."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def upload(
    addr: tuple[str, int],
    answered: trio.Event,
    *,
    body: int = BIG_BODY,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """POST a big body: the first MiB, then (once the target has answered) the rest, while
    reading the response. Returns the response; the upload may be cut short."""
    conn = h11.Connection(h11.CLIENT)
    head = conn.send(
        h11.Request(
            method="POST",
            target="/upload",
            headers=[("host", "x"), ("content-length", str(body))],
        )
    )
    chunk = b"u" * (1 << 20)

    async def send_body(stream: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(head + chunk)
            await answered.wait()
            for _ in range(body // len(chunk) - 1):
                await stream.send_all(chunk)

    with trio.fail_after(20):
        stream: trio.abc.Stream = await trio.open_tcp_stream(*addr)
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_hostname="shop.example.com")
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(send_body, stream)
            response = await read_response(conn, stream)
            nursery.cancel_scope.cancel()
    return response


@pytest.mark.parametrize("ending", ["close", "reset", "keep_reading"])
async def test_an_early_413_reaches_a_client_still_uploading(ending: str) -> None:
    """The target reads the head, answers 413 and closes (unread bytes: an RST), resets
    (SO_LINGER 0), or keeps reading, while the client is still sending: 413, not 502."""
    answered = trio.Event()

    async def too_large(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(TOO_LARGE)
        if ending == "keep_reading":
            answered.set()
            while await stream.receive_some(65536):
                pass
            return
        await trio.sleep(0.05)  # the 413 is on its way before the connection ends
        if ending == "reset":
            reset(stream)
        else:
            await stream.aclose()
        answered.set()

    async with (
        raw_target(too_large) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        status, headers, body = await upload(front(daemon), answered)
        assert (status, body) == (413, b"body too large")
        assert headers["connection"] == "close"
        assert daemon.app.pools.idle_connections() == 0  # type: ignore[attr-defined]
        log = daemon.log_output.getvalue()  # type: ignore[attr-defined]
        assert "http.early_response" in log
        assert "status=413" in log
        labels = {
            "listener": "front",
            "rule": "default",
            "target_group": "web",
            "code_class": "4xx",
            "source": "target",
        }
        with trio.fail_after(10):  # counted once the balancer is done with the connection
            while sample(daemon, "wharf_balancer_http_requests_total", labels) != 1:  # noqa: ASYNC110 (a counter: no event to wait on)
                await trio.sleep(0.01)


@pytest.mark.parametrize("ending", ["close", "reset"])
async def test_a_close_delimited_body_cut_by_a_reset_is_not_relayed_as_complete(
    ending: str, tmp_path: Path
) -> None:
    """RFC 9112 8: a body without Content-Length or chunking is complete only at a clean
    close. A reset cuts it: the client, whose copy is chunked, must not get the last
    chunk (it would take the prefix as the whole body, and its connection stays open)."""

    async def close_delimited(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\nthe first part")
        await trio.sleep(0.05)  # read by the balancer before the connection ends
        if ending == "reset":
            reset(stream)
        else:
            await stream.aclose()

    path = tmp_path / "access.log"
    logged = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    async with (
        raw_target(close_delimited) as target,
        balancer(config([logged], [group("web", target)])) as daemon,
    ):
        request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        answer = await raw(front(daemon), request, limit=5)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), answer
        assert b"transfer-encoding: chunked" in head.lower()
        if ending == "close":
            assert body == b"e\r\nthe first part\r\n0\r\n\r\n"
        else:
            assert body == b"e\r\nthe first part\r\n"  # then the close: no last chunk
        await trio.sleep(1.3)  # the app flushes access logs once a second
    (line,) = path.read_text().splitlines()
    assert ('"TruncatedTargetResponse"' in line) == (ending == "reset"), line


async def test_an_early_413_reaches_a_client_over_tls(tmp_path: Path) -> None:
    answered = trio.Event()

    async def too_large(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(TOO_LARGE)
        reset(stream)
        answered.set()

    ca = trustme.CA()
    lst = HttpsListener(
        name="front",
        host="127.0.0.1",
        port=0,
        default_action=Forward(target_group="web"),
        certificates=(write_pair(ca, tmp_path, "shop", "shop.example.com"),),
    )
    async with (
        raw_target(too_large) as target,
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        status, headers, body = await upload(front(daemon), answered, tls=client_context(ca))
        assert (status, body) == (413, b"body too large")
        assert headers["connection"] == "close"


async def test_a_target_that_resets_without_answering_is_still_a_502():
    answered = trio.Event()

    async def hang_up(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.receive_some(65536)  # some of the body has arrived
        reset(stream)
        answered.set()

    async with (
        raw_target(hang_up) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        status, headers, _ = await upload(front(daemon), answered)
        assert status == 502
        assert headers["connection"] == "close"
        assert "http.early_response" not in daemon.log_output.getvalue()  # type: ignore[attr-defined]


async def test_a_real_client_gets_the_early_413():
    """http.client (through urllib) sends the whole body before it reads a response: the
    balancer reads and drops the rest of it, so the client sees the 413, not a reset."""
    answered = trio.Event()

    async def too_large(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(TOO_LARGE)
        reset(stream)
        answered.set()

    def post(url: str) -> tuple[int, bytes]:
        request = urllib.request.Request(url, data=b"u" * BIG_BODY, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    async with (
        raw_target(too_large) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        host, port = front(daemon)
        with trio.fail_after(30):
            status, body = await trio.to_thread.run_sync(post, f"http://{host}:{port}/upload")
        assert (status, body) == (413, b"body too large")
        assert answered.is_set()


@pytest.mark.parametrize("status", [401, 417])
async def test_a_final_answer_to_expect_100_continue_reaches_the_client_without_a_body(
    status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forward_module, "EXPECT_CONTINUE_SECONDS", 60.0)  # no 100 of its own
    seen: list[h11.Request] = []

    async def refuse(stream: trio.SocketStream) -> None:
        seen.append(await read_request_head(stream))
        await stream.send_all(
            b"HTTP/1.1 %d No\r\nContent-Length: 2\r\n\r\nno" % status  # keeps the connection
        )
        await stream.receive_some(65536)  # until the balancer closes it

    async with (
        raw_target(refuse) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                answer = b""
                while chunk := await stream.receive_some(65536):  # the balancer closes
                    answer += chunk
        assert statuses(answer) == [status]  # no 100 before it
        assert answer.endswith(b"\r\n\r\nno")
        assert b"connection: close" in answer.lower()
        assert dict(seen[0].headers)[b"expect"] == b"100-continue"
        assert daemon.app.pools.idle_connections() == 0  # type: ignore[attr-defined]


async def test_the_targets_100_continue_reaches_the_client(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(forward_module, "EXPECT_CONTINUE_SECONDS", 60.0)  # no 100 of its own

    async def continue_then_answer(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await stream.send_all(
                        conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        reply = h11.Response(status_code=200, headers=[("content-length", str(len(body)))])
        await stream.send_all(conn.send(reply) + conn.send(h11.Data(data=body)))

    async with (
        raw_target(continue_then_answer) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        with trio.fail_after(10):
            status, body = await post_after_100_continue(front(daemon), b"hello")
        assert (status, body) == (200, b"hello")


async def test_a_body_that_stalls_gets_408():
    lst = listener(timeouts=ListenerTimeouts(request_body_seconds=0.3))
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        answer = await raw(
            front(daemon), b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
        )
        assert statuses(answer) == [408]
        assert target.seen == []  # the target never had a whole request


async def test_a_target_that_stops_reading_a_body_for_a_while_does_not_get_the_client_a_408():
    """A target pausing its read of an upload past request_body_seconds (a busy worker,
    a GC pause) while the client sends steadily: the body timeout is for pauses of the
    client's, and the idle timeout governs a target that does not read. Before, the
    client got 408 (RequestBodyTimeout, counted as its fault) as soon as one write to the
    target waited longer than the body timeout."""
    body = 16 << 20  # far more than the socket buffers between balancer and target
    got = []

    async def pause_then_read(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while not isinstance(conn.next_event(), h11.Request):
            conn.receive_data(await stream.receive_some(4096))
        await trio.sleep(1.5)  # five times request_body_seconds, well inside the idle timeout
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(1 << 20))
            elif isinstance(event, h11.Data):
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        got.append(size)
        reply = b"%d" % size
        await stream.send_all(
            conn.send(h11.Response(status_code=200, headers=[("content-length", str(len(reply)))]))
            + conn.send(h11.Data(data=reply))
            + conn.send(h11.EndOfMessage())
        )

    lst = listener(timeouts=ListenerTimeouts(request_body_seconds=0.3))
    async with (
        raw_target(pause_then_read) as target,
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        started = trio.Event()
        started.set()  # the client sends the whole body at once, as fast as it is taken
        status, _, answer = await upload(front(daemon), started, body=body)
        assert (status, answer) == (200, b"%d" % body)
        assert got == [body]


class ConnectTarget:
    """A forward proxy of sorts: answers CONNECT with ``status``, then echoes the tunnel."""

    def __init__(self, status: bytes) -> None:
        self.status = status
        self.port = 0
        self.heads: list[bytes] = []

    async def serve(self, stream: trio.SocketStream) -> None:
        buffered = b""
        while b"\r\n\r\n" not in buffered:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            buffered += chunk
        head, _, early = buffered.partition(b"\r\n\r\n")
        self.heads.append(head)
        await stream.send_all(b"HTTP/1.1 " + self.status + b"\r\n\r\n")
        if not self.status.startswith(b"2"):
            return
        if early:
            await stream.send_all(early)
        while chunk := await stream.receive_some(4096):
            await stream.send_all(chunk)


@contextlib.asynccontextmanager
async def connect_target(status: bytes) -> AsyncIterator[ConnectTarget]:
    target = ConnectTarget(status)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, target.serve, 0, host="127.0.0.1")
        )
        (listening,) = listeners
        target.port = listening.socket.getsockname()[1]
        yield target
        nursery.cancel_scope.cancel()


async def test_a_target_that_accepts_connect_gets_a_tunnel():
    # As HAProxy relays it: the 2xx goes to the client (no framing headers), then bytes flow
    # both ways until one side closes. Before, the client got an empty close, logged as 200.
    async with (
        connect_target(b"200 Connection established") as target,
        balancer(config([listener()], [group("web", target)])) as daemon,  # type: ignore[arg-type]
    ):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                await stream.send_all(
                    b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n"
                )
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += await stream.receive_some(4096)
                head, _, rest = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                assert b"content-length" not in head.lower()
                await stream.send_all(b"ping through the tunnel")
                while len(rest) < len(b"ping through the tunnel"):
                    rest += await stream.receive_some(4096)
                assert rest == b"ping through the tunnel"
    (seen,) = target.heads
    assert seen.startswith(b"CONNECT db.internal:5432 HTTP/1.1")


@pytest.mark.parametrize("framing", [b"Content-Length: 0", b"Transfer-Encoding: chunked"])
async def test_a_framed_2xx_to_connect_opens_no_tunnel(framing):
    """An application answering CONNECT as any method (200 with a body's framing; RFC 9110
    9.3.6 forbids it in a tunnel's 2xx) gets no tunnel: relayed as one, the client's next
    requests on that connection reached the target with no rule applied (hunt httpsem)."""
    async with (
        connect_target(b"200 OK\r\n" + framing) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,  # type: ignore[arg-type]
    ):
        answer = await raw(
            front(daemon),
            b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n"
            b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
            limit=10,
        )
        assert statuses(answer) == [502]
    assert len(target.heads) == 1  # the GET never reached it as a request


async def test_a_target_that_refuses_connect_is_an_ordinary_response():
    async with (
        connect_target(b"405 Method Not Allowed\r\nContent-Length: 0") as target,
        balancer(config([listener()], [group("web", target)])) as daemon,  # type: ignore[arg-type]
    ):
        answer = await raw(
            front(daemon),
            b"CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\nConnection: close\r\n\r\n",
            limit=10,
        )
        assert statuses(answer) == [405]


async def test_an_http_1_0_client_never_gets_transfer_encoding():
    """RFC 9112 6.1: no Transfer-Encoding in a response to an HTTP/1.0 request, not even on
    a 304 (which may carry one for an HTTP/1.1 client) or a chunked answer to HEAD."""

    async def not_modified(stream: trio.SocketStream) -> None:
        request = await read_request_head(stream)
        status = b"200 OK" if request.method == b"HEAD" else b"304 Not Modified"
        await stream.send_all(
            b'HTTP/1.1 %s\r\nTransfer-Encoding: chunked\r\nETag: "v1"\r\n\r\n' % status
        )

    async with (
        raw_target(not_modified) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        for method, status in ((b"GET", 304), (b"HEAD", 200)):
            answer = await raw(front(daemon), b"%s / HTTP/1.0\r\nHost: h\r\n\r\n" % method)
            assert statuses(answer) == [status]
            head, _, rest = answer.partition(b"\r\n\r\n")
            assert b'etag: "v1"' in head.lower()
            assert b"transfer-encoding" not in head.lower(), head
            assert rest == b""


async def test_bytes_a_target_sends_after_its_response_never_reach_another_client():
    """RFC 9112 6.3: extra data after a complete response is not a response. A pooled
    connection with bytes waiting is closed, however short its pause."""
    stray_sent = trio.Event()

    async def answer_then_stray(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await trio.sleep(0.05)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nX-Poison: 1\r\nContent-Length: 8\r\n\r\nsmuggled"
        )
        stray_sent.set()
        await trio.sleep(5)  # holds the connection open, as a keep-alive target does

    async with (
        raw_target(answer_then_stray) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        async with Client.connect(front(daemon)) as first:
            assert (await first.request())[2] == b"ok"
        with trio.fail_after(5):
            await stray_sent.wait()
        await trio.sleep(0.05)  # the stray bytes are in the balancer's receive buffer
        async with Client.connect(front(daemon)) as second:
            status, headers, body = await second.request()
        assert (status, body, "x-poison" in headers) == (200, b"ok", False)


async def test_a_post_after_the_target_closed_its_pooled_connection_succeeds():
    """A target closing its keep-alive connection just after answering: the next request,
    even one that cannot be retried, goes on a new connection."""

    async def hang_up(seen: Seen, server: TargetServer) -> Reply | str:
        return Reply(200, body=b"ok", hang_up=True)  # no Connection: close header

    async with (
        running_targets(TargetServer("a", hang_up)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        for _ in range(3):
            assert (await client.request("POST", body=b"payload"))[0] == 200
            await trio.sleep(0.05)  # the target's close arrives, well within a second


async def test_a_websocket_handshake_on_a_connection_the_target_dropped_is_retried():
    """The target closes a pooled connection just as the balancer sends a WebSocket
    handshake on it (its keep-alive timeout): a bodiless GET that got no answer, retried
    on a new connection as any other. Before, the client got 502 (upgrades were never
    retried, though nothing of the tunnel goes out before the 101)."""
    handshakes: list[int] = []

    async def drop_the_second_then_upgrade(stream: trio.SocketStream) -> None:
        connection = len(handshakes) + 1
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(4096)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                if not any(name == b"upgrade" for name, _ in event.headers):
                    while not isinstance(conn.next_event(), h11.EndOfMessage):
                        pass
                    reply = h11.Response(status_code=200, headers=[("content-length", "2")])
                    await stream.send_all(
                        conn.send(reply)
                        + conn.send(h11.Data(data=b"ok"))
                        + conn.send(h11.EndOfMessage())
                    )
                    conn.start_next_cycle()
                    continue
                handshakes.append(connection)
                if connection == 1:
                    return  # the race: closed under the handshake, unanswered
                await stream.send_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\n\r\n"
                )
                while data := await stream.receive_some(4096):
                    await stream.send_all(b"WS:" + data)
                return

    async with (
        raw_target(drop_the_second_then_upgrade) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b"ok"):
                    answer += await stream.receive_some(4096)
                await stream.send_all(
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\n\r\n"
                )
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await stream.receive_some(4096)
                assert head.startswith(b"HTTP/1.1 101 "), head
                await stream.send_all(b"ping")
                echoed = head.partition(b"\r\n\r\n")[2]
                while b"WS:ping" not in echoed:
                    echoed += await stream.receive_some(4096)
    assert handshakes == [1, 2]


async def test_after_a_failed_connect_the_client_connection_serves_the_next_request():
    async with running_targets(TargetServer("a")) as (target,):
        cfg = config([listener()], [group("web", target)])
    # The target has stopped: its port refuses.
    async with balancer(cfg) as daemon, Client.connect(front(daemon)) as client:
        for _ in range(2):
            status, headers, _ = await client.request()
            assert (status, headers.get("connection")) == (502, None)
        status, _, _ = await client.request("POST", body=b"x" * 1000)
        assert status == 502
        assert (await client.request())[0] == 502  # the dropped body framed correctly


async def test_a_content_length_beyond_64_bits_is_refused_before_anything_is_forwarded():
    """ALB's guardian reads Content-Length as an unsigned 64-bit number: a larger one is
    BadContentLength (Severe), since a target may wrap it and read the body as requests."""
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        payload = (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551621\r\n\r\n"
            b"helloGET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answer = await raw(front(daemon), payload)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert target.accepts == 0
        refused = sample(
            daemon,
            "wharf_balancer_http_desync_requests_total",
            {
                "listener": "front",
                "classification": verdict("BadContentLength").classification.label,
                "reason": "BadContentLength",
                "refused": "true",
            },
        )
        assert refused == 1


async def test_a_chunk_size_beyond_64_bits_is_refused_before_anything_is_forwarded():
    """h11 read up to 20 hex digits: 10000000000000003 was one chunk of 2^64+3 bytes that
    swallowed the next pipelined request, while a next hop that wraps at 64 bits reads 3.
    HAProxy answers 400; refused with the head, the target never gets a byte of it."""
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        payload = (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"10000000000000003\r\nabc\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answer = await raw(front(daemon), payload)  # answered, then closed
        assert statuses(answer) == [400]
        assert b"connection: close" in answer.lower()
        assert target.seen == []
        refused = sample(
            daemon,
            "wharf_balancer_http_desync_requests_total",
            {
                "listener": "front",
                "classification": verdict("BadTransferEncoding").classification.label,
                "reason": "BadTransferEncoding",
                "refused": "true",
            },
        )
        assert refused == 1


async def test_a_response_chunk_size_beyond_64_bits_is_a_502_and_its_connection_dropped(tmp_path):
    """As HAProxy: a target's chunk size over 2^64-1 (h11 read 20 hex digits) makes the
    response invalid, a 502, when it comes with the head; nothing of it reaches the client,
    least of all the response it would have swallowed, and the connection is not reused."""
    connections = 0

    async def overflowing_then_fine(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await read_request_head(stream)
        if connections == 1:  # in one write: the balancer reads it with the head
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"10000000000000002\r\nok\r\n0\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nX-Poison: 1\r\nContent-Length: 8\r\n\r\nsmuggled"
            )
        else:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await trio.sleep_forever()  # a keep-alive target: the balancer decides to close

    path = tmp_path / "access.log"
    logged = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    async with (
        raw_target(overflowing_then_fine) as target,
        balancer(config([logged], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        status, _, body = await client.request()
        assert (status, body) == (502, b"bad gateway\n")
        status, headers, body = await client.request()  # the same client connection
        assert (status, body, "x-poison" in headers) == (200, b"ok", False)
        assert connections == 2
        codes = {"listener": "front", "code": "502"}
        assert sample(daemon, "wharf_balancer_http_elb_5xx_responses_total", codes) == 1
        await trio.sleep(1.3)  # the app flushes access logs once a second
    first, _ = path.read_text().splitlines()
    assert " 502 200 " in first  # the balancer's 502 to the target's broken 200
    assert '"InvalidTargetResponse"' in first


async def test_a_body_the_balancer_answered_without_is_counted_in_processed_bytes():
    """ALB's ProcessedBytes and received_bytes count the whole request, a body dropped after
    the balancer's own answer (here a 503) included."""
    async with (
        balancer(config([listener()], [group("web")])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        sent = 0
        for request in (
            h11.Request(
                method="POST", target="/", headers=[("host", "x"), ("content-length", "1000")]
            ),
            h11.Request(method="GET", target="/", headers=[("host", "x")]),
        ):
            data = client.conn.send(request)
            if request.method == b"POST":
                data += client.conn.send(h11.Data(data=b"x" * 1000))
            data += client.conn.send(h11.EndOfMessage())
            sent += len(data)
            await client.stream.send_all(data)
            while not isinstance(event := client.conn.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA:
                    client.conn.receive_data(await client.stream.receive_some(65536))
            client.conn.start_next_cycle()
        labels = {"listener": "front", "direction": "in"}
        with trio.fail_after(10):  # booked once the balancer is done with each request
            while sample(daemon, "wharf_balancer_http_processed_bytes_total", labels) != sent:  # noqa: ASYNC110 (a counter: no event to wait on)
                await trio.sleep(0.01)


@pytest.mark.parametrize("status", [b"600", b"999"])
async def test_a_status_code_beyond_599_is_an_invalid_response(status: bytes):
    """RFC 9110 15: status codes outside 100-599 are invalid; h11 takes any three digits."""

    async def odd_status(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\nok")
        await trio.sleep(5)

    async with (
        raw_target(odd_status) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        status_code, _, body = await client.request()
        assert (status_code, body) == (502, b"bad gateway\n")


# h2c smuggling: an offer of h2c is never forwarded ------------------------------------------

H2C_REQUEST = (
    b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)
SWITCH_TO_H2C = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"


def h2c_target(seen: list[h11.Request], *, always: bool):
    """A target that switches to h2c when asked (or, ``always``, even when not), then
    echoes what comes through the tunnel; otherwise it answers 200 and closes."""

    async def handler(stream: trio.SocketStream) -> None:
        request = await read_request_head(stream)
        seen.append(request)
        offered = any(
            name == b"upgrade" and b"h2c" in value.lower() for name, value in request.headers
        )
        if offered or always:
            await stream.send_all(SWITCH_TO_H2C)
            while data := await stream.receive_some(4096):
                await stream.send_all(b"TUNNEL-ECHO:" + data)
            return
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )

    return handler


async def test_an_h2c_upgrade_goes_to_the_target_as_a_plain_request():
    # RFC 9113 3.1 deprecates h2c; ALB's HTTP/1.1 upgrade is WebSocket. Passed on, the
    # target's 101 would make the connection a tunnel past the listener's rules: the
    # fixed-response rule below would never see the second request (h2c smuggling).
    rule = Rule(
        priority=1,
        conditions=Conditions(path_pattern=("/fixed",)),
        action=FixedResponse(status_code=200, message_body="fixed"),
    )
    seen: list[h11.Request] = []
    async with (
        raw_target(h2c_target(seen, always=False)) as target,
        balancer(config([listener(rules=[rule])], [group("web", target)])) as daemon,
    ):
        answer = await raw(
            front(daemon),
            H2C_REQUEST + b"GET /fixed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    assert statuses(answer) == [200, 200]
    assert answer.endswith(b"fixed")
    assert b"TUNNEL-ECHO" not in answer
    (request,) = seen
    names = {name for name, _ in request.headers}
    assert not names & {b"upgrade", b"http2-settings", b"connection"}


async def test_a_101_to_h2c_the_request_offered_is_a_502():
    seen: list[h11.Request] = []
    async with (
        raw_target(h2c_target(seen, always=True)) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        answer = await raw(front(daemon), H2C_REQUEST + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(answer) == [502]
    assert b"TUNNEL-ECHO" not in answer
    (request,) = seen
    assert not any(name == b"upgrade" for name, _ in request.headers)


async def test_a_websocket_offered_with_h2c_still_upgrades():
    # Only the h2c token goes: a WebSocket handshake that also offers h2c is forwarded as
    # a WebSocket one (Upgrade: websocket, Connection: upgrade).
    seen: list[h11.Request] = []

    async def websocket_only(stream: trio.SocketStream) -> None:
        request = await read_request_head(stream)
        seen.append(request)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        while data := await stream.receive_some(4096):
            await stream.send_all(b"WS:" + data)

    async with (
        raw_target(websocket_only) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                await stream.send_all(
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                    b"Upgrade: h2c, websocket\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
                )
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await stream.receive_some(4096)
                assert head.startswith(b"HTTP/1.1 101 ")
                await stream.send_all(b"ping")
                echoed = head.partition(b"\r\n\r\n")[2]
                while b"WS:ping" not in echoed:
                    echoed += await stream.receive_some(4096)
    (request,) = seen
    headers = dict(request.headers)
    assert headers[b"upgrade"] == b"websocket"
    assert headers[b"connection"].lower() == b"upgrade"
    assert b"http2-settings" not in headers


async def download(
    addr: tuple[str, int],
    request: bytes,
    *,
    body: int,
    pace: float | None,
    tls: ssl.SSLContext | None = None,
) -> tuple[bytes, bool]:
    """A client on a small receive window: for the first 4 s it reads 4 KiB every ``pace``
    seconds (None: nothing at all), then as fast as it can, until it has a response head
    and ``body`` bytes after it. Returns what it read, and whether the balancer ended the
    connection (an end or a reset) before that."""
    sock = trio.socket.socket()
    # Set before connecting: the window the client offers stays small.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    await sock.connect(addr)
    stream: trio.abc.Stream = trio.SocketStream(sock)
    if tls is not None:
        stream = trio.SSLStream(stream, tls, server_hostname="shop.example.com")
    async with stream:
        await stream.send_all(request)
        received = b""
        slow_until = trio.current_time() + 4
        with trio.fail_after(60):
            while len(received.partition(b"\r\n\r\n")[2]) < body:
                if trio.current_time() < slow_until:
                    if pace is None:
                        await trio.sleep_until(slow_until)
                        continue
                    await trio.sleep(pace)
                    size = 4096
                else:
                    size = 1 << 20
                try:
                    chunk = await stream.receive_some(size)
                except trio.BrokenResourceError:
                    return received, True
                if not chunk:
                    return received, True
                received += chunk
    return received, False


@pytest.mark.parametrize(
    ("pace", "https"),
    [(0.05, False), (None, False), (0.05, True)],
    ids=["steady", "stopped", "tls"],
)
async def test_a_slow_but_steady_reader_gets_its_whole_download(
    pace: float | None, https: bool, tmp_path: Path
) -> None:
    """ALB's idle timeout ends a connection after "no data sent or received" for that long;
    a client reading a download more slowly than the target sends it is not idle, one that
    stopped reading is. The write deadline used to be set once per read from the target,
    and a wait for room in the client's send buffer (which frees only a third of a buffer
    of megabytes at a time) outlasted it: a steady reader lost its download one idle
    timeout in (found by a report-only hunt)."""
    size = 12 << 20  # far more than the kernel buffers between target and client hold

    async def fast(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        await stream.send_all(b"d" * size)
        await stream.receive_some(1)  # until the balancer is done with the connection

    lst = listener(idle_timeout_seconds=1)
    ca = trustme.CA()
    if https:
        lst = HttpsListener(
            name="front",
            host="127.0.0.1",
            port=0,
            default_action=Forward(target_group="web"),
            certificates=(write_pair(ca, tmp_path, "shop", "shop.example.com"),),
            idle_timeout_seconds=1,
        )
    async with (
        raw_target(fast) as target,
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        received, ended = await download(
            front(daemon),
            b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n",
            body=size,
            pace=pace,
            tls=client_context(ca) if https else None,
        )
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    body = received.partition(b"\r\n\r\n")[2]
    if pace is None:  # cut off a second or so after the client's window closed
        assert ended
        assert len(body) < size
    else:
        assert not ended, len(body)
        assert body == b"d" * size


async def test_a_target_answering_while_it_reads_the_body_gets_all_of_it():
    """A target may answer at once and stream its response as the body arrives ("full
    duplex"). RFC 9112 9.5: a client stops sending its body early only when the response
    says the server closes; this one keeps its connection and needs the rest of the body
    to finish. The balancer used to stop the upload at any final response head, and the
    exchange stalled until the idle timeout (found by a report-only hunt)."""
    bodies: list[bytes] = []

    async def duplex(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                bodies.append(b"")
                head = h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])
                await stream.send_all(conn.send(head))
            elif isinstance(event, h11.Data):
                bodies[-1] += event.data
                await stream.send_all(conn.send(h11.Data(data=b"<%s>" % event.data)))
            elif isinstance(event, h11.EndOfMessage):
                await stream.send_all(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
            else:
                return

    async with (
        raw_target(duplex) as target,
        balancer(config([listener()], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        conn = client.conn
        request = h11.Request(
            method="POST", target="/duplex", headers=[("host", "x"), ("content-length", "9")]
        )
        answer = b""
        with trio.fail_after(10):
            await client.stream.send_all(conn.send(request))
            for piece in (b"aaa", b"bbb", b"ccc"):
                await client.stream.send_all(conn.send(h11.Data(data=piece)) or b"")
                while b"<%s>" % piece not in answer:  # the target's answer to each piece
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await client.stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        assert event.status_code == 200
                        assert b"close" not in dict(event.headers).get(b"connection", b"")
                    elif isinstance(event, h11.Data):
                        answer += event.data
            await client.stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA:
                    conn.receive_data(await client.stream.receive_some(65536))
            conn.start_next_cycle()
            assert answer == b"<aaa><bbb><ccc>"
            # Both exchanges ended cleanly: the client connection serves the next request.
            assert (await client.request("POST", "/again", body=b"x"))[:3:2] == (200, b"<x>")
    assert bodies == [b"aaabbbccc", b"x"]


def elb_answers(daemon: object) -> dict[str, float]:
    """The balancer's own answers so far, by code class."""
    answers: dict[str, float] = {}
    for metric in daemon.metrics.registry.collect():  # type: ignore[attr-defined]
        for s in metric.samples:
            if s.name == "wharf_balancer_http_requests_total" and s.labels["source"] == "elb":
                code_class = s.labels["code_class"]
                answers[code_class] = answers.get(code_class, 0) + s.value
    return {code_class: value for code_class, value in answers.items() if value}


async def test_a_target_that_stops_reading_the_body_is_the_targets_timeout_not_the_clients():
    # The client sends its body as fast as it can; the target reads the head and no more.
    # Once the balancer's writes to the target block, it stops reading the client, and the
    # body's deadline passed there: counted and logged as the client's 408
    # RequestBodyTimeout, an ELB 4xx, when the target was the one that stalled. Now the idle
    # timeout from the target's last progress runs out, and that is the target's 504.
    async def reads_the_head_only(stream: trio.SocketStream) -> None:
        buffered = b""
        while b"\r\n\r\n" not in buffered:
            buffered += await stream.receive_some(65536)
        await trio.sleep_forever()

    lst = listener(timeouts=ListenerTimeouts(request_body_seconds=0.5), idle_timeout_seconds=1)
    async with (
        raw_target(reads_the_head_only) as target,
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        stream = await trio.open_tcp_stream(*front(daemon))
        size = 256 << 20
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size

        async def send_body() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(head)
                chunk = b"x" * 65536
                for _ in range(size // len(chunk)):
                    await stream.send_all(chunk)

        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(send_body)
            with trio.fail_after(10):
                while not elb_answers(daemon):  # noqa: ASYNC110 - bounded poll of a count
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert elb_answers(daemon) == {"5xx": 1}
        by_code = daemon.metrics.registry.get_sample_value(
            "wharf_balancer_http_elb_5xx_responses_total", {"listener": "front", "code": "504"}
        )
        assert by_code == 1


async def test_a_blocked_write_of_a_whole_body_keeps_the_response_timeout(monkeypatch):
    """A body that arrived whole but had to wait to reach the target (a blocked write: the
    idle timeout from the target's last progress) then gets target_response_seconds for its
    answer, not what was left of the idle timeout: a target allowed 10 s to answer got a 504
    after the 1 s idle timeout."""
    tune = upstream_module.tune_socket

    def small_send_buffer(sock: trio.socket.SocketType) -> None:
        tune(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    monkeypatch.setattr(upstream_module, "tune_socket", small_send_buffer)
    size = 100 << 10

    async def reads_late_then_thinks(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while not isinstance(conn.next_event(), h11.Request):
            conn.receive_data(await stream.receive_some(4096))
        await trio.sleep(0.8)  # not reading: the balancer's write blocks
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(1 << 20))
        await trio.sleep(2.5)  # thinking: past the idle timeout, inside the response timeout
        response = h11.Response(status_code=200, headers=[("content-length", "2")])
        await stream.send_all(
            conn.send(response) + conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage())
        )
        await trio.sleep(1)

    lst = listener(idle_timeout_seconds=1, timeouts=ListenerTimeouts(target_response_seconds=10))
    async with (
        raw_target(reads_late_then_thinks, receive_buffer=4096) as target,
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        raw = socket.create_connection(front(daemon))
        raw.setblocking(False)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
        async with stream:
            request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
            data = request + b"x" * size
            sent = raw.send(data)
            time.sleep(0.3)  # noqa: ASYNC251 - hold the loop: the balancer then reads it all at once
            await stream.send_all(data[sent:])
            reply = b""
            with trio.fail_after(8):
                while b"\r\n\r\n" not in reply and (chunk := await stream.receive_some(65536)):
                    reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:80]
