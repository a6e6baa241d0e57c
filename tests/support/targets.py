"""Programmable HTTP targets on 127.0.0.1 for balancer tests (h11 and wsproto, on trio).

A :class:`TargetServer` counts accepted connections (to prove keep-alive reuse), records
every request it saw, and answers with a :data:`Handler` chosen by the test: echo the
request as JSON, stream a big body, stall, close without answering, speak garbage, or
upgrade to a WebSocket echo.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Request,
    TextMessage,
)


@dataclass
class Seen:
    """One request a target received."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Reply:
    """What a handler wants sent: status, headers, and a body (bytes or chunks)."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None  # streamed, chunked, when given
    hang_up: bool = False  # close the connection after this reply without saying so


class Action:
    """Special outcomes a handler can return instead of a Reply."""

    CLOSE = "close"  # close the connection without answering
    GARBAGE = "garbage"  # answer bytes that are not HTTP
    WEBSOCKET = "websocket"  # accept a WebSocket upgrade and echo messages


Handler = Callable[[Seen, "TargetServer"], Awaitable["Reply | str"]]


async def echo(seen: Seen, server: TargetServer) -> Reply | str:
    """Answer with the request as JSON (and ``x-target`` naming this target)."""
    body = json.dumps(
        {
            "method": seen.method,
            "target": seen.target,
            "headers": seen.headers,
            "body_length": len(seen.body),
        }
    ).encode()
    return Reply(200, [("content-type", "application/json"), ("x-target", server.name)], body)


class TargetServer:
    """A target listening on 127.0.0.1:<ephemeral>."""

    def __init__(self, name: str = "t", handler: Handler = echo) -> None:
        self.name = name
        self.handler = handler
        self.accepts = 0
        self.seen: list[Seen] = []
        self.port = 0
        self.open_connections = 0
        # Besides ``x-target``, what a WebSocket upgrade's 101 carries (an app cookie...).
        self.websocket_headers: list[tuple[str, str]] = []

    async def serve(self, *, task_status: trio.TaskStatus[TargetServer]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.accepts += 1
        self.open_connections += 1
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            self.open_connections -= 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is h11.IDLE:
                        return
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    break
                else:
                    return
            assert request is not None
            seen = Seen(
                request.method.decode(),
                request.target.decode(),
                [(k.decode(), v.decode("latin-1")) for k, v in request.headers],
                body,
            )
            self.seen.append(seen)
            outcome = await self.handler(seen, self)
            if outcome == Action.CLOSE:
                return
            if outcome == Action.GARBAGE:
                await stream.send_all(b"this is not http\r\n\r\n")
                return
            if outcome == Action.WEBSOCKET:
                headers = [("x-target", self.name), *self.websocket_headers]
                await _websocket_echo(stream, conn, request, headers)
                return
            assert isinstance(outcome, Reply)
            await self._reply(stream, conn, outcome, head_only=request.method == b"HEAD")
            if conn.our_state is h11.MUST_CLOSE or outcome.hang_up:
                return
            conn.start_next_cycle()

    async def _reply(
        self, stream: trio.SocketStream, conn: h11.Connection, reply: Reply, *, head_only: bool
    ) -> None:
        headers = list(reply.headers)
        if reply.chunks is None and not any(k.lower() == "content-length" for k, _ in headers):
            headers.append(("content-length", str(len(reply.body))))
        await stream.send_all(conn.send(h11.Response(status_code=reply.status, headers=headers)))
        if head_only:
            pass
        elif reply.chunks is not None:
            async for chunk in reply.chunks:
                await stream.send_all(conn.send(h11.Data(data=chunk)))
        elif reply.body:
            await stream.send_all(conn.send(h11.Data(data=reply.body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))


async def _websocket_echo(
    stream: trio.SocketStream,
    conn: h11.Connection,
    request: h11.Request,
    headers: list[tuple[str, str]],
) -> None:
    """Complete the upgrade with wsproto (a 101 with ``headers`` besides the handshake's) and
    echo every message until the client closes."""
    extra = [(name.encode(), value.encode()) for name, value in headers]
    ws = WSConnection(ConnectionType.SERVER)
    head = b"%s %s HTTP/1.1\r\n" % (request.method, request.target)
    head += b"".join(b"%s: %s\r\n" % (k, v) for k, v in request.headers.raw_items()) + b"\r\n"
    ws.receive_data(head + conn.trailing_data[0])
    while True:
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection(extra_headers=extra)))
            elif isinstance(event, Message):
                payload = event.data
                out = (
                    TextMessage(data=payload)
                    if isinstance(payload, str)
                    else BytesMessage(data=payload)
                )
                await stream.send_all(ws.send(out))
            elif isinstance(event, CloseConnection):
                await stream.send_all(ws.send(event.response()))
                return
        data = await stream.receive_some(65536)
        if not data:
            return
        ws.receive_data(data)


@contextlib.asynccontextmanager
async def running_targets(*servers: TargetServer) -> AsyncIterator[list[TargetServer]]:
    """Start every server; stop them when the block ends."""
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.serve)
        try:
            yield list(servers)
        finally:
            nursery.cancel_scope.cancel()
