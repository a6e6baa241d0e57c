"""What one client connection and one of its requests carry through the HTTP listener.

:class:`Client` is the client side of a connection: its stream, its h11 server state and
its byte counters, with the two I/O primitives every part of the listener uses.
:class:`Exchange` is one request: the snapshot it runs on, the routing result, the target
and the timings that metrics and the access log report. One cancel scope per request
(``Exchange.guard``) carries every deadline of that request; :meth:`Exchange.wait_for`
moves it before each wait and records the phase, so a timeout is mapped to the right
answer (408, 504, or a silent close) after the scope has unwound, without a cancel scope
per wait.
"""

from __future__ import annotations

import functools
import http
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

import h11
import trio

from balancer.access_log import AccessLogs
from balancer.listeners.cutoffs import DrainCutoffs
from balancer.listeners.http_metrics import HttpStats
from balancer.runtime import ListenerRuntime, Runtime, Snapshot
from balancer.tls_socket import TlsSocket
from balancer.upstream import Pools
from monitoring import fastio
from monitoring.httpserver import Draining, http_date
from monitoring.logging import EventLog
from monitoring.throttle import Throttle
from proto.http1 import (
    COMPLIANT,
    TRACE_ID_BYTES,
    Forwarding,
    ServerConnection,
    Verdict,
    header_list,
    new_trace_id,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

if TYPE_CHECKING:
    from balancer.config import Endpoint

# One read takes what a socket buffer holds: a 64 KiB response body in one go.
MAX_RECV: Final = 1 << 18
# Bytes of an unread request body the balancer reads and drops after answering on its own
# (redirect, fixed response, error) to keep the connection; beyond it, it closes.
MAX_DISCARD_BYTES: Final = 1 << 20
# ALB's connection traceability IDs seen in its logs: TID_ and 32 hex digits.
CONNECTION_TRACE_ID_BITS: Final = 128

Phase = Literal["header", "body", "target_write", "response", "relay", "client_write", "tunnel"]


# Addresses are immutable, and the same clients (and proxies in front) connect again and
# again: parsing one costs more than a cached look-up, once per connection.
@functools.lru_cache(maxsize=4096)
def parse_address(ip: str) -> IPAddress | None:
    """A peer address as rules and trusted-proxy checks compare it (IPv4-mapped as IPv4)."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientGone(Exception):
    """The client closed or reset the connection, or stopped reading."""


class ClientInfo(NamedTuple):
    """Who is on the other end of a client connection, and over what."""

    ip: str
    port: int
    local_port: int
    scheme: Literal["http", "https"] = "http"
    local_ip: str = ""  # the balancer's address the client connected to
    # Filled by the TLS shell when it hands a decrypted stream over (access log fields).
    tls_protocol: str = "-"
    tls_cipher: str = "-"
    sni: str | None = None
    certificate: str | None = None


@dataclass(slots=True)
class ListenerServices:
    """What every connection of one listener shares; built once by the app."""

    name: str
    runtime: Runtime
    pools: Pools
    stats: HttpStats
    access_logs: AccessLogs
    draining: Draining
    log: EventLog
    cutoffs: DrainCutoffs
    # One "out of descriptors" line a minute per listener, however many requests fail so.
    exhaustion: Throttle = field(default_factory=Throttle)

    def new_trace_id(self, wall: float) -> bytes:
        """A fresh ``Root=`` trace id for a request that arrived at ``wall`` time."""
        random_bytes = self.runtime.rand.getrandbits(8 * TRACE_ID_BYTES).to_bytes(
            TRACE_ID_BYTES, "big"
        )
        return new_trace_id(wall, random_bytes)

    def new_connection_trace_id(self) -> str:
        """A fresh connection traceability ID, as ALB's access log writes it: ``TID_`` and
        32 hex digits (the access log's ``conn_trace_id``)."""
        return f"TID_{self.runtime.rand.getrandbits(CONNECTION_TRACE_ID_BITS):032x}"


class Client:
    """The client side of one connection."""

    __slots__ = (
        "address",
        "conn",
        "forwarding",
        "host_header",
        "info",
        "max_head_bytes",
        "now",
        "received",
        "sent",
        "socket",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream, info: ClientInfo, max_head_bytes: int) -> None:
        self.stream = stream
        # A plain TCP client is read and written through fastio; a TLS one through its stream.
        self.socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self.info = info
        self.address = parse_address(info.ip)  # parsed once for source-ip rules
        # The Host given to targets for a request without one (HTTP/1.0): the address the
        # client connected to, as it would have written it.
        local = info.local_ip or info.ip
        local = f"[{local}]" if ":" in local else local
        self.host_header = f"{local}:{info.local_port}".encode("ascii")
        self.max_head_bytes = max_head_bytes
        self.conn = ServerConnection(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        # The X-Forwarded-* facts of this connection under one listener generation (built
        # by the forward path on its first request there).
        self.forwarding: tuple[ListenerRuntime, Forwarding] | None = None
        # trio.current_time() without its two wrappers (the run's clock is fixed): the
        # request path reads the time about eight times per request.
        self.now = _clock_reader()
        self.received = 0
        self.sent = 0

    def skip_empty_lines(self, buffered: bytes) -> bytes:
        """Drop the empty lines before a request line (RFC 9112 2.2: a server SHOULD ignore
        at least one), given what h11 holds between requests; returns what is left.

        h11 cannot drop bytes it holds, so the connection gets a fresh h11 state, which is
        what a new request cycle starts from anyway.
        """
        rest = buffered.lstrip(b"\r\n")
        self.conn = ServerConnection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)
        if rest:
            self.conn.receive_data(rest)
        return rest

    async def receive_next(self, *, checkpoint: bool = True) -> bytes:
        """Like :meth:`receive`, but a checkpoint: used for the wait on each new request, so
        every request cycle yields to the other connections. ``checkpoint=False`` for a
        connection's first request: its task has only just been scheduled."""
        data: bytes | bytearray
        try:
            if self.socket is not None:
                data = await fastio.receive(self.socket, MAX_RECV, checkpoint=checkpoint)
            else:
                data = await self.stream.receive_some(MAX_RECV)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        self.received += len(data)
        return data if type(data) is bytes else bytes(data)

    async def receive(self) -> bytes:
        """The next bytes from the client; ``b""`` once it has closed its side."""
        data: bytes | bytearray
        try:
            if self.socket is not None:
                data = await fastio.receive(self.socket, MAX_RECV)
            else:
                data = await self.stream.receive_some(MAX_RECV)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        self.received += len(data)
        # Socket streams return bytes; TLS streams may return a bytearray, which h11 takes
        # but does not promise to (its signature says bytes).
        return data if type(data) is bytes else bytes(data)

    async def send_many(
        self, pieces: list[fastio.Buffer], progress: fastio.Progress | None = None
    ) -> None:
        """Write several buffers in one go (gathered by the kernel on a plain socket);
        ``progress`` as for :func:`monitoring.fastio.send_all`."""
        size = sum(len(piece) for piece in pieces)
        try:
            if isinstance(self.socket, TlsSocket):
                await self.socket.send_watched(b"".join(pieces), progress)
            elif self.socket is not None:
                await fastio.send_many(self.socket, pieces, progress=progress)
            else:
                await self.stream.send_all(b"".join(pieces))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            # OSError: a TLS failure (SSLError) of the TLS socket's own write
            raise ClientGone from None
        self.sent += size

    async def left(self) -> bool:
        """Whether the client has gone (checked without waiting): it reset the connection,
        or closed its side before its request was complete.

        The end of its stream after a complete request is a half-close (shutdown(SHUT_WR),
        as ``nc -N`` and some scripted clients send it): the client still reads, and gets
        its response, as HAProxy gives it (``option abortonclose`` is off by default). On
        the wire it looks the same as a client that closed for good, which the write of
        the response then finds out. A pipelined next request or a TLS alert reads as data
        and counts as still there.
        """
        sock = _socket_of(self.stream)
        if sock is None:
            return False
        if not fastio.readable_now(sock.fileno()):
            return False
        try:
            data = await sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return True
        return not data and self.conn.their_state not in _REQUEST_WHOLE

    async def wait_left(self) -> bool:
        """Wait until the client sends something, then say whether it has gone (as
        :meth:`left`); wait forever when that cannot be watched. Only while nothing else
        reads from the client (one waiter per socket)."""
        sock = _socket_of(self.stream)
        if sock is None:
            await trio.sleep_forever()
        try:
            await trio.lowlevel.wait_readable(sock)
        except trio.BusyResourceError:  # another task reads: it finds out for itself
            await trio.sleep_forever()
        return await self.left()

    async def send(self, data: bytes) -> None:
        """Write to the client; raises :class:`ClientGone` if it is not there any more."""
        try:
            if self.socket is not None:
                await fastio.send_all(self.socket, data)
            else:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ClientGone from None
        self.sent += len(data)


# The client's states once its request is complete: DONE (keep-alive), MUST_CLOSE (its
# request ends the connection: ``Connection: close``, HTTP/1.0), CLOSED (its end seen).
_REQUEST_WHOLE: Final = frozenset({h11.DONE, h11.MUST_CLOSE, h11.CLOSED})


def _clock_reader() -> Callable[[], float]:
    try:
        return trio.lowlevel.current_clock().current_time
    except RuntimeError:  # made outside a run (tests): trio's clock of whichever run reads
        return trio.current_time


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket under a client stream (under the encryption of a TLS one)."""
    if not isinstance(stream, trio.SocketStream):
        return None
    sock = stream.socket
    return sock.tcp if isinstance(sock, TlsSocket) else sock


class Exchange:
    """One request on a client connection, from its complete head to its last byte."""

    __slots__ = (
        "actions",
        "close_after",
        "counted_received",
        "counted_sent",
        "cut_off",
        "error_reason",
        "group",
        "guard",
        "head_bytes",
        "headers",
        "listener",
        "phase",
        "redirect_url",
        "relayed_at",
        "request",
        "response_at",
        "response_started",
        "rule",
        "sent_at",
        "snapshot",
        "start_received",
        "start_sent",
        "started",
        "status",
        "target",
        "target_status",
        "trace",
        "upgraded",
        "verdict",
    )

    def __init__(
        self,
        snapshot: Snapshot,
        listener: ListenerRuntime,
        request: h11.Request,
        *,
        started: float,
        client: Client,
        guard: trio.CancelScope | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        verdict: Verdict = COMPLIANT,
        start_received: int | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.listener = listener
        self.request = request
        # The request's headers as a plain list, walked by routing, stickiness and forwarding.
        self.headers = header_list(request.headers) if headers is None else headers
        self.started = started  # trio clock, when the head was complete
        # The client's byte count where this request began (default: now, after its head).
        self.start_received = client.received if start_received is None else start_received
        self.start_sent = client.sent
        self.verdict = verdict
        self.head_bytes = 0  # the request head's size, where it was read from a client
        # The request cycle's scope, armed once for the common case (request sent, response
        # awaited, a short response written back); only waits that need another bound move
        # it (wait_for).
        self.guard = trio.CancelScope() if guard is None else guard
        self.guard.deadline = started + listener.config.response_timeout_seconds
        self.phase: Phase = "response"
        # matched_rule_priority once the rules ran (0: the default action); None before
        self.rule: int | None = None
        self.cut_off = False  # its target's deregistration delay ended under it (cutoffs)
        self.group: str | None = None
        self.target: Endpoint | None = None
        self.status = 0  # what the client got (ALB's elb_status_code)
        self.target_status: int | None = None
        self.sent_at: float | None = None  # request head written to the target
        self.response_at: float | None = None  # response head read from the target
        self.relayed_at: float | None = None  # that head handed to the client connection
        self.response_started = False  # bytes of a response went to the client
        self.actions = ""
        self.redirect_url: str | None = None
        self.error_reason: str | None = None
        self.trace: bytes | None = None
        self.close_after = False
        self.upgraded = False
        # Bytes of this exchange counted in ProcessedBytes already (a tunnel's, as they moved).
        self.counted_received = 0
        self.counted_sent = 0

    def wait_for(self, phase: Phase, seconds: float) -> None:
        """Give the next wait ``seconds`` (from now), remembering what it waits for."""
        self.phase = phase
        self.guard.deadline = trio.current_time() + seconds

    def writing_target(self) -> float:
        """A write of the request body to the target moved bytes and must wait for room:
        the target is not reading. The idle timeout (returned) runs again from now, as
        for a target that is slow to answer, and a stall past it is the target's (504),
        not the client's: the client's body is not read meanwhile, so
        ``request_body_seconds`` (a pause of the client's) must not run out on it."""
        self.phase = "target_write"
        return self.writing()

    def writing(self) -> float:
        """A write to the client moved bytes and must wait for more room: the idle timeout
        (returned) runs again from now. ALB's idle timeout ends a connection that had "no
        data sent or received" for that long; a client reading slowly but steadily is not
        idle, however long its download takes."""
        idle = float(self.listener.config.idle_timeout_seconds)
        self.guard.deadline = trio.current_time() + idle
        return idle


# Every registered status's phrase (ALB's own 460 and 463 have none).
REASONS: Final = {status.value: status.phrase.encode() for status in http.HTTPStatus}
# RFC 9110 15.3.5, 15.3.6, 15.4.5: these never carry content; 204 and 304 no Content-Length.
_NO_CONTENT: Final = frozenset({204, 205, 304})
_NO_CONTENT_LENGTH: Final = frozenset({204, 304})


async def respond(
    client: Client,
    ex: Exchange | None,
    status: int,
    body: bytes = b"",
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: tuple[tuple[str, str], ...] = (),
    close: bool = False,
) -> bool:
    """Answer from the balancer itself (errors, redirects, fixed responses).

    Returns False, sending nothing, when a response has already begun (the connection then
    has to be closed). ``close`` (or the exchange's ``close_after``) adds
    ``Connection: close``, and so does a request body the connection will not drop the
    rest of (then ``close_after`` is set).
    """
    conn = client.conn
    if conn.our_state is not h11.SEND_RESPONSE and conn.our_state is not h11.IDLE:
        return False
    close = close or (ex is not None and ex.close_after)
    if not close and conn.they_are_waiting_for_100_continue:
        # h11 clears the flag only as it hands out the body: take what it holds (the whole
        # body of a client that did not wait, the end of a bodiless request) first.
        # A broken body (h11's ERROR, swallowed by the pull) ends the connection too.
        broken = not rest_of_body_buffered(conn) and conn.their_state is h11.ERROR
        if broken or _still_waiting_for_100(conn):
            # The client holds its body back until a 100 that this answer withdraws: say
            # that the connection ends (RFC 9110 10.1.1) rather than wait for a body that
            # may never come (curl closes; others send it after a pause).
            close = True
            if ex is not None:
                ex.close_after = True
    if not close and ex is not None and not _rest_droppable(conn, ex.headers):
        # RFC 9110 10.1.1: a server answering before it read the whole content SHOULD say
        # whether it will close. The connection closes rather than read this much.
        close = ex.close_after = True
    if status in _NO_CONTENT:
        body = b""
        fields = [*headers] if status in _NO_CONTENT_LENGTH else [("content-length", "0"), *headers]
    else:
        fields = [("content-type", content_type), ("content-length", str(len(body))), *headers]
    if close:
        fields.append(("connection", "close"))
    # RFC 9110 6.6.1: an origin server with a clock MUST send Date in 2xx-4xx responses;
    # for its own answers (fixed responses, redirects, errors) the balancer is the origin.
    fields.append(("date", http_date()))
    try:
        data = conn.send(
            h11.Response(status_code=status, headers=fields, reason=REASONS.get(status, b""))
        )
        head_only = ex is not None and ex.request.method == b"HEAD"
        if body and not head_only:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return False
    if ex is not None:
        ex.status = status
        ex.response_started = True
    await client.send(data or b"")
    return True


def _still_waiting_for_100(conn: h11.Connection) -> bool:
    # A call, not the attribute: read again after the events taken, which clear it.
    return conn.they_are_waiting_for_100_continue


def rest_of_body_buffered(conn: h11.Connection) -> bool:
    """Read what remains of the request body from h11's buffer (a bodiless request's end
    is there at once); True when its end was there too."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return False
        if not isinstance(event, h11.Data):
            return isinstance(event, h11.EndOfMessage)


def _rest_droppable(conn: h11.Connection, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the unread rest of the request body (none once the client is done) is one
    the HTTP shell reads and drops after the answer: a Content-Length within
    MAX_DISCARD_BYTES, or a chunked body whose end h11 holds already (read here: a chunked
    body's size is known only at its end)."""
    if conn.their_state is not h11.SEND_BODY:
        return True
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value) <= MAX_DISCARD_BYTES
            except ValueError:  # h11 refuses such a request before it gets here
                return False
    return rest_of_body_buffered(conn)
