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

from balancer.config import (
    AccessLog,
    Forward,
    GroupStickiness,
    Stickiness,
    TargetGroup,
    WeightedTargetGroup,
)
from balancer.stickiness import (
    APP_COOKIE,
    GROUP_COOKIE,
    GROUP_CORS_COOKIE,
    LB_COOKIE,
    LB_CORS_COOKIE,
)
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

    async def handshake(self, host: str, *, cookie: str | None = None) -> AcceptConnection:
        extra = [(b"cookie", cookie.encode())] if cookie else []
        request = Request(host=host, target="/chat", extra_headers=extra)
        await self.stream.send_all(self.ws.send(request))
        accepted = await self.expect(AcceptConnection)
        assert isinstance(accepted, AcceptConnection)
        return accepted

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


def sticky_setup(
    kind: str, a: TargetServer, b: TargetServer, c: TargetServer
) -> tuple[Forward, list[TargetGroup], set[str]]:
    """The action, groups and the cookies a 101 must set for one kind of stickiness."""
    if kind == "lb_cookie":
        web = group("web", a, b, c, stickiness=Stickiness(enabled=True))
        return Forward(target_group="web"), [web], {LB_COOKIE, LB_CORS_COOKIE}
    if kind == "app_cookie":
        app = Stickiness(enabled=True, type="app_cookie", cookie_name="SESSION")
        web = group("web", a, b, c, stickiness=app)
        return Forward(target_group="web"), [web], {"SESSION", APP_COOKIE}
    weighted = Forward(
        target_groups=(WeightedTargetGroup(name="blue"), WeightedTargetGroup(name="green")),
        stickiness=GroupStickiness(enabled=True),
    )
    groups = [group("blue", a), group("green", b)]  # c takes no part
    return weighted, groups, {GROUP_COOKIE, GROUP_CORS_COOKIE}


@pytest.mark.parametrize("kind", ["lb_cookie", "app_cookie", "group"])
async def test_a_websocket_client_reconnects_to_the_target_its_101_made_it_sticky_to(
    kind: str, tmp_path
) -> None:
    """The 101 carries the stickiness cookies (AWSALB, AWSALBAPP-0 next to the application's
    own, AWSALBTG) as any forwarded response does: it is the one response a WebSocket-only
    client gets. It carried none, so such a client's reconnects landed on any target (found
    by a report-only hunt)."""
    key_file = tmp_path / "sticky.key"
    key_file.write_bytes(b"0123456789abcdef0123456789abcdef")
    servers = [TargetServer(name, websocket) for name in ("a", "b", "c")]
    for server in servers:  # the application starts its session in the handshake
        server.websocket_headers = [("set-cookie", f"SESSION=ws-{server.name}; Path=/")]
    async with running_targets(*servers) as (a, b, c):
        action, groups, expected = sticky_setup(kind, a, b, c)
        cfg = config([listener(action)], groups, key_file=str(key_file))
        async with balancer(cfg) as daemon:

            async def connect(cookie: str | None = None) -> dict[str, list[str]]:
                stream = await trio.open_tcp_stream(*front(daemon))
                async with stream:
                    client = WsClient(stream)
                    accepted = await client.handshake("chat.example.com", cookie=cookie)
                    await stream.send_all(client.ws.send(CloseConnection(code=1000)))
                    await client.expect(CloseConnection)
                headers: dict[str, list[str]] = {}
                for name, value in accepted.extra_headers:
                    headers.setdefault(name.decode(), []).append(value.decode())
                return headers

            first = await connect()
            (owner,) = first["x-target"]
            jar = dict(c.partition(";")[0].partition("=")[::2] for c in first.get("set-cookie", []))
            assert expected <= set(jar)
            cookie = "; ".join(f"{name}={value}" for name, value in jar.items())
            for _ in range(6):
                assert (await connect(cookie))["x-target"] == [owner]


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


async def test_a_tunnels_bytes_count_in_processed_bytes_as_they_move():
    """ALB's ProcessedBytes, and a counter as Prometheus reads it, follow the traffic: a
    WebSocket's bytes were counted only when its tunnel closed, so a tunnel open for hours
    showed no traffic at all, then all of it at once in one scrape. They count as they move,
    and the tunnel's end adds nothing twice."""
    labels = {"listener": "front"}

    def processed(direction: str) -> float:
        name = "wharf_balancer_http_processed_bytes_total"
        return sample(daemon, name, {**labels, "direction": direction})

    async with (
        running_targets(TargetServer("ws", websocket)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        stream = await trio.open_tcp_stream(*front(daemon))
        sent = 0
        send_all = stream.send_all

        async def counted_send_all(data: bytes) -> None:
            nonlocal sent
            sent += len(data)
            await send_all(data)

        stream.send_all = counted_send_all  # type: ignore[method-assign]
        client = WsClient(stream)
        await client.handshake("chat.example.com")
        await echo_bytes(stream, client, b"x" * 20000)
        # The frames' bytes are in both directions already, the tunnel still open.
        assert processed("in") >= 20000
        assert processed("out") >= 20000
        await stream.send_all(client.ws.send(CloseConnection(code=1000)))
        await stream.aclose()
        with trio.fail_after(5):
            while sample(daemon, "wharf_balancer_http_connections_active", labels):  # noqa: ASYNC110 (a gauge: no event to wait on)
                await trio.sleep(0.01)
        # Counted once: what the client sent, the handshake and every frame.
        assert processed("in") == sent
