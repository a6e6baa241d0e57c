"""After a 101: the client and target connections become one two-way byte tunnel.

The target that answered 101 owns the connection for its lifetime (stickiness no longer
applies). Bytes are relayed as they come, in both directions at once; the tunnel ends when
either side closes or resets, or when nothing moved in either direction for the listener's
idle timeout (ALB: "no data sent or received"). A quiet direction alone does not end it:
each receive waits until the idle deadline measured from the last activity of either side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from balancer.listeners.exchange import MAX_RECV, Client, Exchange

if TYPE_CHECKING:
    from balancer.upstream import Upstream


class _Activity:
    __slots__ = ("idle_timeout", "last", "timed_out")

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self.last = trio.current_time()
        self.timed_out = False


async def tunnel(client: Client, up: Upstream, ex: Exchange, idle_timeout: float) -> None:
    """Relay until one side ends or the tunnel idles out; byte counts go to ``client``."""
    ex.phase = "tunnel"
    ex.guard.deadline = float("inf")  # the tunnel keeps its own idle deadline
    early_from_client = client.conn.trailing_data[0]  # frames sent right after the request
    early_from_target = up.conn.trailing_data[0]  # frames sent right after the 101
    activity = _Activity(idle_timeout)
    try:
        if early_from_target:
            await client.send(early_from_target)
        if early_from_client:
            await up.stream.send_all(early_from_client)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
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
                return
            with trio.move_on_after(activity.idle_timeout) as scope:
                await sink.send_all(data)
            if scope.cancelled_caught:
                activity.timed_out = True
                return
            activity.last = trio.current_time()
            if from_client:
                client.received += len(data)
            else:
                client.sent += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        nursery.cancel_scope.cancel()  # either side ending ends the tunnel
