"""The forward action: one request to a target and its response back, streamed both ways.

Steps: choose the target group and target (stickiness, then the group's selector among
healthy targets), take a pooled connection, send the head and stream the body through two
h11 state machines (h11 frames each hop; the balancer never re-frames a body), read the
response head under the target response timeout, stream the body back, and return the
connection to its pool only if both state machines ended cleanly.

ALB's answers when it goes wrong:

- 503: the group has no target that may take the request (none registered, all draining).
- 502: connection refused or reset, or an invalid / truncated response head. A reused
  keep-alive connection that fails before any response byte is retried once on a new
  connection when the request has no body and an idempotent method (the target may have
  closed it just as it was reused).
- 504: no connection within ``target_connect_seconds``, or no response head within
  ``target_response_seconds``.
- A failure after the response began can only cut the client connection.

Writes are batched: a response head and the body bytes of the same read go out in one
write, so a small response costs one read from the target and one write to the client.
"""

from __future__ import annotations

import time
from typing import Final

import h11
import trio

from balancer import fastio
from balancer.config import Forward
from balancer.listeners.exchange import (
    MAX_RECV,
    Client,
    ClientGone,
    Exchange,
    IPAddress,
    ListenerServices,
    respond,
)
from balancer.listeners.sticky import StickyPlan, plan, response_cookies
from balancer.listeners.websocket import tunnel
from balancer.runtime import GroupRuntime, ListenerRuntime, Selected
from balancer.upstream import ConnectFailed, ConnectTimedOut, Pool, Upstream
from proto.http1 import (
    Forwarding,
    client_address,
    is_upgrade,
    new_trace_id,
    prepare_request,
    strip_hop_by_hop,
)

# Safe to send twice: the retry after a stale keep-alive connection is limited to these.
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
FLUSH_BYTES: Final = 1 << 16  # batch small pieces up to this much before a write
# A response this slow gets a (non-blocking) look at whether its client is still there
# before it is relayed: a client gone meanwhile is logged as 460 and the target connection
# dropped instead of reading a body nobody wants. Fast responses skip the syscall.
SLOW_RESPONSE_SECONDS: Final = 0.25
Header = tuple[bytes, bytes]


class BadRequestBody(Exception):
    """The client's body broke its own framing (bad chunk sizes...): 400 and close."""


class _TargetFailed(Exception):
    """The target connection broke; ``answered`` when response bytes had arrived."""

    def __init__(self, reason: str, *, answered: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.answered = answered


def is_trusted(address: IPAddress | None, listener: ListenerRuntime) -> bool:
    """Whether the TCP peer is one of the listener's trusted proxies."""
    if address is None or not listener.trusted_proxies:
        return False
    return any(address in network for network in listener.trusted_proxies)


async def forward(
    services: ListenerServices,
    client: Client,
    ex: Exchange,
    action: Forward,
) -> None:
    """Serve ``ex`` with a forward action (the caller holds ``ex.guard``)."""
    ex.actions = "forward"
    runtime = services.runtime
    wall = time.time()
    sticky = plan(ex.snapshot, action, ex.headers, rand=runtime.rand, wall=wall)
    ex.group = sticky.group
    group = ex.snapshot.groups.get(sticky.group)
    selected = None
    if group is not None:
        selected = group.choose(
            now=trio.current_time(), rand=runtime.rand, sticky_target=sticky.sticky_target
        )
    if group is None or selected is None:
        ex.error_reason = "NoHealthyTargets"
        await respond(client, ex, 503, b"no healthy targets\n")
        return
    target_id = selected.endpoint.target_id
    ex.target = selected.endpoint
    group.request_started(target_id)
    try:
        await _exchange(services, client, ex, group, selected, sticky, wall)
    finally:
        events = group.request_finished(target_id, trio.current_time())
        if events:
            runtime.notify(events)


async def _exchange(
    services: ListenerServices,
    client: Client,
    ex: Exchange,
    group: GroupRuntime,
    selected: Selected,
    sticky: StickyPlan,
    wall: float,
) -> None:
    config = ex.listener.config
    pool = services.pools.get(
        selected.endpoint,
        connect_timeout=config.timeouts.target_connect_seconds,
        idle_timeout=config.idle_timeout_seconds,
    )
    request = ex.request
    upgrade = is_upgrade(ex.headers)
    head = h11.Request(
        method=request.method,
        target=request.target,
        headers=_upstream_headers(ex, client, upgrade, wall, services),
        # Every value is h11's parse of the client's head or built here from addresses and
        # hex digits, so h11's per-header validation regexes would only repeat work.
        _parsed=True,
    )
    retryable = request.method in IDEMPOTENT and not upgrade and not _has_body(ex.headers)
    for attempt in (0, 1):
        try:
            up = await (pool.acquire(trio.current_time()) if attempt == 0 else pool.connect())
        except (ConnectFailed, ConnectTimedOut) as exc:
            services.stats.target_connection_error(group.name)
            timed_out = isinstance(exc, ConnectTimedOut)
            ex.error_reason = "TargetConnectTimeout" if timed_out else "TargetConnectionError"
            services.log.debug("http.target_connect_failed", target=exc.target_id, error=str(exc))
            await respond(client, ex, 504 if timed_out else 502, b"target unreachable\n")
            return
        try:
            try:
                if attempt == 0:
                    await _send_request(client, ex, up, head)
                else:  # a retry: the request had no body, so its head is all there is
                    await _send_upstream(
                        up, [up.conn.send(head) or b"", up.conn.send(h11.EndOfMessage()) or b""]
                    )
                    ex.sent_at = trio.current_time()
                response = await _read_head(ex, up)
            except _TargetFailed as failure:
                if attempt == 0 and retryable and up.reused and not failure.answered:
                    continue  # the finally below closes the stale connection
                ex.error_reason = failure.reason
                ex.close_after = ex.close_after or client.conn.their_state is not h11.DONE
                await respond(client, ex, 502, b"bad gateway\n")
                return
            if response.status_code == 101:
                ex.target_status = 101
                await _switch(client, ex, up, response)
                return
            await _relay(client, ex, up, response, sticky, group, wall)
        finally:
            _put_back(pool, up)
        return


def _put_back(pool: Pool, up: Upstream) -> None:
    if up.reusable():
        pool.release(up, trio.current_time())
    else:
        up.close()


def _has_body(headers: list[Header]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


def _upstream_headers(
    ex: Exchange, client: Client, upgrade: bool, wall: float, services: ListenerServices
) -> list[Header]:
    """The request's headers as the target gets them (and ``ex.trace`` set)."""
    info = client.info
    listener = ex.listener
    config = listener.config
    mode = config.x_forwarded_for
    forwarding = Forwarding(
        client=client_address(
            info.ip, info.port, with_port=config.x_forwarded_for_client_port and mode == "append"
        ),
        proto=b"https" if info.scheme == "https" else b"http",
        port=b"%d" % info.local_port,
        mode=mode,
        trusted=is_trusted(client.address, listener),
    )
    random_bytes = services.runtime.rand.getrandbits(96).to_bytes(12, "big")
    headers, ex.trace = prepare_request(
        ex.headers,
        forwarding,
        new_trace_id(wall, random_bytes),
        upgrade=upgrade,
        # An HTTP/1.0 client may omit Host; HTTP/1.1 requires one on the way to the target.
        default_host=client.host_header,
    )
    return headers


async def _send_upstream(up: Upstream, pieces: list[fastio.Buffer]) -> None:
    try:
        await fastio.send_many(up.stream.socket, pieces)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise _TargetFailed("TargetConnectionReset", answered=False) from None


async def _send_request(client: Client, ex: Exchange, up: Upstream, head: h11.Request) -> None:
    """Send the head, then stream the client's body to the target as it arrives.

    Writes to the target run under whatever deadline is armed: the response timeout for a
    request that arrived whole, the body timeout while a body trickles in.
    """
    conn = client.conn
    config = ex.listener.config
    pending: list[fastio.Buffer] = [up.conn.send(head) or b""]
    size = 0
    waited = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            # A malformed body (bad chunk sizes...): the target has a half request, so its
            # connection is dropped (never pooled: h11 is mid-message); the client gets 400.
            raise BadRequestBody(str(exc)) from None
        if event is h11.NEED_DATA:
            if pending:
                await _send_upstream(up, pending)
                pending, size = [], 0
            if conn.they_are_waiting_for_100_continue:
                await client.send(
                    conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                )
            ex.wait_for("body", config.timeouts.request_body_seconds)
            waited = True
            conn.receive_data(await client.receive())
        elif isinstance(event, h11.Data):
            # The pieces h11 frames the bytes with, the body bytes themselves uncopied.
            pending += up.conn.send_with_data_passthrough(event) or ()
            size += len(event.data)
            if size >= FLUSH_BYTES:
                await _send_upstream(up, pending)
                pending, size = [], 0
        elif isinstance(event, h11.EndOfMessage):
            pending.append(up.conn.send(h11.EndOfMessage()) or b"")
            await _send_upstream(up, pending)
            ex.sent_at = trio.current_time()
            if waited:
                ex.wait_for("response", config.timeouts.target_response_seconds)
            else:
                ex.phase = "response"  # the deadline armed when the head arrived still holds
            return
        else:  # ConnectionClosed in the middle of a body
            raise ClientGone


async def _receive_upstream(up: Upstream) -> bytes:
    try:
        return await fastio.receive(up.stream.socket, MAX_RECV)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""  # a reset reads as an end: h11 decides whether the message was complete


async def _read_head(ex: Exchange, up: Upstream) -> h11.Response | h11.InformationalResponse:
    """The target's response head (a 101 for a protocol switch), under its timeout."""
    answered = False
    conn = up.conn
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            raise _TargetFailed(
                "InvalidTargetResponse" if answered else "TargetClosedConnection",
                answered=answered,
            ) from None
        if event is h11.NEED_DATA:
            data = await _receive_upstream(up)
            answered = answered or bool(data)
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            ex.response_at = trio.current_time()
            return event
        elif isinstance(event, h11.InformationalResponse):
            answered = True
            if event.status_code == 101:
                ex.response_at = trio.current_time()
                return event
            # 100 (the balancer handles Expect itself) and 103 are not relayed.
        else:
            raise _TargetFailed("TargetClosedConnection", answered=answered)


async def _relay(
    client: Client,
    ex: Exchange,
    up: Upstream,
    response: h11.Response | h11.InformationalResponse,
    sticky: StickyPlan,
    group: GroupRuntime,
    wall: float,
) -> None:
    """Send the response head and stream its body to the client."""
    ex.target_status = response.status_code
    if (
        ex.sent_at is not None
        and ex.response_at is not None
        and ex.response_at - ex.sent_at > SLOW_RESPONSE_SECONDS
        and await client.left()
    ):
        raise ClientGone  # ALB's 460; the target connection is dropped mid-response
    headers = strip_hop_by_hop(response.headers)
    assert ex.target is not None
    headers += response_cookies(
        sticky, ex.snapshot, group.config, ex.target.target_id, response.headers, wall=wall
    )
    if ex.close_after:
        headers.append((b"connection", b"close"))
    conn = client.conn
    pending: list[fastio.Buffer] = [
        conn.send(
            h11.Response(
                status_code=response.status_code,
                headers=headers,
                reason=response.reason,
                _parsed=True,
            )
        )
        or b""
    ]
    ex.status = response.status_code
    idle = ex.listener.config.idle_timeout_seconds
    size = 0
    while True:
        try:
            event = up.conn.next_event()
        except h11.RemoteProtocolError:
            ex.close_after = True
            ex.error_reason = "TruncatedTargetResponse"
            return
        if event is h11.NEED_DATA:
            if pending:
                await _flush(client, ex, pending)
                pending, size = [], 0
            ex.wait_for("relay", idle)  # the target's next bytes: the idle timeout
            up.conn.receive_data(await _receive_upstream(up))
        elif isinstance(event, h11.Data):
            pending += conn.send_with_data_passthrough(event) or ()
            size += len(event.data)
            if size >= FLUSH_BYTES:
                await _flush(client, ex, pending)
                pending, size = [], 0
        elif isinstance(event, h11.EndOfMessage):
            pending.append(conn.send(h11.EndOfMessage()) or b"")
            await _flush(client, ex, pending)
            return
        else:
            ex.close_after = True
            ex.error_reason = "TruncatedTargetResponse"
            return


async def _flush(client: Client, ex: Exchange, pending: list[fastio.Buffer]) -> None:
    # Under the deadline already armed (response or idle): a client that stops reading is
    # cut off by it without re-arming the scope for every write.
    ex.response_started = True
    ex.phase = "client_write"
    await client.send_many(pending)


async def _switch(
    client: Client, ex: Exchange, up: Upstream, response: h11.Response | h11.InformationalResponse
) -> None:
    """A 101 from the target: pass it on, then relay bytes both ways (WebSocket)."""
    conn = client.conn
    headers = strip_hop_by_hop(response.headers, upgrade=True)
    try:
        data = conn.send(
            h11.InformationalResponse(status_code=101, headers=headers, reason=response.reason)
        )
    except h11.LocalProtocolError:
        # The client did not ask to switch: a target answering 101 anyway is broken.
        ex.error_reason = "InvalidTargetResponse"
        await respond(client, ex, 502, b"bad gateway\n", close=True)
        return
    ex.status = 101
    ex.upgraded = True
    await _flush(client, ex, [data or b""])
    await tunnel(client, up, ex, ex.listener.config.idle_timeout_seconds)
