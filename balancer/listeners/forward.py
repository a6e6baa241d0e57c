"""The forward action: one request to a target and its response back, streamed both ways.

Steps: choose the target group and target (stickiness, then the group's selector among
healthy targets), take a pooled connection, send the head and stream the body through two
h11 state machines (h11 frames each hop; the balancer never re-frames a body), read the
response head under the target response timeout, stream the body back, and return the
connection to its pool only if both state machines ended cleanly.

ALB's answers when it goes wrong:

- 503: the group has no target that may take the request (none registered, all draining).
- 502: connection refused or reset, or an invalid / truncated response head; or the
  target's deregistration delay ended with the request still in flight
  (:mod:`balancer.listeners.cutoffs`; a response already begun loses its connection). A reused
  keep-alive connection that fails before any response byte is retried once on a new
  connection when the request has no body and an idempotent method (the target may have
  closed it just as it was reused).
- 504: no connection within ``target_connect_seconds``, or no response head within
  ``target_response_seconds`` (by default the listener's idle timeout, as on ALB).
- A failure after the response began can only cut the client connection.

A target may answer before it has the whole request (nginx's 413 for
``client_max_body_size``, an auth proxy's 401, a 417 to ``Expect``), often closing or
resetting its side right after. While a body streams, a task watches the target's socket:
when a final response head that ends the exchange arrives (it says the connection closes,
or the client waits for a 100 it did not get), the target closes, or a write to it fails,
the upload stops and the response is read (under the target response timeout) and relayed
as usual (1xx go on to the client as they come, and the upload goes on); only a target
that answered nothing is a 502. The target connection is then never pooled, and the
client connection closes after the response (its body was not read to the end): the
balancer first reads and drops what the client still sends for a bounded time, so that the
client reads the response instead of a reset. A final response that keeps the connection
is relayed by that task while the upload goes on to the end of the body (RFC 9112 9.5: a
"full duplex" target streams its answer as the body arrives, and may need all of it to
finish); both connections then stay open. ``Expect: 100-continue`` goes to the target,
whose 100 or final answer reaches the client; a target silent on it for
``EXPECT_CONTINUE_SECONDS`` gets the body anyway, after the balancer's own 100. Whatever
other 1xx a target sends before its final response (103 Early Hints...) is relayed to
HTTP/1.1 clients, during the upload or after it (:mod:`balancer.listeners.interim`).

Writes are batched: a response head and the body bytes of the same read go out in one
write, so a small response costs one read from the target and one write to the client.
"""

from __future__ import annotations

import functools
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final

import h11
import trio

from balancer.config import Forward
from balancer.listeners.exchange import (
    MAX_RECV,
    Client,
    ClientGone,
    Exchange,
    IPAddress,
    ListenerServices,
    respond,
    rest_of_body_buffered,
)
from balancer.listeners.interim import relay_interim
from balancer.listeners.sticky import StickyPlan, plan, response_cookies
from balancer.listeners.websocket import Processed, tunnel
from balancer.runtime import GroupRuntime, ListenerRuntime, Selected
from balancer.tls_socket import TlsSocket
from balancer.upstream import (
    ConnectFailed,
    ConnectTimedOut,
    OutOfResources,
    Pool,
    TlsNegotiationFailed,
    Upstream,
    report_out_of_resources,
)
from monitoring import fastio
from monitoring.httpserver import http_date
from proto.http1 import (
    Action,
    Forwarding,
    client_address,
    connection_tokens,
    forwardable_framing,
    header_list,
    is_upgrade,
    parsed_headers,
    prepare_request,
    prepare_response,
    strip_hop_by_hop,
    valid_fields,
    valid_switch,
    without_h2c,
)

# Safe to send twice: the retry after a stale keep-alive connection is limited to these.
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
FLUSH_BYTES: Final = 1 << 16  # batch small pieces up to this much before a write
# Reads and writes that complete at once are not checkpoints (monitoring.fastio): a body
# that streams as fast as both peers go would otherwise hold the event loop, starving every
# other connection, the admin listener and the watchdog. A real checkpoint every few reads
# of a long body also lets its deadlines and a drain's cancellation reach it.
YIELD_EVERY_READS: Final = 8
# A response this slow gets a (non-blocking) look at whether its client is still there
# before it is relayed: a client gone meanwhile is logged as 460 and the target connection
# dropped instead of reading a body nobody wants. Fast responses skip the syscall.
SLOW_RESPONSE_SECONDS: Final = 0.25
# A client waiting for 100-continue gets the balancer's own 100 when the target neither
# continued nor answered in this time (curl's wait for a 100 before it sends anyway).
EXPECT_CONTINUE_SECONDS: Final = 1.0
# After an early response, what the client still sends of its body is read and dropped for
# at most this long and this much (nginx's lingering close), then the connection closes.
LINGER_SECONDS: Final = 5.0
LINGER_BYTES: Final = 64 << 20
Header = tuple[bytes, bytes]
Head = h11.Response | h11.InformationalResponse


class BadRequestBody(Exception):
    """The client's body broke its own framing (bad chunk sizes...): 400 and close."""


def _body_failure(conn: h11.Connection, error: h11.RemoteProtocolError) -> Exception:
    """Why a request body could not be read: the client hung up (ALB's 460, an abandoned
    upload, no attack), or it broke the body's framing (a desync attempt: 400)."""
    if conn.trailing_data[1]:  # h11 saw the end of the client's stream
        return ClientGone()
    return BadRequestBody(str(error))


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
            now=client.now(), rand=runtime.rand, sticky_target=sticky.sticky_target
        )
    if group is None or selected is None:
        ex.error_reason = "NoHealthyTargets"
        await respond(client, ex, 503, b"no healthy targets\n")
        return
    target_id = selected.endpoint.target_id
    ex.target = selected.endpoint
    group.request_started(target_id)
    # Cut (ex.guard cancelled, ex.cut_off set) if the target's deregistration delay ends
    # first; the HTTP shell then answers as for a timeout (Handler._timed_out).
    services.cutoffs.track(group.name, target_id, ex)
    try:
        await _exchange(services, client, ex, group, selected, sticky, wall)
    finally:
        services.cutoffs.untrack(group.name, target_id, ex)
        events = group.request_finished(target_id, client.now())
        if events:
            runtime.notify(events)


async def linger_if_unread(client: Client, ex: Exchange) -> None:
    """After any answer (the target's or the balancer's own) that came before the client's
    body was all read, and closes the connection: drop what the client still sends, for a
    bounded time (:func:`_linger`). A connection that stays open drops the rest of the body
    in the HTTP shell instead, then reads the next request."""
    conn = client.conn
    if (
        conn.their_state is h11.SEND_BODY
        and (conn.our_state is h11.MUST_CLOSE or (conn.our_state is h11.DONE and ex.close_after))
        and not rest_of_body_buffered(conn)
    ):
        await _linger(client, ex)


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
        max_head_bytes=config.limits.response_header_bytes,
    )
    request = ex.request
    # An offer of h2c is withdrawn before anything reads the request's upgrade: the target
    # must not turn the connection into a tunnel past the listener's rules (h2c smuggling),
    # and its 101 for h2c is then one nobody asked for (_switch answers 502).
    ex.headers = without_h2c(ex.headers)
    # RFC 9110 7.8: Upgrade in an HTTP/1.0 request is ignored (and 15.2: no 1xx to such a
    # client); the header is hop-by-hop, so the target never sees it.
    upgrade = request.http_version == b"1.1" and is_upgrade(ex.headers)
    headers = _upstream_headers(ex, client, upgrade, wall, services)
    # A client waiting for 100-continue: the target decides whether the body may come.
    expect = client.conn.they_are_waiting_for_100_continue and _has_body(ex.headers)
    if expect:
        headers.append((b"expect", b"100-continue"))
    head = h11.Request(
        method=request.method,
        target=request.target,
        headers=parsed_headers(headers),
        # Every value is h11's parse of the client's head or built here from addresses and
        # hex digits, so h11's per-header validation regexes would only repeat work.
        _parsed=True,
    )
    # A WebSocket handshake too: nothing of the tunnel goes out before the target's 101.
    retryable = request.method in IDEMPOTENT and not _has_body(ex.headers)
    for attempt in (0, 1):
        try:
            up = await (pool.acquire(client.now()) if attempt == 0 else pool.connect())
            if not up.reused:
                services.stats.target_connection_opened(group.name)
        except OutOfResources as exc:
            # The balancer's own limit: a 503 as for any capacity it lacks, and nothing
            # counted against the target.
            ex.error_reason = "BalancerOutOfResources"
            report_out_of_resources(services.log, services.exhaustion, str(exc))
            await respond(client, ex, 503, b"service unavailable\n")
            return
        except (ConnectFailed, ConnectTimedOut) as exc:
            services.stats.target_connection_error(group.name)
            if isinstance(exc, TlsNegotiationFailed):
                services.stats.target_tls_negotiation_error(group.name)
            timed_out = isinstance(exc, ConnectTimedOut)
            ex.error_reason = "TargetConnectTimeout" if timed_out else "TargetConnectionError"
            services.log.debug("http.target_connect_failed", target=exc.target_id, error=str(exc))
            await respond(client, ex, 504 if timed_out else 502, b"target unreachable\n")
            return
        response: Head | None = None
        framed_twice: bool | None = None  # known once _relay has read the response's head
        try:
            try:
                early: Head | _Duplex | None = None
                if attempt == 0:
                    relay = functools.partial(
                        _relay, client, ex, up, sticky=sticky, group=group, wall=wall
                    )
                    early = await _send_request(client, ex, up, head, expect=expect, relay=relay)
                else:  # a retry: the request had no body, so its head is all there is
                    await _send_upstream(
                        up, [up.conn.send(head) or b"", up.conn.send(h11.EndOfMessage()) or b""]
                    )
                    ex.sent_at = trio.current_time()
                if isinstance(early, _Duplex):  # relayed while the body went on
                    response, framed_twice = early.response, early.framed_twice
                    return
                if early is None:
                    response = await _read_head(client, ex, up, watch_client=True)
                else:
                    response = early
                    if up.conn.our_state is not h11.DONE:
                        _answered_early(services, client, ex, response)
            except _TargetFailed as failure:
                if attempt == 0 and retryable and up.reused and not failure.answered:
                    continue  # the finally below closes the stale connection
                ex.error_reason = failure.reason
                if not failure.answered:
                    # ALB's access log: every processing time -1 when "the target closes the
                    # connection before the idle timeout" (the request was never dispatched).
                    ex.sent_at = None
                ex.close_after = ex.close_after or client.conn.their_state is not h11.DONE
                await respond(client, ex, 502, b"bad gateway\n")
                return
            if response.status_code == 101 or (
                request.method == b"CONNECT" and 200 <= response.status_code < 300
            ):
                # A tunnel the target opened (WebSocket, or CONNECT as HAProxy relays it).
                ex.target_status = response.status_code
                processed = functools.partial(services.stats.processed, services.name)
                await _switch(
                    client, ex, up, response, sticky, group, wall, processed, upgrade=upgrade
                )
                return
            if services.draining.started:  # the stop began while this request was out
                ex.close_after = True
            framed_twice = await _relay(client, ex, up, response, sticky, group, wall)
        finally:
            # ALB's defensive mode closes both connections after an ambiguous request it
            # served: the target may have read its framing differently than h11 did. So
            # after a response framed by both Transfer-Encoding and Content-Length (RFC 9112
            # 6.3: an error, maybe response splitting; h11 reads it chunked).
            close = ex.verdict.action is Action.CLOSE_AFTER or (
                _framed_twice(response) if framed_twice is None else framed_twice
            )
            _put_back(pool, up, client.now(), close=close)
        return


def _framed_twice(response: Head | None) -> bool:
    if response is None:
        return False
    names = {name for name, _ in header_list(response.headers)}
    return b"transfer-encoding" in names and b"content-length" in names


def _put_back(pool: Pool, up: Upstream, now: float, *, close: bool = False) -> None:
    if close:
        up.close()
    else:
        pool.release(up, now)  # closes it unless it is reusable


def _has_body(headers: list[Header]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


def _upstream_headers(
    ex: Exchange, client: Client, upgrade: bool, wall: float, services: ListenerServices
) -> list[Header]:
    """The request's headers as the target gets them (and ``ex.trace`` set)."""
    listener = ex.listener
    # The same for every request of a connection while the listener's generation holds.
    cached = client.forwarding
    if cached is not None and cached[0] is listener:
        forwarding = cached[1]
    else:
        info = client.info
        config = listener.config
        mode = config.x_forwarded_for
        forwarding = Forwarding(
            client=client_address(
                info.ip,
                info.port,
                with_port=config.x_forwarded_for_client_port and mode == "append",
            ),
            proto=b"https" if info.scheme == "https" else b"http",
            port=b"%d" % info.local_port,
            mode=mode,
            trusted=is_trusted(client.address, listener),
        )
        client.forwarding = (listener, forwarding)
    fields = ex.headers
    if listener.config.drop_invalid_header_fields:
        fields = valid_fields(fields)
    headers, ex.trace = prepare_request(
        fields,
        forwarding,
        services.new_trace_id(wall),
        upgrade=upgrade,
        # An HTTP/1.0 client may omit Host; HTTP/1.1 requires one on the way to the target.
        default_host=client.host_header,
        head_bytes=ex.head_bytes,
    )
    return headers


async def _send_upstream(
    up: Upstream, pieces: list[fastio.Buffer], progress: fastio.Progress | None = None
) -> None:
    """Write to the target; ``progress`` as for :func:`monitoring.fastio.send_all`."""
    sock = up.stream.socket
    try:
        if progress is not None and isinstance(sock, TlsSocket):
            await sock.send_watched(b"".join(pieces), progress)
        else:
            await fastio.send_many(sock, pieces, progress=progress)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        # OSError: a TLS failure (SSLError) of the TLS socket's own write
        up.conn.send_failed()  # h11 in ERROR: the connection is never pooled
        raise _TargetFailed("TargetConnectionReset", answered=False) from None


def _continue(client: Client) -> bytes:
    """A 100 Continue for the client (h11 then no longer counts it as waiting).

    With its reason phrase, which RFC 9112 lets a server omit: a client that waits for the
    text "100 Continue" would otherwise never send its body."""
    interim = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
    return client.conn.send(interim) or b""


async def _send_request(
    client: Client,
    ex: Exchange,
    up: Upstream,
    head: h11.Request,
    *,
    expect: bool,
    relay: _Relay,
) -> Head | _Duplex | None:
    """Send the head, then stream the client's body to the target as it arrives.

    Returns None once the whole request is out (the caller reads the response), or the
    target's response head when the target answered before that, or a write to it failed
    and it had answered (an early response; the request stays unfinished on that
    connection), or a :class:`_Duplex` when the target's answer was relayed while the body
    went on. Raises :class:`_TargetFailed` when it failed without answering.

    A request that is all here already goes out in one write, under the response timeout.
    While a body streams, a write to the target that has to wait moves the deadline to the
    idle timeout from its last progress (:meth:`Exchange.writing_target`): a target that
    stops reading is the target's stall (504 past it), not a pause of the client's (the
    body timeout, 408), whose bytes are not read meanwhile.
    """
    conn = client.conn
    pending: list[fastio.Buffer] = [up.conn.send(head) or b""]
    size = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            # A malformed body (bad chunk sizes...): the target has a half request, so its
            # connection is dropped (never pooled: h11 is mid-message); the client gets 400.
            raise _body_failure(conn, exc) from None
        if event is h11.NEED_DATA:
            break  # a body still on its way: streamed, with the target watched meanwhile
        if isinstance(event, h11.Data):
            # The pieces h11 frames the bytes with, the body bytes themselves uncopied.
            pending += up.conn.send_with_data_passthrough(event) or ()
            size += len(event.data)
            if size >= FLUSH_BYTES:
                break
        elif isinstance(event, h11.EndOfMessage):
            pending.append(up.conn.send(h11.EndOfMessage()) or b"")
            try:
                await _send_upstream(up, pending)
            except _TargetFailed:
                if up.reused:
                    raise  # it died while idle: what it sent was no answer to this request
                return await _read_early_head(client, ex, up, answered=False, broken=True)
            ex.sent_at = client.now()
            ex.phase = "response"  # the deadline armed when the head arrived still holds
            return None
        else:  # ConnectionClosed in the middle of a body
            raise ClientGone
    return await _stream_body(client, ex, up, pending, expect=expect, relay=relay)


class _Duplex:
    """A response relayed while the request body streamed on (its head, and whether it was
    framed twice, as :func:`_relay` returns it)."""

    __slots__ = ("framed_twice", "response")

    def __init__(self, response: h11.Response, framed_twice: bool) -> None:
        self.response = response
        self.framed_twice = framed_twice


# _relay with all but the response head bound (the exchange's client, target, stickiness).
_Relay = Callable[[h11.Response], Awaitable[bool]]


class _Upload:
    """What the body upload and the task watching the target meanwhile share."""

    __slots__ = (
        "answered",
        "broken",
        "client_writes",
        "duplex",
        "failure",
        "response",
        "scope",
    )

    def __init__(self) -> None:
        self.scope = trio.CancelScope()  # the upload; cancelled when the target answers
        # Both tasks may write to the client (the target's 1xx, the balancer's own 100):
        # one at a time, each from h11's send to the last byte, so writes stay whole and
        # in h11's order (a TLS stream refuses two concurrent writers outright).
        self.client_writes = trio.Lock()
        self.answered = False  # response bytes arrived
        self.broken = False  # a write to the target failed
        self.response: Head | None = None  # a response head, read by the watcher
        self.failure: ClientGone | BadRequestBody | None = None
        # Set when the watcher relays a response the upload goes on beside: its result.
        self.duplex: _Duplex | None = None


async def _stream_body(
    client: Client,
    ex: Exchange,
    up: Upstream,
    pending: list[fastio.Buffer],
    *,
    expect: bool,
    relay: _Relay,
) -> Head | _Duplex | None:
    """Stream the rest of the body while a second task watches the target's socket (and
    relays its response, when the target answers without closing: see _watch_target)."""
    upload = _Upload()
    complete = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_target, client, ex, up, upload, relay)
        with upload.scope:
            try:
                await _upload(client, ex, up, pending, upload.client_writes, expect=expect)
                complete = True
            except _TargetFailed:
                upload.broken = True
            except (ClientGone, BadRequestBody) as exc:
                upload.failure = exc  # raised below: the nursery would wrap it in a group
        if upload.duplex is None or upload.failure is not None:
            # No response under way (or one that cannot end well now): the watcher stops.
            # Else the response being relayed goes on to its end.
            nursery.cancel_scope.cancel()
    if upload.failure is not None:
        raise upload.failure
    if not complete and up.conn.our_state is h11.DONE:
        up.conn.send_failed()  # its last write was cut short: the connection is not pooled
    if upload.duplex is not None:
        return upload.duplex
    response = upload.response
    if response is not None:
        ex.sent_at = ex.sent_at or trio.current_time()
        ex.response_at = trio.current_time()
        return response
    if complete:
        return None  # the whole request went out (a 100 may have been read meanwhile)
    return await _read_early_head(client, ex, up, answered=upload.answered, broken=upload.broken)


async def _read_early_head(
    client: Client, ex: Exchange, up: Upstream, *, answered: bool, broken: bool
) -> Head:
    """The response of a target that spoke, or broke, before it had the whole request."""
    ex.sent_at = ex.sent_at or trio.current_time()
    ex.wait_for("response", ex.listener.config.response_timeout_seconds)
    try:
        return await _read_head(client, ex, up, answered=answered)
    except _TargetFailed as failure:
        if broken and not failure.answered:
            raise _TargetFailed("TargetConnectionReset", answered=False) from None
        raise


async def _upload(
    client: Client,
    ex: Exchange,
    up: Upstream,
    pending: list[fastio.Buffer],
    client_writes: trio.Lock,
    *,
    expect: bool,
) -> None:
    """The body from the client to the target, from ``pending`` (already framed) on."""
    conn = client.conn
    config = ex.listener.config
    size = FLUSH_BYTES  # ``pending`` goes out first
    waited = False
    reads = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _body_failure(conn, exc) from None
        if event is h11.NEED_DATA:
            if pending:
                await _send_upstream(up, pending, ex.writing_target)
                pending, size = [], 0
            ex.wait_for("body", config.timeouts.request_body_seconds)
            waited = True
            reads += 1
            if reads % YIELD_EVERY_READS == 0:
                await trio.lowlevel.checkpoint()
            if conn.they_are_waiting_for_100_continue:
                if expect:
                    # The target's turn: its 100 or final answer (relayed by the watcher),
                    # or the client's body if it does not wait, or the balancer's 100.
                    expect = False
                    with trio.move_on_after(EXPECT_CONTINUE_SECONDS):
                        conn.receive_data(await client.receive())
                        continue
                async with client_writes:  # re-checked here: the watcher may have sent one
                    if conn.they_are_waiting_for_100_continue:
                        await client.send(_continue(client))
            conn.receive_data(await client.receive())
        elif isinstance(event, h11.Data):
            pending += up.conn.send_with_data_passthrough(event) or ()
            size += len(event.data)
            if size >= FLUSH_BYTES:
                await _send_upstream(up, pending, ex.writing_target)
                pending, size = [], 0
        elif isinstance(event, h11.EndOfMessage):
            pending.append(up.conn.send(h11.EndOfMessage()) or b"")
            await _send_upstream(up, pending, ex.writing_target)
            if ex.response_at is None:  # else answered while the body went on (duplex)
                ex.sent_at = trio.current_time()
            if waited or ex.phase == "target_write":
                # The deadline now is a pause's of the client's or a blocked write's (the
                # idle timeout): the response gets its own, from the request sent.
                ex.wait_for("response", config.response_timeout_seconds)
            else:
                ex.phase = "response"  # the deadline armed when the head arrived still holds
            return
        else:  # ConnectionClosed in the middle of a body
            raise ClientGone


async def _watch_target(
    client: Client, ex: Exchange, up: Upstream, upload: _Upload, relay: _Relay
) -> None:
    """Beside an upload: read what the target sends meanwhile, and stop the upload when it
    closes, breaks, or answers with a final response head that ends the exchange. Its 1xx
    go on to the client (a 100 only while the client waits for one).

    A final response that keeps the connection is relayed here while the upload goes on
    ("full duplex": a target streaming its answer as it reads the body). RFC 9112 9.5: a
    client may stop sending a body only when the response says the server does not want it
    and closes; until then the target may need the rest to finish its answer.
    """
    conn = up.conn
    while True:
        await trio.lowlevel.wait_readable(up.stream.socket)
        data = await _receive_upstream(up)  # readable: returns at once
        upload.answered = upload.answered or bool(data)
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                upload.scope.cancel()  # _read_head reports it
                return
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                try:
                    async with upload.client_writes:
                        await relay_interim(client, event)
                except ClientGone as exc:
                    upload.failure = exc
                    upload.scope.cancel()
                    return
                continue
            if isinstance(event, h11.Response) and _keeps_reading(client, ex, event):
                await _relay_beside_upload(ex, upload, relay, event)
                return
            if isinstance(event, h11.Response | h11.InformationalResponse):
                upload.response = event
            upload.scope.cancel()  # a response, or the end of the connection
            return
        if not data:
            upload.scope.cancel()  # closed
            return
        # A head in pieces: read on until it is whole. It may be a 1xx, after which the
        # target wants the rest of the body.


def _keeps_reading(client: Client, ex: Exchange, response: h11.Response) -> bool:
    """Whether a final response that came during the upload leaves the body to go on: it
    keeps the connection (HTTP/1.1, no ``Connection: close``, a framed body), and the
    client is sending it (not waiting for a 100 it never got: told no, it sends nothing)."""
    if client.conn.they_are_waiting_for_100_continue or response.http_version != b"1.1":
        return False
    if ex.request.method == b"CONNECT" and 200 <= response.status_code < 300:
        return False  # a tunnel, not a response
    if _close_delimited(ex, response):
        return False  # its body ends with the connection: the target closes it
    return b"close" not in connection_tokens(header_list(response.headers))


def _close_delimited(ex: Exchange, response: h11.Response | h11.InformationalResponse) -> bool:
    """Whether the response's body ends with the connection (RFC 9112 6.3: neither
    Transfer-Encoding nor Content-Length, and a status and method that have a body)."""
    if response.status_code < 200 or response.status_code in (204, 304):
        return False
    if ex.request.method == b"HEAD":
        return False
    return not any(
        name == b"content-length" or name == b"transfer-encoding" for name, _ in response.headers
    )


async def _relay_beside_upload(
    ex: Exchange, upload: _Upload, relay: _Relay, response: h11.Response
) -> None:
    ex.sent_at = ex.sent_at or trio.current_time()
    ex.response_at = trio.current_time()
    # Set before the first checkpoint: an upload that ends meanwhile must wait for this
    # relay, not cancel it.
    upload.duplex = duplex = _Duplex(response, framed_twice=False)
    try:
        # Held to the end: the upload's own 100 must not come into the response (it sends
        # none any more, h11 having sent a final response, but it checks under this lock).
        async with upload.client_writes:
            duplex.framed_twice = await relay(response)
    except ClientGone as exc:
        upload.failure = exc
        upload.scope.cancel()


def _answered_early(
    services: ListenerServices, client: Client, ex: Exchange, response: Head
) -> None:
    """Book a response that came before the target had the whole request."""
    unread = client.conn.their_state is not h11.DONE
    if unread:
        ex.close_after = True  # the rest of the client's body was not read
    services.log.info(
        "http.early_response",
        listener=services.name,
        target=ex.target.target_id if ex.target is not None else None,
        status=response.status_code,
        client_body_unread=unread,
    )


async def _linger(client: Client, ex: Exchange) -> None:
    """Read and drop what the client still sends of a body its response did not wait for.

    The response is out; closing with unread bytes would send the client a reset, which
    can make it lose the response while it is still uploading. Half-closing and draining
    for a bounded time and size (nginx's lingering close) lets it read the response.
    """
    # Not a TLS client's: its close_notify would end what some clients still read.
    if client.socket is not None and not isinstance(client.socket, TlsSocket):
        try:
            client.socket.shutdown(socket.SHUT_WR)
        except OSError:
            return
    ex.guard.deadline = math.inf  # bounded below; not a timeout of the request
    dropped = 0
    with trio.move_on_after(LINGER_SECONDS):
        while dropped < LINGER_BYTES:
            data = await client.receive_next()  # a checkpoint per read: fair to the others
            if not data:
                return
            dropped += len(data)


async def _receive_upstream(up: Upstream) -> bytes:
    try:
        return await fastio.receive(up.stream.socket, MAX_RECV)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        # A reset reads as an end: h11 decides whether a framed message was complete; one
        # delimited by the close is not (_relay looks at up.reset).
        up.reset = True
        return b""


async def _receive_watching_client(client: Client, up: Upstream) -> bytes:
    """The target's next bytes; raises :class:`ClientGone` if the client resets first.

    Without the watch, a client that gave up on a slow target (reset its connection) held
    its descriptor, its connection slot (``http_connections_active``) and a connection to
    the target until the target answered: a client resetting in a loop filled the
    listener's connection limit with nobody. Fast answers skip it (no task, no syscall).
    """
    with trio.move_on_after(SLOW_RESPONSE_SECONDS):
        return await _receive_upstream(up)
    received: list[bytes] = []
    failed: list[Exception] = []
    gone = False
    async with trio.open_nursery() as nursery:

        async def from_target() -> None:
            try:
                received.append(await _receive_upstream(up))
            except Exception as exc:  # raised after the nursery, not in an ExceptionGroup
                failed.append(exc)
            nursery.cancel_scope.cancel()

        nursery.start_soon(from_target)
        # A half-close or a pipelined request is "still there": then only the target ends it.
        gone = await client.wait_left()
        if gone:
            nursery.cancel_scope.cancel()
    if gone:
        raise ClientGone
    if failed:
        raise failed[0]
    return received[0]


async def _read_head(
    client: Client,
    ex: Exchange,
    up: Upstream,
    *,
    answered: bool = False,
    watch_client: bool = False,
) -> Head:
    """The target's response head (a 101 for a protocol switch), under its timeout.

    The 1xx before it go on to the client as they come. They do not move the deadline:
    the response timeout bounds the wait for the final head, however chatty the target.
    With ``watch_client`` (the whole request sent, nothing else reading from the client), a
    client that resets meanwhile ends the wait: ALB's 460, the target connection dropped.
    """
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
            if watch_client:
                data = await _receive_watching_client(client, up)
            else:
                data = await _receive_upstream(up)
            answered = answered or bool(data)
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            if event.status_code > 599:  # h11 takes any 3 digits; RFC 9110 15: invalid
                raise _TargetFailed("InvalidTargetResponse", answered=True)
            ex.response_at = client.now()
            return event
        elif isinstance(event, h11.InformationalResponse):
            answered = True
            if event.status_code == 101:
                ex.response_at = trio.current_time()
                return event
            await relay_interim(client, event)
            # A target flooding 1xx never makes a read wait: yield, and let the response
            # timeout (a cancellation) reach this loop.
            await trio.lowlevel.checkpoint()
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
) -> bool:
    """Send the response head and stream its body to the client.

    Returns whether the response was framed by both Transfer-Encoding and Content-Length.
    """
    ex.target_status = response.status_code
    if (
        ex.sent_at is not None
        and ex.response_at is not None
        and ex.response_at - ex.sent_at > SLOW_RESPONSE_SECONDS
        and await client.left()
    ):
        raise ClientGone  # ALB's 460; the target connection is dropped mid-response
    headers, framed_twice = prepare_response(response.status_code, response.headers)
    if not any(name == b"date" for name, _ in headers):
        # RFC 9110 6.6.1: a recipient with a clock that forwards a response without a Date
        # MUST append one with the time it was received (as nginx and Envoy do); clients
        # and caches compute a response's age and their clock skew from it.
        headers.append((b"date", http_date().encode("ascii")))
    conn = client.conn
    if conn.their_http_version == b"1.0":
        # RFC 9112 6.1: no Transfer-Encoding in a response to an HTTP/1.0 request. h11 drops
        # it where a body follows (sent close-delimited instead), not from a 304, which may
        # carry it for an HTTP/1.1 client (the coding its 200 would have had).
        headers = [field for field in headers if field[0] != b"transfer-encoding"]
    _add_sticky_cookies(ex, headers, sticky, group, wall)
    if ex.close_after:
        headers.append((b"connection", b"close"))
    try:
        # The first body event, from the bytes read with the head: a body broken there
        # already (a chunk size beyond 64 bits...) makes the response invalid, a 502 as
        # HAProxy answers, since none of it has reached the client. Later, only a cut is left.
        event = up.conn.next_event()
    except h11.RemoteProtocolError:
        ex.error_reason = "InvalidTargetResponse"
        ex.close_after = ex.close_after or client.conn.their_state is not h11.DONE
        await respond(client, ex, 502, b"bad gateway\n")
        return framed_twice
    pending: list[fastio.Buffer] = [
        conn.send(
            h11.Response(
                status_code=response.status_code,
                headers=parsed_headers(headers),
                reason=response.reason,
                _parsed=True,
            )
        )
        or b""
    ]
    ex.status = response.status_code
    ex.relayed_at = client.now()  # ALB's response_processing_time ends here
    idle = ex.listener.config.idle_timeout_seconds
    size = reads = 0
    while True:
        if event is h11.NEED_DATA:
            if pending:
                await _flush(client, ex, pending)
                pending, size = [], 0
            ex.wait_for("relay", idle)  # the target's next bytes: the idle timeout
            reads += 1
            if reads % YIELD_EVERY_READS == 0:
                await trio.lowlevel.checkpoint()
            up.conn.receive_data(await _receive_upstream(up))
        elif isinstance(event, h11.Data):
            pending += conn.send_with_data_passthrough(event) or ()
            size += len(event.data)
            if size >= FLUSH_BYTES:
                await _flush(client, ex, pending)
                pending, size = [], 0
        elif isinstance(event, h11.EndOfMessage) and not (
            up.reset and _close_delimited(ex, response)
        ):
            pending.append(conn.send(h11.EndOfMessage()) or b"")
            await _flush(client, ex, pending)
            return framed_twice
        else:  # the connection ended mid-body (a reset cuts a close-delimited one)
            ex.close_after = True
            ex.error_reason = "TruncatedTargetResponse"
            if pending:
                await _flush(client, ex, pending)
            return framed_twice
        try:
            event = up.conn.next_event()
        except h11.RemoteProtocolError:
            # The head (and body bytes) of the same read go out first: the client sees the
            # response cut short, as when the error comes a read later, not a bare close.
            ex.close_after = True
            ex.error_reason = "TruncatedTargetResponse"
            if pending:
                await _flush(client, ex, pending)
            return framed_twice


def _add_sticky_cookies(
    ex: Exchange, headers: list[Header], sticky: StickyPlan, group: GroupRuntime, wall: float
) -> None:
    """Append the stickiness cookies to the headers of a response going to the client."""
    assert ex.target is not None
    if sticky.group_cookie or sticky.stickiness_on:  # else response_cookies has none
        headers += response_cookies(
            sticky, ex.snapshot, group.config, ex.target.target_id, headers, wall=wall
        )


async def _flush(client: Client, ex: Exchange, pending: list[fastio.Buffer]) -> None:
    # Under the deadline already armed (response or idle), which a write that has to wait
    # moves to the idle timeout from its last progress (Exchange.writing): a client that
    # stops reading is cut off by it, one that reads slowly is not, and a write that never
    # waits never touches the scope.
    ex.response_started = True
    ex.phase = "client_write"
    await client.send_many(pending, ex.writing)


async def _switch(
    client: Client,
    ex: Exchange,
    up: Upstream,
    response: h11.Response | h11.InformationalResponse,
    sticky: StickyPlan,
    group: GroupRuntime,
    wall: float,
    processed: Processed,
    *,
    upgrade: bool,
) -> None:
    """A 101 from the target (or a 2xx to CONNECT): pass it on, then relay bytes both ways.

    A 101 is passed on only to a request that asked to upgrade (HTTP/1.1, ``Connection:
    upgrade``), naming in its ``Upgrade`` only protocols the request offered (never h2c: the
    offer is withdrawn before the request goes out); any other 101 is a broken response
    (502). The head goes on without hop-by-hop fields but ``Upgrade``,
    and without framing fields, which neither a 1xx nor a 2xx to CONNECT may carry (RFC 9110
    8.6, 9.3.6): a 2xx to CONNECT that has them is no tunnel but a broken answer (502). A
    101 carries the stickiness cookies as any forwarded response does: it is
    the one response a WebSocket-only client gets (RFC 6455 4.2.2 lets it set cookies, and
    ALB's "cookie-based stickiness is not used" concerns the tunnel after it), so without
    them its reconnects would land on any target.
    """
    status = response.status_code
    head: h11.Response | h11.InformationalResponse
    if status == 101:
        if not upgrade or not valid_switch(ex.headers, response.headers):
            await _refuse_switch(client, ex)
            return
        headers = forwardable_framing(101, strip_hop_by_hop(response.headers, upgrade=True))
        _add_sticky_cookies(ex, headers, sticky, group, wall)
        head = h11.InformationalResponse(status_code=101, headers=headers, reason=response.reason)
    else:
        framing = {b"content-length", b"transfer-encoding"}
        if any(name in framing for name, _ in response.headers):
            # RFC 9110 9.3.6: a 2xx that opens a tunnel carries no framing; one that does
            # is an application answering CONNECT as any method, whose next "tunnel" bytes
            # would be the client's later requests reaching it past the listener's rules.
            await _refuse_switch(client, ex)
            return
        kept = strip_hop_by_hop(response.headers)
        head = h11.Response(status_code=status, headers=kept, reason=response.reason)
    try:
        data = client.conn.send(head)
    except h11.LocalProtocolError:
        # The client did not ask to switch: a target answering 101 anyway is broken.
        await _refuse_switch(client, ex)
        return
    ex.status = status
    ex.upgraded = True
    ex.relayed_at = client.now()  # response_processing_time ends here, not with the tunnel
    await _flush(client, ex, [data or b""])
    await tunnel(client, up, ex, ex.listener.config.idle_timeout_seconds, processed)


async def _refuse_switch(client: Client, ex: Exchange) -> None:
    ex.error_reason = "InvalidTargetResponse"
    await respond(client, ex, 502, b"bad gateway\n", close=True)
