"""A small HTTP/1.1 server loop on trio and httptools (llhttp) for request/response APIs.

Serves the admin listener of both daemons and the broker's SQS/SNS API: whole requests in,
whole responses out. (The balancer's proxy streams bodies and has its own shell.)

Every wait a client controls has a deadline: the idle keep-alive wait, the header read, each
body read, the whole body (``body_timeout_seconds`` plus a second per
``min_body_rate_bytes_per_second`` bytes received, mod_reqtimeout's MinRate), each 256 KiB of
a response. Bodies are bounded before they are buffered: a declared Content-Length over the
limit is refused with 413 before a byte of it is read, a chunked body is cut off the moment
it passes the limit, and a request's bytes on the wire (chunk framing and extensions
included) are bounded too. Reads inside a request yield to the other tasks, so one client
streaming at full speed never holds the event loop. A malformed request gets 400 and the
connection is closed, after a moment of reading what the client still sends (so that it
reads the answer, not a reset); llhttp does the framing, we never re-frame bodies by hand.

Why llhttp and not h11 (which the balancer's proxy uses): the broker's requests are small and
many, and h11's pure-Python parsing was a quarter of a SendMessage's CPU; llhttp parses the
same request in a twentieth of the time, and is stricter about ambiguous framing.

Bodies are bounded together too, when the application passes a :class:`BodyBudget`: the bytes
of request bodies that one listener's connections hold at once (being received, or received
and not yet handled). A declared Content-Length that does not fit in what is left is refused
with 503 before a byte of it is read; a body that does reserves its bytes as they arrive (a
declared length reserves nothing by itself, so a client that declares 4 MiB and sends nothing
holds nothing), and is refused the same way once they no longer fit. Each connection's
reservation goes back when its request has been answered, and all of it when the connection
ends, however it ends. Without a budget, one
request at most ``max_body_bytes``, times the connections, is the only bound.

The server answers some requests itself, before any handler sees them: 408 for a request
that stalls, 413 for a body over the limit, 503 for one the budget has no room for. By
default in plain text; an application whose clients expect errors in a protocol's shape (the
broker's AWS APIs) passes ``on_refusal``, which gets a :class:`Refusal` (what happened, and
the request head if it had arrived) and returns the :class:`Response` to send. The connection
closes after it either way.

A handler that waits long for something other than the client (the broker's long polls) can
watch the client through :attr:`Request.peer` (a :class:`PeerWatch`) and give up when it has
gone, rather than do work for nobody until its own deadline.
"""

from __future__ import annotations

import email.utils
import math
import re
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Final
from urllib.parse import unquote

import httptools
import trio

from monitoring import fastio
from monitoring.settings import HttpLimits
from proto.http1 import is_valid_host, origin_form

MAX_RECV: Final = 65536  # bytes per receive_some: one socket buffer's worth, bounds each read
# A response goes out in slices of this size, each with the whole write timeout.
WRITE_SLICE_BYTES: Final = 256 * 1024
# The bytes a request may take on the wire past its head and body limits: chunk-size lines,
# chunk extensions and trailers, which llhttp reads but the body bound does not see.
FRAMING_ALLOWANCE_BYTES: Final = 64 * 1024
# After a refusal, how long and how much of what the client still sends is read and dropped.
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 8 << 20
# Empty lines ignored before a request line (RFC 9112 §2.2: "SHOULD ignore at least one").
BLANK_READS_IGNORED: Final = 1

REASONS: Final = {
    200: b"OK",
    204: b"No Content",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}


# Request headers only browsers send (Fetch Metadata and CORS): Request.from_a_browser.
_BROWSER_HEADERS: Final = frozenset({b"origin", b"sec-fetch-site", b"sec-fetch-mode"})


@dataclass(slots=True)
class Request:
    """One complete request. Header names are lower-case bytes; values lose trailing blanks."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int]
    received_at: float = 0.0  # time.monotonic() when the request was complete
    keep_alive: bool = True  # HTTP/1.1 without "Connection: close"
    # Whether the client is still there, while the handler works; None on a stream that
    # cannot tell (not a TCP socket).
    peer: PeerWatch | None = None
    # The address the client connected to, (host, port), if the server was told it: what a
    # request without Host (HTTP/1.0) names the server by.
    local: tuple[str, int] | None = None

    @property
    def from_a_browser(self) -> bool:
        """Whether a web browser sent this: it carries ``Origin`` or Fetch Metadata's
        ``Sec-Fetch-Site`` / ``Sec-Fetch-Mode``, which every current browser adds (Origin on
        every POST) and no SDK, CLI or curl does. Any page a local browser opens can post a
        form to a loopback port without a CORS preflight, so a loopback address alone does
        not show that a person or a tool of theirs chose to send the request.

        Except a person's own navigation: a GET with ``Sec-Fetch-Site: none`` and no Origin
        is a URL typed, pasted or bookmarked (an SNS SubscribeURL opened as AWS's guide
        says), which no page can make a browser send; a page's own requests, rebound to
        loopback or not, say ``same-origin``, ``same-site`` or ``cross-site``."""
        navigation_of_their_own = (
            self.method in (b"GET", b"HEAD")
            and self.header(b"origin") is None
            and self.header(b"sec-fetch-site") == b"none"
        )
        return not navigation_of_their_own and any(
            name in _BROWSER_HEADERS for name, _ in self.headers
        )

    @property
    def path(self) -> str:
        """The percent-decoded path, without the query string."""
        return unquote(self.target.partition(b"?")[0].decode("latin-1"))

    @property
    def raw_path(self) -> bytes:
        return self.target.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        return self.target.partition(b"?")[2]

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the server refuses itself, for ``serve_http``'s ``on_refusal``.

    Attributes:
        status: 408 (the head or body stalled, or the body came slower than the minimum
            rate), 413 (the body is over the limit), 431 (the head is), or 503 (the
            listener's :class:`BodyBudget` has no room for the body).
        message: the plain-text answer the server sends without ``on_refusal``.
        max_body_bytes: the body limit in force.
        method: the request method, or None when the head had not fully arrived (408).
        target: the request target, or None likewise.
        headers: the request headers (lower-case names), empty without a head.
    """

    status: int
    message: str
    max_body_bytes: int
    method: bytes | None = None
    target: bytes | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


OnRefusal = Callable[[Refusal], Response]


class BodyBudget:
    """The bytes of request bodies that the connections of one listener may hold at once.

    Each connection draws on it through its :class:`BodyReservation`: a body's bytes as they
    arrive (a declared Content-Length is only checked against what is left, before the body
    is read: what is reserved is what the process holds). HAProxy's way (``maxconn`` x
    ``bufsize``), but for whole bodies: the per-request limit times the connection limit is
    far more than a process should hold for bytes nobody has authenticated yet.

    One trio loop uses it: plain integers, no lock. ``limit`` may change at any time (a
    reload); what is held already stays held until it is given back.
    """

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0  # bytes reserved by all connections, not given back yet

    def reservation(self) -> BodyReservation:
        """A connection's account on this budget; use it as a context manager, so that
        everything it still holds goes back when the connection ends."""
        return BodyReservation(self)


class BodyReservation:
    """What one connection holds of a :class:`BodyBudget`. O(1) and no checkpoint per call.

    Leaving it as a context manager (or :meth:`close`) gives back all it still holds;
    :meth:`close` may run any number of times.
    """

    __slots__ = ("_budget", "held")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes would fit now (nothing is reserved)."""
        budget = self._budget
        return budget.held + size <= budget.limit

    def take(self, size: int) -> bool:
        """Reserve ``size`` more bytes; False (and nothing reserved) if they do not fit."""
        budget = self._budget
        held = budget.held + size
        if held > budget.limit:
            return False
        budget.held = held
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        """Return ``size`` bytes of what this connection holds (a request was answered)."""
        self.held -= size
        self._budget.held -= size

    def close(self) -> None:
        """Return everything this connection holds."""
        self._budget.held -= self.held
        self.held = 0

    def __enter__(self) -> BodyReservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Draining:
    """Tells connections the daemon is stopping: idle ones close now, busy ones after a reply.

    A connection waiting for the first byte of its next request registers its cancel scope in
    :meth:`idle`; :meth:`start` cancels all of them. A single set of scopes costs less than a
    nursery racing every read against an event.
    """

    def __init__(self) -> None:
        self.started = False
        self._idle: set[trio.CancelScope] = set()
        self._callbacks: list[Callable[[], None]] = []

    def on_start(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when draining starts (e.g. to end long polls early)."""
        self._callbacks.append(callback)

    def idle(self, deadline: float = math.inf) -> _IdleWait:
        """A cancel scope for one wait for the next request; ``deadline`` bounds it too.

        Use it as ``with draining.idle(deadline):`` -- one scope that both the deadline and
        :meth:`start` cancel, so an idle wait costs a single cancel scope.
        """
        # Only waits under way when draining starts are cancelled: once it has started, every
        # response says "Connection: close", so no keep-alive wait begins after it, and a
        # connection accepted just before the stop still gets its first request answered.
        return _IdleWait(self._idle, trio.CancelScope(deadline=deadline))

    def start(self) -> None:
        self.started = True
        for scope in list(self._idle):
            scope.cancel()
        for callback in self._callbacks:
            callback()


class _IdleWait:
    """The context manager :meth:`Draining.idle` returns."""

    __slots__ = ("_idle", "_scope")

    def __init__(self, idle: set[trio.CancelScope], scope: trio.CancelScope) -> None:
        self._idle = idle
        self._scope = scope

    def __enter__(self) -> trio.CancelScope:
        self._idle.add(self._scope)
        try:
            return self._scope.__enter__()  # entered here, so start() cancels the wait inside
        except BaseException:
            self._idle.discard(self._scope)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        try:
            return self._scope.__exit__(exc_type, exc, traceback)
        finally:
            self._idle.discard(self._scope)


class _ClientGone(Exception):
    """The client went away or stalled; close without answering."""


class _Connection:
    """One connection's reads and writes.

    On a plain TCP stream they go straight to the socket (:mod:`monitoring.fastio`): a read
    of bytes that are there already, or a write the kernel takes whole -- most of them -- then
    costs no cancel scope and none of ``SocketStream``'s wrapping; only a call that must wait
    gets its deadline. Other streams (TLS) take trio's path for every call.
    """

    __slots__ = ("_raw", "_socket", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._raw = fastio.raw_socket(self._socket) if self._socket is not None else None

    def ready(self) -> bytes | None:
        """What the client has sent already (b"": it closed), or None: nothing yet, or a
        stream that cannot tell without waiting. Never waits, never a checkpoint."""
        if self._raw is None:
            return None
        try:
            return fastio.try_receive(self._raw, MAX_RECV)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _ClientGone from None

    async def receive(self, *, checkpoint: bool = False) -> bytes:
        """The next bytes from the client, waiting for them (the caller bounds the wait).

        ``checkpoint`` yields to the other tasks even when bytes were there at once: a
        client that keeps the socket full must not hold the event loop for a whole body.
        """
        try:
            if self._socket is not None:
                return await fastio.receive(self._socket, MAX_RECV, checkpoint=checkpoint)
            return bytes(await self.stream.receive_some(MAX_RECV))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _ClientGone from None

    async def linger(self) -> None:
        """Before closing after a refusal: half-close, then read and drop what the client
        still sends, for a moment, so that it reads the answer rather than a reset (a close
        with unread bytes sends RST, which discards the answer; RFC 9112 §9.6)."""
        with trio.move_on_after(LINGER_SECONDS):
            try:
                if isinstance(self.stream, trio.SocketStream):
                    await self.stream.send_eof()
                drained = 0
                while drained < LINGER_BYTES:
                    data = await self.receive(checkpoint=True)
                    if not data:
                        return
                    drained += len(data)
            except (_ClientGone, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return  # gone already (send_eof says so with trio's errors): nothing to wait for

    async def write(self, data: bytes, limits: HttpLimits) -> None:
        """Send all of ``data``; a write that must wait is bounded by the write timeout."""
        pending: bytes | memoryview = data
        if self._raw is not None:
            try:
                sent = fastio.try_send(self._raw, data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _ClientGone from None
            if sent == len(data):
                # Yield, as trio's send_all does: a request that was there at once (or
                # pipelined) and a handler that never waits must not hold the event loop.
                # It also gives the client time to send its next request, which the next read
                # then finds without an epoll wait (measured: without this yield the server
                # spent ~10% more CPU per request, most reads coming up empty).
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            pending = memoryview(data)[sent:]
        # The write timeout bounds how long the client may stop reading, not the whole
        # response: a steady reader of a large ReceiveMessage answer must not be cut off
        # (its messages would stay in flight, received but never delivered).
        view = memoryview(pending)
        for start in range(0, len(view), WRITE_SLICE_BYTES):
            with trio.move_on_after(limits.write_timeout_seconds) as scope:
                try:
                    if self._socket is not None:
                        await fastio.send_all(self._socket, view[start : start + WRITE_SLICE_BYTES])
                    else:
                        await self.stream.send_all(view[start : start + WRITE_SLICE_BYTES])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise _ClientGone from None
            if scope.cancelled_caught:
                raise _ClientGone


class PeerWatch:
    """Tells a handler whether its client has gone: closed or reset the connection.

    What it can see is the TCP socket's: the end of the stream (FIN) or a reset, with nothing
    unread before it. A client that has sent anything more (a pipelined request, or, over TLS,
    any record: a close_notify alert too) cannot be told from one still waiting for the
    answer, so it counts as present -- a false "gone" would end a live client's request,
    a missed one only keeps the old behaviour: the handler runs to its own deadline. A client
    that half-closes its side (FIN) and still reads counts as gone: the handler answers early,
    with what it had.
    """

    __slots__ = ("_gone", "_parser", "_raw")

    def __init__(self, raw: socket.socket, parser: _RequestParser) -> None:
        self._raw = raw
        self._parser = parser
        self._gone = False

    def gone_nowait(self) -> bool:
        """Whether the client has gone; never waits, never a checkpoint (one syscall)."""
        return self._peek() is _PeerState.GONE

    async def wait_gone(self) -> None:
        """Return once the client has gone; never while it may be there.

        Once the client has sent more bytes it cannot tell any more: it waits until cancelled
        (no loop on bytes it must not read, which belong to the server's next read).
        """
        while True:
            state = self._peek()
            if state is _PeerState.GONE:
                return
            if state is _PeerState.SENT_MORE:
                await trio.sleep_forever()
            try:
                await trio.lowlevel.wait_readable(self._raw)
            except OSError:  # closed by this process meanwhile: nobody is left to answer
                self._gone = True
                return

    def _peek(self) -> _PeerState:
        if self._gone:
            return _PeerState.GONE
        if not self._parser.between_requests():
            return _PeerState.SENT_MORE  # the next request is buffered already
        try:
            data = self._raw.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return _PeerState.QUIET
        except OSError:  # ECONNRESET, EPIPE, ETIMEDOUT: the connection is dead
            self._gone = True
            return _PeerState.GONE
        if data:
            return _PeerState.SENT_MORE
        self._gone = True
        return _PeerState.GONE


class _PeerState(Enum):
    """What :class:`PeerWatch` found on the socket."""

    GONE = "gone"  # closed (FIN) or reset, with nothing unread before it
    SENT_MORE = "sent more"  # bytes the server has yet to read: cannot tell any more
    QUIET = "quiet"  # nothing yet: still there, for now


def _peer_watch(stream: trio.abc.Stream, parser: _RequestParser) -> PeerWatch | None:
    """A watch on the TCP socket under ``stream`` (plain, or TLS over TCP), if it has one."""
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(transport, trio.SocketStream):
        return None
    raw = fastio.raw_socket(transport.socket)
    return None if raw is None else PeerWatch(raw, parser)


class UnsendableResponse(ValueError):
    """A handler's response holds a header that cannot go on the wire (a bug to report)."""


def _unsupported_version(version: str) -> str:
    return f"HTTP/{version} is not supported\n"


_NO_ROOM: Final = (
    "the server holds as many request bodies as it may at once; retry the request later\n"
)


class _Refused(Exception):
    """Raised inside a parser callback: answer ``status`` with ``message``, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _RequestParser:
    """Feeds llhttp (via httptools) and collects complete requests, bounded by the limits.

    llhttp does the framing (Content-Length, chunked, pipelining) and refuses what is
    ambiguous or malformed (Content-Length with Transfer-Encoding, bad chunk sizes,
    obs-fold, invalid bytes); this class applies the server's own bounds on top: the head's
    size, the body's size (413 before a declared body is read), the HTTP version and Host.
    Requests that arrive pipelined in one read are queued in order; a fault after them
    (a malformed next request) is answered once they have been.
    """

    __slots__ = (
        "_begun",
        "_body",
        "_body_size",
        "_client",
        "_declares_body",
        "_head_bytes",
        "_head_size",
        "_headers",
        "_http",
        "_local",
        "_max_body_bytes",
        "_max_header_bytes",
        "_max_wire_bytes",
        "_method",
        "_reservation",
        "_target",
        "_wire_bytes",
        "complete",
        "expects_continue",
        "fault",
        "head_done",
        "in_message",
    )

    def __init__(
        self,
        client: tuple[str, int],
        max_header_bytes: int,
        max_body_bytes: int,
        reservation: BodyReservation,
        local: tuple[str, int] | None = None,
    ):
        self._http = httptools.HttpRequestParser(self)
        # Bodies being received, and those received and not yet answered, hold their size in
        # it: every request in ``complete`` holds len(body), the one being received what its
        # Content-Length declared (or, chunked, what has arrived).
        self._reservation = reservation
        self._client = client
        self._local = local
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self.complete: deque[Request] = deque()
        # What ended parsing: (status, message) to answer, or (0, "") to close silently.
        self.fault: tuple[int, str] | None = None
        self.in_message = False
        self.head_done = False
        self.expects_continue = False
        self._method = b""
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head_bytes = 0
        self._body = bytearray()
        self._body_size = 0
        self._begun = 0  # messages begun on this connection
        self._declares_body = False
        # Everything a request may take on the wire: head, body and chunked framing.
        self._max_wire_bytes = max_header_bytes + 2 * max_body_bytes + FRAMING_ALLOWANCE_BYTES
        self._wire_bytes = 0

    def feed(self, data: bytes) -> None:
        """Parse ``data`` (b"" when the client closed its side)."""
        if not data:
            if self.in_message:
                self.fault = (400, "malformed request: the client closed mid-request\n")
            else:
                self.fault = (0, "")
            return
        in_head = self.in_message and not self.head_done
        begun = self._begun
        try:
            self._http.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._declares_body and self.complete:
                # llhttp ends an Upgrade request at its head and takes the body for the new
                # protocol's bytes: the request would run without its body. No protocol
                # switch happens here, so refuse it (RFC 9110 §7.8 lets a server ignore
                # Upgrade; llhttp cannot, for a request with a body).
                self.complete.pop()
                self.fault = (400, "malformed request: Upgrade with a body is not supported\n")
            else:
                self.fault = (0, "")  # no protocol switch here: answer what came, then close
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, _Refused):
                raise
            self.fault = (refused.status, refused.message)
        except httptools.HttpParserError as exc:
            self.fault = self._parse_fault(exc)
        else:
            # httptools hands a header over only once it is whole: a head that trickles in is
            # bounded here, by what arrived after the read it began in (while it is the same
            # request's head: a read may end one request and begin the next).
            if in_head and not self.head_done and begun == self._begun:
                self._head_bytes += len(data)
                if self._head_bytes > self._max_header_bytes:
                    self.fault = (431, "request headers too large\n")
            if self.in_message:
                # A chunked body's framing is not body: an endless chunk extension, or a
                # body of one-byte chunks, is bounded here.
                self._wire_bytes += len(data)
                if self._wire_bytes > self._max_wire_bytes:
                    self.fault = (413, "request exceeds the limit of its size on the wire\n")

    def _parse_fault(self, exc: httptools.HttpParserError) -> tuple[int, str]:
        """The answer to a request llhttp refused: 400, but 505 for another major version.

        llhttp knows HTTP/0.9 to 2.0 only, and refuses any other well-formed version (a digit,
        a dot, a digit) as "Invalid HTTP version" once it has read both digits: HTTP/3.0 is a
        major version this server does not speak (RFC 9110 15.6.6), as HTTP/2.0 is
        (on_headers_complete), not a malformed request. HTTP/1.2 stays a 400: RFC 9110 2.5
        would serve it as 1.1, which llhttp cannot.
        """
        if str(exc) == "Invalid HTTP version":
            version = self._http.get_http_version()
            major, _, minor = version.partition(".")
            if major.isdigit() and minor.isdigit() and int(major) >= 2:
                return (505, _unsupported_version(version))
        return (400, f"malformed request: {exc}\n")

    def release(self) -> None:
        """Drop what the connection buffered, once it has ended. This object and its llhttp
        parser refer to each other (the parser calls back into it), a cycle only the cyclic
        GC frees, and with it the body being received: a connection that ended mid-body
        kept up to ``max_body_bytes`` until a collection of the oldest generation, which the
        broker runs seldom (broker/cli.py), so clients that sent large bodies and went away
        grew its memory without bound. No callback runs after this; it may be called again.

        What the connection held of the listener's body budget goes back with it."""
        self._reservation.close()
        self._body = bytearray()
        self._headers = []
        self.complete.clear()
        if hasattr(self, "_http"):
            del self._http

    def between_requests(self) -> bool:
        """Whether nothing of a next request (nor a fault) has arrived yet."""
        return not self.complete and self.fault is None and not self.in_message

    def refusal_head(self) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
        """The head of the request being refused, once it has arrived whole."""
        return (self._method, self._target, self._headers) if self.head_done else None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._begun += 1
        self.in_message = True
        self.head_done = False
        self._target = b""
        self._headers = []
        self._head_size = 0
        self._head_bytes = 0
        self._body = bytearray()
        self._body_size = 0
        self._declares_body = False
        self._wire_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._target += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:  # a trailer: dropped, but it counts against the body's bound
            self._grow_body(len(name) + len(value))
            return
        self._headers.append((name.lower(), value.rstrip(b" \t")))
        self._grow_head(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self.head_done = True
        self._method = self._http.get_method()
        version = self._http.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refused(505, _unsupported_version(version))
        host = continue_ = False
        declared: int | None = None
        for name, value in self._headers:
            if name == b"host":
                # RFC 9112 3.2: 400 to a second Host line, and to one that is no authority
                # (a URL built from it, a queue URL, must parse).
                if host:
                    raise _Refused(400, "malformed request: more than one Host header\n")
                if not is_valid_host(value):
                    raise _Refused(400, "malformed request: the Host header is no host[:port]\n")
                host = True
            elif name == b"content-length":
                declared = int(value)  # llhttp has refused a malformed Content-Length
                self._declares_body = self._declares_body or declared > 0
            elif name == b"transfer-encoding":
                self._declares_body = True
                codings = [c.strip().lower() for c in value.split(b",")]
                if any(coding != b"chunked" for coding in codings):
                    # RFC 9112 §6.1: a transfer coding the server does not understand is
                    # answered 501 (llhttp would frame the body and pass it on still coded).
                    raise _Refused(501, "only the chunked transfer coding is supported\n")
            elif name == b"expect":
                continue_ = value.lower() == b"100-continue"
        if version == "1.1" and not host:
            raise _Refused(400, "malformed request: missing mandatory Host header\n")
        if not self._target.startswith(b"/"):
            self._to_origin_form()
        if declared is not None and declared > self._max_body_bytes:
            raise _Refused(
                413,
                f"request body of {declared} bytes exceeds the limit of {self._max_body_bytes}\n",
            )
        # Before 100 Continue: a body with no room is never asked for. Its bytes are reserved
        # as they arrive (on_body), so a length declared and never sent holds nothing.
        if declared and not self._reservation.fits(declared):
            raise _Refused(503, _NO_ROOM)
        self.expects_continue = continue_ and version == "1.1"

    def _to_origin_form(self) -> None:
        """RFC 9112 §3.2.2: a server MUST accept the absolute-form (``POST http://host/q``),
        and then takes the target's authority as the request's host, not the Host header.

        Any other form (asterisk, authority) names no resource of this server.
        """
        rewritten = origin_form(self._target, self._headers)
        if rewritten is None:
            raise _Refused(400, "malformed request: the request target is not a path or URL\n")
        target, headers = rewritten
        if not is_valid_host(headers[0][1]):
            raise _Refused(400, "malformed request: the request URL's host is no host[:port]\n")
        self._target, self._headers = target, headers

    def on_body(self, body: bytes) -> None:
        self.expects_continue = False
        size = len(body)
        self._grow_body(size)
        if not self._reservation.take(size):
            raise _Refused(503, _NO_ROOM)
        self._body += body

    def on_message_complete(self) -> None:
        self.in_message = False
        self.expects_continue = False
        self.complete.append(
            Request(
                method=self._method,
                target=self._target,
                headers=self._headers,
                body=bytes(self._body),
                client=self._client,
                received_at=time.monotonic(),
                keep_alive=self._http.get_http_version() == "1.1"
                and self._http.should_keep_alive()
                and not self._http.should_upgrade(),
                local=self._local,
            )
        )
        self._body = bytearray()  # the request has its copy: not twice while it is handled

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._max_header_bytes:
            raise _Refused(431, "request headers too large\n")

    def _grow_body(self, size: int) -> None:
        self._body_size += size
        if self._body_size > self._max_body_bytes:
            raise _Refused(413, f"request body exceeds the limit of {self._max_body_bytes} bytes\n")


async def serve_http(
    stream: trio.abc.Stream,
    handler: Handler,
    limits: HttpLimits,
    *,
    client: tuple[str, int],
    draining: Draining,
    on_error: Callable[[BaseException], None],
    server_header: str = "wharf",
    max_body_bytes: int = 1 << 20,
    on_refusal: OnRefusal | None = None,
    on_refused: Callable[[int], None] | None = None,
    body_budget: BodyBudget | None = None,
    local: tuple[str, int] | None = None,
) -> None:
    """Serve requests on one connection until it closes, idles out, errs or the daemon drains.

    Exceptions from ``handler`` are reported to ``on_error`` and answered with 500; they never
    escape, so one bad request cannot take the listener down. ``on_refusal`` shapes the 408,
    413, 431 and 503 answers (plain text without it); an exception from it is reported to
    ``on_error`` and the plain text goes out instead. ``on_refused`` is told the status of
    every request the server refuses itself (400, 408, 413, 431, 501, 503, 505), which no
    handler sees and so no handler counts.

    ``body_budget`` is shared by the connections of one listener (see :class:`BodyBudget`);
    without it this connection's bodies are bounded by ``max_body_bytes`` alone. ``local``,
    the address the client connected to, is handed to the handler in ``Request.local``.
    """
    budget = body_budget if body_budget is not None else BodyBudget(sys.maxsize)
    # Whatever ends the connection (a reset, a timeout, a cancel, a bug), what it held of the
    # budget goes back when this block is left; parser.release() gives it back sooner.
    with budget.reservation() as reservation:
        parser = _RequestParser(client, limits.max_header_bytes, max_body_bytes, reservation, local)
        refuser = _Refuser(on_refusal, on_error, max_body_bytes, on_refused)
        connection = _Connection(stream)
        peer = _peer_watch(stream, parser)
        try:
            while True:
                request = await _read_request(
                    parser, connection, limits, draining, server_header, refuser
                )
                if request is None:
                    break
                request.peer = peer
                held = len(request.body)  # what it holds of the budget: what was received
                try:
                    response = await handler(request)
                except Exception as exc:
                    on_error(exc)
                    response = Response(500, b"internal error\n")
                    keep_alive = False
                else:
                    keep_alive = not draining.started and request.keep_alive
                if not keep_alive:
                    response.headers.append(("connection", "close"))
                data = _serialize(request.method, response, server_header)
                # Answered: its body is no longer the server's to hold (the request object
                # lives on until the next one replaces it, but the handler is done with it).
                reservation.give_back(held)
                await connection.write(data, limits)
                if not keep_alive:
                    # What the client pipelined after this request must not turn the close
                    # into a reset, which would discard the answer in its buffer (RFC 9112
                    # §9.6).
                    await connection.linger()
                    break
        except _ClientGone:
            pass
        finally:
            parser.release()
            await _close(stream)


async def _read_request(
    parser: _RequestParser,
    connection: _Connection,
    limits: HttpLimits,
    draining: Draining,
    server_header: str,
    refuser: _Refuser,
) -> Request | None:
    """The next complete request, or None when the connection should close (answered)."""
    if parser.between_requests():
        idle_until = trio.current_time() + limits.idle_timeout_seconds
        for _ in range(BLANK_READS_IGNORED + 1):
            data = connection.ready()
            if data is None:
                # Nothing of the next request yet: closing now loses no work.
                with draining.idle(idle_until):
                    data = await connection.receive()
            if data is not None:
                parser.feed(data)
            if not parser.between_requests():
                break
            if data is None:
                return None  # idle timeout, or the daemon is draining
            # Only empty lines came (llhttp skips them): wait for the request itself.
        else:
            return None  # nothing but empty lines
    if parser.complete:
        return parser.complete.popleft()
    now = trio.current_time()
    body_timeout = limits.body_timeout_seconds
    deadline = now + (body_timeout if parser.head_done else limits.header_timeout_seconds)
    # mod_reqtimeout's body=T,MinRate=R: once the head is in, the body has T seconds, and
    # every R bytes received after it one more, so a client that drips a byte now and then
    # (each pause under T) cannot hold the connection, and its body's reservation of the
    # budget, for ever. The pause rule stays: a body sent fast may not then idle on the
    # credit it earned.
    rate = limits.min_body_rate_bytes_per_second
    body_started = now if parser.head_done else None
    body_received = 0
    while not parser.complete:
        if parser.fault is not None:
            status, message = parser.fault
            if status:
                refuser.count(status)
            if status in (413, 431, 503):  # the application may shape these (and the 408)
                response = refuser.response(status, message, parser.refusal_head())
            elif status:
                response = Response(status, message.encode())
            else:
                return None
            parser.release()  # nothing more is read into it: free the body before lingering
            await _send_closing(connection, response, limits, server_header)
            return None
        if parser.expects_continue:
            parser.expects_continue = False
            await connection.write(b"HTTP/1.1 100 Continue\r\n\r\n", limits)
        with trio.move_on_at(deadline):
            data = await connection.receive(checkpoint=True)
            parser.feed(data)
            if parser.head_done:
                now = trio.current_time()
                deadline = now + body_timeout
                if body_started is None:
                    body_started = now  # the read that ended the head earns no credit
                else:
                    body_received += len(data)
                if rate:
                    deadline = min(deadline, body_started + body_timeout + body_received / rate)
            continue
        refuser.count(408)
        response = refuser.response(408, "request timed out\n", parser.refusal_head())
        parser.release()
        await _send_closing(connection, response, limits, server_header)
        return None
    return parser.complete.popleft()


class _Refuser:
    """Builds the answer to a refused request: the application's, else plain text."""

    __slots__ = ("_max_body_bytes", "_on_error", "_on_refusal", "_on_refused")

    def __init__(
        self,
        on_refusal: OnRefusal | None,
        on_error: Callable[[BaseException], None],
        max_body_bytes: int,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        self._on_refusal = on_refusal
        self._on_error = on_error
        self._max_body_bytes = max_body_bytes
        self._on_refused = on_refused

    def count(self, status: int) -> None:
        if self._on_refused is not None:
            try:
                self._on_refused(status)
            except Exception as exc:  # a bug in the application's hook: report, answer still
                self._on_error(exc)

    def response(
        self,
        status: int,
        message: str,
        head: tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None,
    ) -> Response:
        if self._on_refusal is not None:
            method, target, headers = head if head is not None else (None, None, [])
            refusal = Refusal(
                status=status,
                message=message,
                max_body_bytes=self._max_body_bytes,
                method=method,
                target=target,
                headers=headers,
            )
            try:
                return self._on_refusal(refusal)
            except Exception as exc:  # a bug in the application's hook: report, answer plainly
                self._on_error(exc)
        return Response(status, message.encode())


async def _send_closing(
    connection: _Connection, response: Response, limits: HttpLimits, server_header: str
) -> None:
    """Answer a request the server refuses; the connection closes after it."""
    response.headers = [
        *((name, value) for name, value in response.headers if name.lower() != "connection"),
        ("connection", "close"),
    ]
    try:
        data = _serialize(b"", response, server_header)
    except UnsendableResponse:
        return  # an on_refusal hook's bad header: close without an answer
    await connection.write(data, limits)
    await connection.linger()


# RFC 9110 token characters; a header value may hold no control character but HTAB.
_HEADER_NAME: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_FORBIDDEN: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


_date_cache: list[tuple[int, str]] = [(0, "")]


def http_date() -> str:
    """The current time as an IMF-fixdate (RFC 9110 5.6.7), for the Date header an origin
    server with a clock MUST send (6.6.1); SDKs correct their clock skew from it. Formatted
    once a second."""
    now = int(time.time())
    second, text = _date_cache[0]
    if second != now:
        text = email.utils.formatdate(now, usegmt=True)
        _date_cache[0] = (now, text)
    return text


def _serialize(method: bytes, response: Response, server_header: str) -> bytes:
    """The response's bytes: status line, headers, then the body unless the method was HEAD.

    Framing is fixed: always Content-Length, the whole body at once; header names must be
    RFC 9110 tokens and values may hold no control character but HTAB (h11's rules).

    Raises:
        UnsendableResponse: a header name or value that cannot be sent.
    """
    lines = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, b'').decode()}\r\n"
        f"content-type: {response.content_type}\r\n"
        f"content-length: {len(response.body)}\r\n"
        f"date: {http_date()}\r\n"
        f"server: {server_header}\r\n"
    ]
    for name, value in response.headers:
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    for name, value in (
        ("content-type", response.content_type),
        ("server", server_header),
        *response.headers,
    ):
        if _HEADER_NAME.fullmatch(name) is None or _HEADER_VALUE_FORBIDDEN.search(value):
            raise UnsendableResponse(f"illegal response header {name!r}: {value!r}")
    try:
        head = "".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise UnsendableResponse("response headers must be ASCII") from None
    if method == b"HEAD" or not response.body:
        return head
    return head + response.body


async def _close(stream: trio.abc.Stream) -> None:
    # aclose() on a socket stream does not block on the peer; still bound it, since TLS
    # streams send close_notify.
    with trio.move_on_after(1):
        await stream.aclose()
