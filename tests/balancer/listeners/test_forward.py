"""The forward action on real sockets: headers the target sees, ALB's error answers,
streaming both ways, 100-continue, pooled connections and the stale-connection retry."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import h11
import pytest
import trio

from balancer.config import ListenerTimeouts
from balancer.listeners.exchange import parse_address
from balancer.listeners.forward import is_trusted
from balancer.runtime import ListenerRuntime
from tests.support.balancer_http import (
    Client,
    balancer,
    config,
    front,
    group,
    listener,
    raw,
    statuses,
)
from tests.support.http import read_response
from tests.support.targets import Action, Reply, Seen, TargetServer, running_targets


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
    assert trace.startswith("Root=1-00000000-aaaaaaaaaaaaaaaaaaaaaaaa;Self=1-")


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


@pytest.mark.parametrize("outcome", [Action.GARBAGE, Action.CLOSE])
async def test_502_when_the_target_answers_garbage_or_nothing(outcome: str) -> None:
    async def broken(seen: Seen, server: TargetServer) -> Reply | str:
        return outcome

    async with (
        running_targets(TargetServer("a", broken)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        assert (await client.request("POST", body=b"x"))[0] == 502


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


async def test_expect_100_continue_is_answered_before_the_body_is_sent():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                interim = await stream.receive_some(100)
                assert interim.startswith(b"HTTP/1.1 100 ")
                await stream.send_all(b"hello")
                conn = h11.Connection(h11.CLIENT)
                conn.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
                conn.send(h11.EndOfMessage())
                status, _, body = await read_response(conn, stream)
        assert status == 200
        assert json.loads(body)["body_length"] == 5
        assert target.seen[0].header("expect") is None


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
