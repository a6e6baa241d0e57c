"""TlsSocket on both sides, over real socket pairs, against the standard library's TLS (trio's
SSLStream) as the peer: the handshake, reads that leave nothing decryptable behind (so waiting
on the descriptor stays truthful), close_notify on close, and the alert a failed handshake
sends."""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trustme

from balancer.target_tls import BACKEND_TLS13_POLICY, client_context
from balancer.tls_socket import TlsSocket
from monitoring import fastio
from tests.support.socket_pairs import raw_pair
from tests.support.tls_targets import server_context


async def client_to_stdlib_server() -> tuple[TlsSocket, trio.SSLStream[trio.SocketStream]]:
    """Our client side, handshaken with a standard-library server."""
    ours, theirs = raw_pair()
    tls = TlsSocket(ours, client_context(BACKEND_TLS13_POLICY), None)
    peer = trio.SSLStream(trio.SocketStream(theirs), server_context(trustme.CA()), server_side=True)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.do_handshake)
            await tls.handshake()
    return tls, peer


async def server_to_stdlib_client(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str | None = "127.0.0.1"
) -> tuple[TlsSocket, trio.SSLStream[trio.SocketStream]]:
    """Our server side, handshaken with a standard-library client."""
    ours, theirs = raw_pair()
    tls = TlsSocket(ours, server, None, server_side=True)
    peer = trio.SSLStream(trio.SocketStream(theirs), client, server_hostname=hostname)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.do_handshake)
            await tls.handshake()
    return tls, peer


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def test_a_read_takes_every_record_already_received():
    client, peer = await client_to_stdlib_server()
    for i in range(3):  # three writes: three TLS records of 10 KB each
        await peer.send_all(bytes([i]) * 10_000)
    stream = trio.SocketStream(client)
    with trio.fail_after(5):
        data = b""
        while len(data) < 30_000:  # the first read may come before all three arrived
            data += await stream.receive_some(1 << 18)
    assert data == b"\x00" * 10_000 + b"\x01" * 10_000 + b"\x02" * 10_000
    # Nothing decryptable stayed behind: the descriptor says "nothing to read", truly.
    assert not client.is_readable()
    assert not fastio.readable_now(client.fileno())
    await stream.send_all(b"ping")
    assert await peer.receive_some(10) == b"ping"


async def test_close_says_goodbye_and_the_end_reads_as_empty():
    client, peer = await client_to_stdlib_server()
    client.close()
    with trio.fail_after(5):
        assert await peer.receive_some(10) == b""  # a close_notify, not a bare FIN
    other, other_peer = await client_to_stdlib_server()
    await other_peer.aclose()
    with trio.fail_after(5):
        assert await other.recv(100) == b""
        assert await other.recv(100) == b""  # and stays ended
    other.close()
    with pytest.raises(trio.ClosedResourceError):
        await other.send(b"after the close")


async def test_the_server_side_serves_sni_alpn_and_data_both_ways():
    ca = trustme.CA()
    names: list[str | None] = []
    server = server_context(ca, "a.example.com")
    server.sni_callback = lambda _obj, name, _ctx: names.append(name)
    tls, peer = await server_to_stdlib_client(server, trusting(ca), "a.example.com")
    assert names == ["a.example.com"]
    assert tls.selected_alpn_protocol() == "http/1.1"
    assert tls.version() == peer.version()
    assert tls.cipher() == peer.cipher()
    assert tls.context is server
    stream = trio.SocketStream(tls)
    await peer.send_all(b"GET / HTTP/1.1\r\n\r\n")
    with trio.fail_after(5):
        assert await stream.receive_some(100) == b"GET / HTTP/1.1\r\n\r\n"
    await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert await peer.receive_some(100) == b"HTTP/1.1 204 No Content\r\n\r\n"
    tls.close()
    with trio.fail_after(5):
        assert await peer.receive_some(10) == b""  # close_notify: a clean end for the client


async def test_the_sni_callback_may_move_the_server_to_another_context():
    ca = trustme.CA()
    default = server_context(ca, "default.example.com")
    named = server_context(ca, "b.example.com")

    def choose(connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if name == "b.example.com":
            connection.context = named

    default.sni_callback = choose
    tls, peer = await server_to_stdlib_client(default, trusting(ca), "b.example.com")
    assert tls.context is named  # the client verified b.example.com's certificate
    assert peer.getpeercert() is not None


async def test_a_failed_handshake_tells_the_client_why():
    # A TLS 1.3-only server and a TLS 1.2-only client: the server answers with a
    # protocol_version alert, which the client reports, instead of a bare end of stream.
    ca = trustme.CA()
    server = server_context(ca)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    client = trusting(ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    ours, theirs = raw_pair()
    tls = TlsSocket(ours, server, None, server_side=True)
    peer = trio.SSLStream(trio.SocketStream(theirs), client, server_hostname="127.0.0.1")
    failures: list[BaseException] = []

    async def client_side() -> None:
        try:
            await peer.do_handshake()
        except trio.BrokenResourceError as exc:
            failures.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_side)
            with pytest.raises(ssl.SSLError) as ours_failed:
                await tls.handshake()
    assert ours_failed.value.reason == "UNSUPPORTED_PROTOCOL"
    [failure] = failures
    assert isinstance(failure.__cause__, ssl.SSLError)
    assert failure.__cause__.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


async def test_it_is_a_stream_socket_for_trio():
    tcp = trio.socket.socket()
    tls = TlsSocket(tcp, client_context(BACKEND_TLS13_POLICY), None)
    assert tls.type == socket.SOCK_STREAM
    assert tls.fileno() == tcp.fileno()
    assert tls.tcp is tcp
    tls.close()
    assert tcp.fileno() == -1


async def test_a_hello_already_waiting_is_read_before_the_first_handshake_step():
    ca = trustme.CA()
    ours, theirs = raw_pair()
    tls = TlsSocket(ours, server_context(ca), None, server_side=True)
    peer = trio.SSLStream(trio.SocketStream(theirs), trusting(ca), server_hostname="127.0.0.1")
    steps = 0
    do_handshake = tls._tls.do_handshake

    def counted() -> None:
        nonlocal steps
        steps += 1
        do_handshake()

    tls._tls.do_handshake = counted  # type: ignore[method-assign]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.do_handshake)
            await trio.testing.wait_all_tasks_blocked()  # the hello is in our socket now
            await tls.handshake()
    # The hello, then the client's Finished: two steps, none that found nothing to read.
    assert steps == 2
    assert tls.version() == peer.version()


async def test_a_client_gone_before_its_hello_fails_the_handshake():
    ca = trustme.CA()
    ours, theirs = raw_pair()
    theirs.close()
    tls = TlsSocket(ours, server_context(ca), None, server_side=True)
    with trio.fail_after(5), pytest.raises((ssl.SSLError, trio.BrokenResourceError)):
        await tls.handshake()
