from __future__ import annotations

import ipaddress
import socket

import h11
import trio
import trio.testing

from balancer.config import BalancerConfig, FixedResponse, HttpListener
from balancer.listeners.exchange import Client, ClientInfo, Exchange, parse_address, respond
from balancer.runtime import Runtime
from tests.support.descriptors import FD_SETSIZE, new_descriptors_past_fd_setsize


def test_addresses_are_parsed_once_with_ipv4_mapped_as_ipv4():
    assert parse_address("10.0.0.1") == ipaddress.ip_address("10.0.0.1")
    assert parse_address("::ffff:10.0.0.1") == ipaddress.ip_address("10.0.0.1")
    assert parse_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_address("nonsense") is None


def exchange(method: str = "GET") -> tuple[Client, Exchange, trio.abc.Stream]:
    listener = HttpListener(name="f", port=0, default_action=FixedResponse(status_code=200))
    runtime = Runtime(BalancerConfig(listeners=(listener,)), now=0.0)
    send, receive = trio.testing.memory_stream_pair()
    client = Client(send, ClientInfo("127.0.0.1", 1, 2), 4096)
    client.conn.receive_data(f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    request = client.conn.next_event()
    assert isinstance(request, h11.Request)
    snapshot = runtime.current
    ex = Exchange(snapshot, snapshot.listeners["f"], request, started=0.0, client=client)
    return client, ex, receive


async def test_respond_sends_a_whole_response_and_counts_its_bytes():
    client, ex, receive = exchange()
    assert ex.headers == [(b"host", b"x")]
    assert await respond(client, ex, 503, b"busy\n", close=True)
    answer = await receive.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert answer.endswith(b"busy\n")
    assert b"connection: close" in answer
    assert client.sent == len(answer)
    assert ex.status == 503
    assert not await respond(client, ex, 500)  # a second answer is refused


async def test_respond_to_head_sends_no_body():
    client, ex, receive = exchange("HEAD")
    assert await respond(client, ex, 200, b"hello")
    answer = await receive.receive_some(4096)
    assert b"content-length: 5" in answer
    assert answer.endswith(b"\r\n\r\n")


async def test_a_closed_memory_stream_reads_as_the_end():
    client, _, receive = exchange()
    await receive.aclose()
    assert await client.receive() == b""
    assert not await client.left()  # not a socket: nothing to peek at


async def test_a_client_numbered_past_fd_setsize_is_seen_to_leave():
    # left() runs for a slow response; on a balancer with a thousand clients it once used
    # select(), which refuses such numbers, and the request failed with a ValueError.
    with new_descriptors_past_fd_setsize():
        ours, theirs = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    client = Client(stream, ClientInfo("127.0.0.1", 1, 2), 4096)
    assert ours.fileno() >= FD_SETSIZE
    assert not await client.left()
    theirs.send(b"GET /next HTTP/1.1\r\n")  # a pipelined request: still there
    assert not await client.left()
    theirs.close()
    await client.receive()  # the pipelined bytes; the end of the stream follows
    assert await client.left()
    await stream.aclose()


def test_wait_for_moves_the_deadline_and_names_the_phase():
    _, ex, _ = exchange()

    async def check() -> None:
        ex.wait_for("body", 5.0)
        assert ex.phase == "body"
        assert ex.guard.deadline == trio.current_time() + 5.0

    trio.run(check, clock=trio.testing.MockClock())


def test_a_client_reads_the_runs_clock():
    async def check() -> None:
        send, _ = trio.testing.memory_stream_pair()
        client = Client(send, ClientInfo("127.0.0.1", 1, 2), 4096)
        assert client.now() == trio.current_time()
        await trio.sleep(1.5)
        assert client.now() == trio.current_time() >= 1.5

    trio.run(check, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_client_made_outside_a_run_reads_the_clock_of_the_run_it_serves_in():
    send, _ = trio.testing.memory_stream_pair()
    client = Client(send, ClientInfo("127.0.0.1", 1, 2), 4096)
    clock = trio.testing.MockClock()
    clock.jump(100.0)

    async def check() -> None:
        assert client.now() == trio.current_time() >= 100.0

    trio.run(check, clock=clock)


async def test_a_half_close_after_a_whole_request_is_no_leaving():
    for request, gone in (
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab", True),
    ):
        ours, theirs = socket.socketpair()
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        client = Client(stream, ClientInfo("127.0.0.1", 1, 2), 4096)
        theirs.send(request)
        client.conn.receive_data(await client.receive())
        while client.conn.next_event() is not h11.NEED_DATA:
            pass
        theirs.shutdown(socket.SHUT_WR)
        assert await client.left() is gone
        theirs.close()
        await stream.aclose()
