"""After a 101 (or a 2xx to CONNECT): the client and target connections become one two-way
byte tunnel.

The target that answered owns the connection for its lifetime (stickiness no longer
applies). Bytes are relayed as they come, in both directions at once. A side that half-closes
(shuts down its sending side) has that passed on, as HAProxy's tunnel mode does, and the
other direction goes on until it ends too: a client may send its last bytes and wait for the
answer. Where the other end cannot be half-closed (TLS on it), the tunnel ends instead. It
also ends when either side resets, or when nothing moved in either direction for the
listener's idle timeout (ALB: "no data sent or received"). A quiet direction alone does not
end it: each receive waits until the idle deadline measured from the last activity of either
side. A write waits at most the idle timeout without progress: every time the peer takes some
of it, its deadline (and the tunnel's last activity) moves, so a peer reading slowly but
steadily keeps its tunnel, and one that stopped reading loses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from balancer.listeners.exchange import MAX_RECV, Client, Exchange
from balancer.tls_socket import TlsSocket
from monitoring import fastio

if TYPE_CHECKING:
    from balancer.upstream import Upstream


Processed = Callable[[int, int], None]  # (bytes received from, sent to the client)


class _Activity:
    __slots__ = ("ex", "idle_timeout", "last", "open_directions", "processed", "timed_out")

    def __init__(self, idle_timeout: float, ex: Exchange, processed: Processed) -> None:
        self.idle_timeout = idle_timeout
        self.last = trio.current_time()
        self.timed_out = False
        self.open_directions = 2
        self.ex = ex
        self.processed = processed

    def count(self, received: int, sent: int) -> None:
        """Bytes relayed: in ProcessedBytes now (a tunnel may stay open for hours), and noted
        on the exchange, whose booking at the end counts the rest."""
        self.ex.counted_received += received
        self.ex.counted_sent += sent
        self.processed(received, sent)


async def tunnel(
    client: Client, up: Upstream, ex: Exchange, idle_timeout: float, processed: Processed
) -> None:
    """Relay until one side ends or the tunnel idles out; byte counts go to ``client``, and
    to ``processed`` as they move."""
    ex.phase = "tunnel"
    ex.guard.deadline = float("inf")  # the tunnel keeps its own idle deadline
    early_from_client = client.conn.trailing_data[0]  # frames sent right after the request
    early_from_target = up.conn.trailing_data[0]  # frames sent right after the 101
    activity = _Activity(idle_timeout, ex, processed)
    try:
        with trio.move_on_after(idle_timeout) as scope:
            if early_from_target:
                await client.send(early_from_target)
            if early_from_client:
                await up.stream.send_all(early_from_client)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    if scope.cancelled_caught:
        ex.error_reason = "IdleTimeout"
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, client.stream, up.stream, activity, nursery, client, True)
        nursery.start_soon(_pump, up.stream, client.stream, activity, nursery, client, False)
    if activity.timed_out:
        ex.error_reason = "IdleTimeout"


async def _pump(
    source: trio.abc.ReceiveStream,
    sink: trio.abc.SendStream,
    activity: _Activity,
    nursery: trio.Nursery,
    client: Client,
    from_client: bool,
) -> None:
    half_closed = False
    writing = trio.CancelScope()  # the current write's: moved() pushes its deadline

    def moved() -> float:
        now = trio.current_time()
        activity.last = now
        writing.deadline = now + activity.idle_timeout
        return activity.idle_timeout

    try:
        while True:
            with trio.move_on_at(activity.last + activity.idle_timeout) as scope:
                data = await source.receive_some(MAX_RECV)
            if scope.cancelled_caught:
                if trio.current_time() >= activity.last + activity.idle_timeout:
                    activity.timed_out = True
                    return
                continue  # the other direction was active: wait on
            if not data:
                half_closed = await _pass_half_close(sink)
                return
            writing = trio.CancelScope(deadline=trio.current_time() + activity.idle_timeout)
            with writing:
                await _send(sink, data, moved)
            if writing.cancelled_caught:
                activity.timed_out = True
                return
            activity.last = trio.current_time()
            if from_client:
                client.received += len(data)
                activity.count(len(data), 0)
            else:
                client.sent += len(data)
                activity.count(0, len(data))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        activity.open_directions -= 1
        if not half_closed or activity.open_directions == 0:
            nursery.cancel_scope.cancel()


async def _send(sink: trio.abc.SendStream, data: fastio.Buffer, progress: fastio.Progress) -> None:
    if not isinstance(sink, trio.SocketStream):  # no kernel queue to watch (never here)
        await sink.send_all(data)
    elif isinstance(sink.socket, TlsSocket):
        try:
            await sink.socket.send_watched(data, progress)
        except OSError as exc:  # a TLS failure (SSLError), as SocketStream.send_all says it
            raise trio.BrokenResourceError(str(exc)) from exc
    else:
        await fastio.send_all(sink.socket, data, progress=progress)


async def _pass_half_close(sink: trio.abc.SendStream) -> bool:
    """Shut down ``sink``'s sending side; False where it cannot be (TLS on it)."""
    if not isinstance(sink, trio.SocketStream) or isinstance(sink.socket, TlsSocket):
        # A close_notify would end the peer's reading side too in some TLS stacks (client or
        # target), so no TLS side is half-closed: the tunnel ends there instead.
        return False
    try:
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True
