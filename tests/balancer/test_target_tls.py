"""TLS to targets on real sockets: the unverified client context, SNI and ALPN, and a
handshake against a server that does not speak TLS (TlsSocket itself: test_tls_socket.py)."""

from __future__ import annotations

import ssl

import pytest
import trio
import trustme

from balancer import target_tls
from balancer.target_tls import client_context, server_name
from balancer.tls_socket import TlsSocket
from tests.support.tls_targets import server_context


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("10.0.0.1", None),
        ("::1", None),
        ("fe80::1%eth0", None),
        ("app.internal", "app.internal"),
        ("localhost", "localhost"),
    ],
)
def test_sni_is_the_name_and_never_an_address(host, expected):
    assert server_name(host) == expected


def test_the_context_verifies_nothing_and_offers_http_1_1():
    context = client_context()
    assert context.verify_mode is ssl.CERT_NONE
    assert not context.check_hostname
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert client_context() is not context  # built per generation by the runtime


class Server:
    """One TLS server connection at a time, driven by the test through ``accepted``."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.names: list[str | None] = []
        context.sni_callback = lambda _obj, name, _ctx: self.names.append(name)
        self.port = 0
        self.send, self.accepted = trio.open_memory_channel[trio.SSLStream[trio.SocketStream]](1)

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, self.context, server_side=True)
        await tls.do_handshake()
        await self.send.send(tls)
        await trio.sleep_forever()  # the test owns the stream now


async def connect(port: int, hostname: str | None) -> TlsSocket:
    tcp = trio.socket.socket()
    await tcp.connect(("127.0.0.1", port))
    tls = TlsSocket(tcp, client_context(), hostname)
    with trio.fail_after(5):
        await tls.handshake()
    return tls


@pytest.fixture
async def server(nursery):
    found = Server(server_context(trustme.CA()))  # a CA nobody on the client side trusts
    await nursery.start(found.serve)
    return found


async def test_an_untrusted_certificate_is_accepted_with_sni_and_alpn(server):
    named = await connect(server.port, "target.example")
    bare = await connect(server.port, None)
    assert named.selected_alpn_protocol() == "http/1.1"
    assert server.names == ["target.example", None]
    named.close()
    bare.close()


async def test_a_plain_http_server_fails_the_handshake(nursery):
    async def http(stream: trio.SocketStream) -> None:
        await stream.receive_some(1000)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, http, listeners)
    tcp = trio.socket.socket()
    await tcp.connect(("127.0.0.1", port))
    with pytest.raises(ssl.SSLError), trio.fail_after(5):
        await target_tls.wrap(tcp, client_context(), "127.0.0.1")
    tcp.close()
