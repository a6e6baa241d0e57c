from __future__ import annotations

import contextlib
import select
import socket
import struct
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from monitoring import fastio
from tests.support.descriptors import FD_SETSIZE, new_descriptors_past_fd_setsize


async def pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    return trio.socket.socketpair()


@pytest.mark.parametrize("through_trio", [False, True])
async def test_large_writes_finish_and_reads_see_every_byte(monkeypatch, through_trio):
    if through_trio:
        monkeypatch.setattr(fastio, "raw_socket", lambda sock: None)
    a, b = await pair()
    payload = bytes(range(256)) * 8192  # 2 MiB: more than a socket buffer holds
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(payload):
            received.extend(await fastio.receive(b, 65536))

    with a, b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await fastio.send_all(a, payload)
    assert bytes(received) == payload


async def test_the_end_of_the_stream_reads_as_empty():
    a, b = await pair()
    with a, b:
        a.shutdown(socket.SHUT_WR)
        assert await fastio.receive(b, 10) == b""


async def test_a_reset_is_broken_and_a_local_close_is_closed():
    a, b = await pair()
    with b:
        a.close()
        with pytest.raises(trio.BrokenResourceError):
            await fastio.send_all(b, b"x" * (1 << 22))  # more than a buffer: it must fail
    c, d = await pair()
    with d:
        c.close()
        with pytest.raises(trio.ClosedResourceError):
            await fastio.receive(c, 10)


async def test_a_checkpoint_is_taken_even_when_bytes_are_ready():
    a, b = await pair()
    with a, b:
        turns = 0

        async def other() -> None:
            nonlocal turns
            while True:
                turns += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            for _ in range(5):
                await fastio.send_all(a, b"ready")  # never waits: the buffer has room
                assert await fastio.receive(b, 10, checkpoint=True) == b"ready"
            assert turns > 0  # the other task got the loop meanwhile
            nursery.cancel_scope.cancel()


async def test_a_receive_waits_for_bytes_and_can_be_cancelled():
    a, b = await pair()
    with a, b:
        with trio.move_on_after(0.05) as scope:
            await fastio.receive(b, 10)
        assert scope.cancelled_caught


async def gathered(pieces: list[fastio.Buffer]) -> bytes:
    """What the other end of a socket pair reads while ``pieces`` go out in one send_many."""
    a, b = await pair()
    expected = sum(len(p) for p in pieces)
    received = bytearray()

    async def read_all() -> None:
        while len(received) < expected:
            received.extend(await fastio.receive(b, 1 << 18))

    with a, b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await fastio.send_many(a, pieces)
            await fastio.send_many(a, [])
            await fastio.send_many(a, [b"", b""])
    return bytes(received)


@pytest.mark.parametrize("through_trio", [False, True])
async def test_gathered_writes_arrive_whole_and_in_order(monkeypatch, through_trio):
    if through_trio:
        monkeypatch.setattr(fastio, "raw_socket", lambda sock: None)
    pieces: list[fastio.Buffer] = [b"head:", b"", bytearray(b"x" * 3_000_000), memoryview(b":tail")]
    assert await gathered(pieces) == b"".join(bytes(p) for p in pieces)


async def test_more_pieces_than_one_sendmsg_takes_arrive_whole_and_in_order():
    # A body of many small chunks: h11 makes three pieces of each, far past IOV_MAX.
    count = 5 * fastio.IOV_MAX
    pieces: list[fastio.Buffer] = [b"%x\r\n" % n + b"y" * (n % 7) for n in range(count)]
    assert await gathered(pieces) == b"".join(pieces)


async def test_attempts_never_wait_and_say_what_happened():
    a, b = await pair()
    with a, b:
        raw_a, raw_b = fastio.raw_socket(a), fastio.raw_socket(b)
        assert raw_a is not None
        assert raw_b is not None
        assert fastio.try_receive(raw_b, 10) is None  # nothing yet
        assert fastio.try_send(raw_a, b"hello") == 5
        assert fastio.try_receive(raw_b, 10) == b"hello"
        sent = 0
        while taken := fastio.try_send(raw_a, b"x" * 65536):
            sent += taken
        assert sent > 0  # then the buffers were full: 0, not a wait
        a.shutdown(socket.SHUT_WR)
        drained = 0
        while (chunk := fastio.try_receive(raw_b, 1 << 20)) != b"":
            assert chunk is not None  # the end is there: never "nothing yet" on the way
            drained += len(chunk)
        assert drained == sent


def fill_until_refused(raw: socket.socket) -> None:
    for _ in range(100):
        fastio.try_send(raw, b"x" * 65536)


async def test_attempts_raise_trio_errors():
    a, b = await pair()
    with b:
        raw_b = fastio.raw_socket(b)
        assert raw_b is not None
        a.close()
        with pytest.raises(trio.BrokenResourceError):
            fill_until_refused(raw_b)  # the first send may still be taken: then the reset
    c, d = await pair()
    with d:
        raw_c = fastio.raw_socket(c)
        assert raw_c is not None
        c.close()
        with pytest.raises(trio.ClosedResourceError):
            fastio.try_receive(raw_c, 10)
        with pytest.raises(trio.ClosedResourceError):
            fastio.try_send(raw_c, b"x")


def test_readable_now_tells_data_and_the_end_apart_from_nothing_past_fd_setsize():
    with new_descriptors_past_fd_setsize():
        ours, theirs = socket.socketpair()
    with ours, theirs:
        assert ours.fileno() >= FD_SETSIZE
        with pytest.raises(ValueError, match="out of range"):  # what select() made of it
            select.select([ours.fileno()], [], [], 0)  # noqa: TID251 -- the refusal itself
        assert not fastio.readable_now(ours.fileno())
        theirs.send(b"x")
        assert fastio.readable_now(ours.fileno())
        assert ours.recv(1) == b"x"
        assert not fastio.readable_now(ours.fileno())
        theirs.close()
        assert fastio.readable_now(ours.fileno())  # the end of the stream


@contextlib.asynccontextmanager
async def backlog(clients: int) -> AsyncIterator[tuple[trio.SocketListener, list[socket.socket]]]:
    """A listener with ``clients`` connections waiting in its backlog."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    waiting = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
    try:
        await trio.sleep(0.01)  # the handshakes are done: the connections are queued
        yield listener, waiting
    finally:
        for client in waiting:
            client.close()
        await listener.aclose()


async def test_accept_takes_the_backlog_and_waits_for_more():
    async with backlog(3) as (listener, clients):
        streams = [await fastio.accept(listener, checkpoint=i == 1) for i in range(3)]
        for stream, client in zip(streams, clients, strict=True):
            assert isinstance(stream, trio.SocketStream)
            assert stream.socket.getpeername() == client.getsockname()
            assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # as trio's
            client.sendall(b"hi")
            assert await stream.receive_some(10) == b"hi"
            await stream.aclose()
        accepted: list[trio.SocketStream] = []

        async def accept_one() -> None:
            accepted.append(await fastio.accept(listener, checkpoint=False))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_one)
            await trio.testing.wait_all_tasks_blocked()  # the backlog is empty: it waits
            assert not accepted
            port = listener.socket.getsockname()[1]
            clients.append(socket.create_connection(("127.0.0.1", port)))
        [late] = accepted
        assert late.socket.getpeername() == clients[-1].getsockname()
        await late.aclose()


async def test_the_addresses_of_a_connection_whose_client_reset_at_once_are_none():
    async with backlog(2) as (listener, clients):
        gone = clients[0]
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()  # RST while it waits in the backlog: accepted, it has no peer
        reset = await fastio.accept(listener, checkpoint=False)
        alive = await fastio.accept(listener, checkpoint=False)
        assert fastio.accepted_addresses(reset.socket) is None
        peer, local = fastio.accepted_addresses(alive.socket) or ((), ())
        assert peer == clients[1].getsockname()
        assert local == listener.socket.getsockname()
        await reset.aclose()
        await alive.aclose()


async def test_a_burst_of_accepts_still_yields_when_asked():
    async with backlog(2) as (listener, _):
        with trio.testing.assert_no_checkpoints():  # taken at once, no scheduler trip
            (await fastio.accept(listener, checkpoint=False)).socket.close()
        with trio.testing.assert_checkpoints():
            (await fastio.accept(listener, checkpoint=True)).socket.close()


async def test_accept_on_a_closed_listener_is_closed_resource():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]

    async def close_soon() -> None:
        await trio.sleep(0.02)
        listener.socket.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_soon)
        with pytest.raises(trio.ClosedResourceError):
            await fastio.accept(listener, checkpoint=False)
    with pytest.raises(trio.ClosedResourceError):
        await fastio.accept(listener, checkpoint=False)


async def tcp_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A TCP connection on 127.0.0.1 (the send queue SIOCOUTQ reads is TCP's)."""
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = trio.socket.socket()
        # A small window on the reading side, set before connecting: writes wait soon.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return server, client


@pytest.mark.parametrize("reads", [True, False])
async def test_a_waiting_write_reports_the_bytes_its_peer_takes(reads: bool) -> None:
    """``progress`` is told at a write's first wait, then whenever the peer took bytes
    while it waits, however long the socket stays unwritable; not while the peer reads
    nothing (once its kernel has acknowledged what was in flight)."""
    a, b = await tcp_pair()
    calls: list[float] = []

    def progress() -> float:
        calls.append(trio.current_time())
        return 0.2  # looks at the send queue every 0.1 s

    async def read_slowly() -> None:
        while reads:
            await b.recv(4096)
            await trio.sleep(0.01)

    with a, b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_slowly)
            with trio.move_on_after(1.5):
                await fastio.send_all(a, b"p" * (64 << 20), progress=progress)
            nursery.cancel_scope.cancel()
    if reads:
        assert len(calls) >= 5  # about one per look (every 0.1 s) over 1.5 s
    else:  # the first wait, and the acknowledgements of what was in flight then
        assert 1 <= len(calls) <= 3  # of ~15 looks
