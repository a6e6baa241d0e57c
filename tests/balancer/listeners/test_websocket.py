"""WebSocket through the balancer: the upgrade is forwarded, then bytes flow both ways."""

from __future__ import annotations

import shlex

import pytest
import trio
import trustme
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
    TextMessage,
)

from balancer.config import AccessLog
from tests.balancer.listeners.test_forward import download, raw_target, read_request_head
from tests.support.balancer_http import balancer, config, front, group, listener, sample
from tests.support.targets import Action, Reply, Seen, TargetServer, running_targets
from tests.support.tls_targets import TlsTargetServer, server_context


async def websocket(seen: Seen, server: TargetServer) -> Reply | str:
    return Action.WEBSOCKET


class WsClient:
    """A wsproto client over a trio stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    async def handshake(self, host: str) -> None:
        await self.stream.send_all(self.ws.send(Request(host=host, target="/chat")))
        await self.expect(AcceptConnection)

    async def expect(self, kind: type) -> object:
        with trio.fail_after(5):
            while True:
                for event in self.ws.events():
                    if isinstance(event, kind):
                        return event
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError
                self.ws.receive_data(data)


async def echo_bytes(stream: trio.SocketStream, client: WsClient, payload: bytes) -> None:
    """Send ``payload`` as one binary message; the echo may come back in several frames."""
    await stream.send_all(client.ws.send(BytesMessage(data=payload)))
    received = b""
    while len(received) < len(payload):
        message = await client.expect(BytesMessage)
        assert isinstance(message, BytesMessage)
        received += message.data
    assert received == payload


async def test_messages_are_echoed_through_the_tunnel():
    async with (
        running_targets(TargetServer("ws", websocket)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        stream = await trio.open_tcp_stream(*front(daemon))
        async with stream:
            client = WsClient(stream)
            await client.handshake("chat.example.com")
            await stream.send_all(client.ws.send(TextMessage(data="hello")))
            echoed = await client.expect(TextMessage)
            assert isinstance(echoed, TextMessage)
            assert echoed.data == "hello"
            await echo_bytes(stream, client, bytes(range(256)) * 1024)
            await stream.send_all(client.ws.send(CloseConnection(code=1000)))
            await client.expect(CloseConnection)
        (seen,) = target.seen
        assert seen.header("upgrade") == "websocket"
        assert seen.header("connection") == "upgrade"
        assert seen.header("x-forwarded-for") == "127.0.0.1"


async def test_an_idle_tunnel_is_closed_after_the_idle_timeout():
    lst = listener(idle_timeout_seconds=1)
    async with (
        running_targets(TargetServer("ws", websocket)) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        stream = await trio.open_tcp_stream(*front(daemon))
        async with stream:
            client = WsClient(stream)
            await client.handshake("x.example.com")
            start = trio.current_time()
            with trio.fail_after(5):
                while await stream.receive_some(100):
                    pass
            assert trio.current_time() - start >= 0.9
        with trio.fail_after(3):
            while target.open_connections:  # noqa: ASYNC110 (a counter: no event to wait on)
                await trio.sleep(0.05)


async def test_an_upgrade_the_target_declines_is_an_ordinary_response():
    async with (
        running_targets(TargetServer("plain")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        stream = await trio.open_tcp_stream(*front(daemon))
        async with stream:
            client = WsClient(stream)
            await stream.send_all(client.ws.send(Request(host="x.example.com", target="/")))
            with trio.fail_after(5):
                answer = await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 200")


async def test_a_websocket_to_an_https_target_tunnels_over_tls():
    target = TlsTargetServer("wss", websocket, context=server_context(trustme.CA()))
    async with (
        running_targets(target),
        balancer(config([listener()], [group("web", target, protocol="https")])) as daemon,
    ):
        stream = await trio.open_tcp_stream(*front(daemon))
        async with stream:
            client = WsClient(stream)
            await client.handshake("chat.example.com")
            payload = bytes(range(256)) * 512  # several TLS records each way
            for _ in range(2):
                await echo_bytes(stream, client, payload)
            await stream.send_all(client.ws.send(CloseConnection(code=1000)))
            await client.expect(CloseConnection)
    assert target.handshakes == 1
    assert target.seen[0].header("upgrade") == "websocket"


async def test_the_access_log_ends_response_processing_time_at_the_101(tmp_path):
    # ALB's ws lines show the time to start the response (the 101), not the tunnel's life.
    path = tmp_path / "access.log"
    lst = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    async with (
        running_targets(TargetServer("ws", websocket)) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        stream = await trio.open_tcp_stream(*front(daemon))
        async with stream:
            client = WsClient(stream)
            await client.handshake("chat.example.com")
            await trio.sleep(1.2)  # the tunnel stays open a while
            await stream.send_all(client.ws.send(CloseConnection(code=1000)))
            await client.expect(CloseConnection)
        await trio.sleep(1.3)  # the app flushes access logs once a second
    (line,) = path.read_text().splitlines()
    fields = shlex.split(line)
    assert (fields[0], fields[8]) == ("ws", "101")
    assert 0 <= float(fields[7]) < 0.5


async def test_a_tunnel_cut_when_a_drain_ends_is_logged_and_counted(tmp_path):
    # The tunnel's cancellation leaves its pumps' nursery as a group: it is still a drain cut.
    path = tmp_path / "access.log"
    lst = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    labels = {
        "listener": "front",
        "rule": "default",
        "target_group": "web",
        "code_class": "1xx",
        "source": "target",
    }
    async with running_targets(TargetServer("ws", websocket)) as (target,):
        async with balancer(config([lst], [group("web", target)], grace=0.3)) as daemon:
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                client = WsClient(stream)
                await client.handshake("chat.example.com")
                await echo_bytes(stream, client, b"before the drain")
                daemon.request_stop()
                with trio.fail_after(10):
                    while await stream.receive_some(65536):
                        pass  # until the balancer cuts the tunnel
        assert sample(daemon, "wharf_balancer_http_requests_total", labels) == 1
    (line,) = path.read_text().splitlines()
    fields = shlex.split(line)
    assert (fields[0], fields[8], fields[24]) == ("ws", "101", "Draining")


@pytest.mark.parametrize("pace", [0.05, None], ids=["steady", "stopped"])
async def test_a_tunnel_to_a_slow_but_steady_reader_stays_open(pace: float | None) -> None:
    """The tunnel ends after the idle timeout without traffic, and a client that reads
    slowly but steadily is traffic. Its write used to get the idle timeout as a bound on
    the whole write, so the tunnel was cut one idle timeout in (found by a report-only
    hunt); a client that stopped reading still loses it."""
    size = 12 << 20  # far more than the kernel buffers between target and client hold

    async def flood(stream: trio.SocketStream) -> None:
        await read_request_head(stream)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        await stream.send_all(b"w" * size)
        await stream.receive_some(1)  # until the balancer is done with the connection

    lst = listener(idle_timeout_seconds=1)
    async with (
        raw_target(flood) as target,
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        received, ended = await download(
            front(daemon),
            b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            body=size,
            pace=pace,
        )
    assert received.startswith(b"HTTP/1.1 101 ")
    tunnelled = received.partition(b"\r\n\r\n")[2]
    if pace is None:
        assert ended
        assert len(tunnelled) < size
    else:
        assert not ended, len(tunnelled)
        assert tunnelled == b"w" * size
