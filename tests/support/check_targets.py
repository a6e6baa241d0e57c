"""A local target for tests: answers with a status (keep-alive), hangs, or is down."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import h11
import trio

from balancer.runtime import Runtime


async def until_health(runtime: Runtime, reached: Callable[[], bool], *, within: float) -> None:
    """Wait, at most ``within`` seconds, until ``reached()``: checked after every batch of
    health events the runtime hands its observers (no polling)."""
    with trio.fail_after(within):
        while not reached():
            changed = trio.Event()
            runtime.observers.append(lambda _events, changed=changed: changed.set())
            try:
                await changed.wait()
            finally:
                runtime.observers.pop()


class StubTarget:
    """An HTTP (or HTTPS) server on 127.0.0.1 that tests switch between behaviours.

    ``status`` is what every request gets; ``hang`` makes it accept and never answer;
    ``raw`` replaces the response with these bytes; :meth:`stop` closes the port (connections
    are refused) and :meth:`start` opens the same port again.
    """

    def __init__(self, *, status: int = 200, tls: ssl.SSLContext | None = None) -> None:
        self.status = status
        self.body = b"ok"
        self.tls = tls
        self.hang = False
        self.raw: bytes | None = None
        self.port = 0
        self.requests: list[h11.Request] = []
        self._scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        scope = trio.CancelScope()
        self._scope = scope

        async def serve() -> None:
            with scope:
                await trio.serve_listeners(self._handle, listeners)

        nursery.start_soon(serve)

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn_stream: trio.abc.Stream = stream
        try:
            if self.tls is not None:
                conn_stream = trio.SSLStream(stream, self.tls, server_side=True)
                await conn_stream.do_handshake()
            connection = h11.Connection(h11.SERVER)
            while await self._exchange(connection, conn_stream):
                connection.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(conn_stream)

    async def _exchange(self, connection: h11.Connection, stream: trio.abc.Stream) -> bool:
        """Serve one request; True when the connection may carry another (keep-alive)."""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(4096)
                if not data:
                    return False
                connection.receive_data(data)
            elif isinstance(event, h11.Request):
                self.requests.append(event)
            elif isinstance(event, h11.EndOfMessage):
                break
        if self.hang:
            await trio.sleep_forever()
        if self.raw is not None:
            await stream.send_all(self.raw)
            return False
        bodyless = self.status in (204, 304)
        body = b"" if bodyless else self.body
        headers = [] if bodyless else [("content-length", str(len(body)))]
        data = connection.send(h11.Response(status_code=self.status, headers=headers))
        if body:
            data += connection.send(h11.Data(data=body)) or b""
        data += connection.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE
