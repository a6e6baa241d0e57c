"""A small HTTP/1.1 server loop on trio and h11 for request/response APIs.

Serves the admin listener of both daemons and the broker's SQS/SNS API: whole requests in,
whole responses out. (The balancer's proxy streams bodies and has its own shell.)

Every wait a client controls has a deadline: the idle keep-alive wait, the header read, each
body read, each write. Bodies are bounded before they are buffered: a declared Content-Length
over the limit is refused with 413 before a byte of it is read, a chunked body is cut off the
moment it passes the limit. A malformed request gets 400 and the connection is closed; h11
does the framing, we never re-frame bodies by hand.

The server answers some requests itself, before any handler sees them: 408 for a request
that stalls, 413 for a body over the limit. By default in plain text; an application whose
clients expect errors in a protocol's shape (the broker's AWS APIs) passes ``on_refusal``,
which gets a :class:`Refusal` (what happened, and the request head if it had arrived) and
returns the :class:`Response` to send. The connection closes after it either way.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final
from urllib.parse import unquote

import h11
import trio

from monitoring.settings import HttpLimits

MAX_RECV: Final = 65536  # bytes per receive_some: one socket buffer's worth, bounds each read

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
    503: b"Service Unavailable",
}


@dataclass(slots=True)
class Request:
    """One complete request. Header names are lower-case bytes, as h11 delivers them."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int]
    received_at: float = 0.0  # time.monotonic() when the headers were complete

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
    """A request the server refuses itself (408, 413), for ``serve_http``'s ``on_refusal``.

    Attributes:
        status: 408 (the head or body stalled) or 413 (the body is over the limit).
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
) -> None:
    """Serve requests on one connection until it closes, idles out, errs or the daemon drains.

    Exceptions from ``handler`` are reported to ``on_error`` and answered with 500; they never
    escape, so one bad request cannot take the listener down. ``on_refusal`` shapes the 408
    and 413 answers (plain text without it); an exception from it is reported to
    ``on_error`` and the plain text goes out instead.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
    try:
        while True:
            request = await _read_request(
                conn,
                stream,
                limits,
                client,
                draining,
                max_body_bytes,
                server_header,
                _Refuser(on_refusal, on_error, max_body_bytes),
            )
            if request is None:
                break
            try:
                response = await handler(request)
            except Exception as exc:
                on_error(exc)
                response = Response(500, b"internal error\n")
                keep_alive = False
            else:
                keep_alive = not draining.started and _keeps_alive(conn, request)
            if not keep_alive:
                response.headers.append(("connection", "close"))
            await _write(stream, _serialize(request, response, server_header), limits)
            if not keep_alive or conn.their_state is not h11.DONE:
                break
            # h11 parsed the request; the response went out without it (see _serialize), so
            # the next request starts on a fresh parser, fed what the client already sent.
            conn = _next_cycle(conn, limits)
    except _ClientGone:
        pass
    finally:
        await _close(stream)


async def _receive(stream: trio.abc.Stream) -> bytes:
    try:
        return bytes(await stream.receive_some(MAX_RECV))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise _ClientGone from None


async def _read_request(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    limits: HttpLimits,
    client: tuple[str, int],
    draining: Draining,
    max_body_bytes: int,
    server_header: str,
    refuser: _Refuser,
) -> Request | None:
    """The next complete request, or None when the connection should simply close."""
    head: h11.Request | None = None
    headers: list[tuple[bytes, bytes]] = []
    body = bytearray()
    deadline = trio.current_time() + limits.idle_timeout_seconds
    idle = True
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            await _send_error(
                conn, stream, status, f"malformed request: {exc}", limits, server_header
            )
            return None
        if event is h11.NEED_DATA:
            if idle and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                # Nothing of the next request yet: closing now loses no work.
                with draining.idle(deadline):
                    data = await _receive(stream)
                    if not data:
                        return None
                    conn.receive_data(data)
                    idle = False
                    deadline = trio.current_time() + limits.header_timeout_seconds
                    continue
                return None  # idle timeout, or the daemon is draining
            if head is not None and conn.they_are_waiting_for_100_continue:
                await _write(
                    stream,
                    conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"",
                    limits,
                )
            with trio.move_on_at(deadline):
                data = await _receive(stream)
                conn.receive_data(data)  # b"" tells h11 the client closed
                if head is not None:
                    deadline = trio.current_time() + limits.body_timeout_seconds
                continue
            response = refuser.response(408, "request timed out\n", head, headers)
            await _send_response(conn, stream, response, limits, server_header)
            return None
        idle = False
        if isinstance(event, h11.Request):
            head = event
            headers = list(event.headers)  # once: h11's Headers iterate item by item
            # h11 bounds only a head that arrives in pieces; one that arrives whole in a single
            # read is measured here, so the limit holds however the bytes were split.
            if _head_size(event.target, headers) > limits.max_header_bytes:
                await _send_error(
                    conn, stream, 431, "request headers too large\n", limits, server_header
                )
                return None
            declared = _content_length(headers)
            if declared is not None and declared > max_body_bytes:
                message = (
                    f"request body of {declared} bytes exceeds the limit of {max_body_bytes}\n"
                )
                response = refuser.response(413, message, head, headers)
                await _send_response(conn, stream, response, limits, server_header)
                return None
            deadline = trio.current_time() + limits.body_timeout_seconds
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body_bytes:
                message = f"request body exceeds the limit of {max_body_bytes} bytes\n"
                response = refuser.response(413, message, head, headers)
                await _send_response(conn, stream, response, limits, server_header)
                return None
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return Request(
                method=head.method,
                target=head.target,
                headers=headers,
                body=bytes(body),
                client=client,
                received_at=time.monotonic(),
            )
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _head_size(target: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return len(target) + sum(len(k) + len(v) + 4 for k, v in headers)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # h11 has already rejected a malformed Content-Length
    return None


class _Refuser:
    """Builds the answer to a refused request: the application's, else plain text."""

    __slots__ = ("_max_body_bytes", "_on_error", "_on_refusal")

    def __init__(
        self,
        on_refusal: OnRefusal | None,
        on_error: Callable[[BaseException], None],
        max_body_bytes: int,
    ) -> None:
        self._on_refusal = on_refusal
        self._on_error = on_error
        self._max_body_bytes = max_body_bytes

    def response(
        self,
        status: int,
        message: str,
        head: h11.Request | None,
        headers: list[tuple[bytes, bytes]],
    ) -> Response:
        if self._on_refusal is not None:
            refusal = Refusal(
                status=status,
                message=message,
                max_body_bytes=self._max_body_bytes,
                method=head.method if head is not None else None,
                target=head.target if head is not None else None,
                headers=headers if head is not None else [],
            )
            try:
                return self._on_refusal(refusal)
            except Exception as exc:  # a bug in the application's hook: report, answer plainly
                self._on_error(exc)
        return Response(status, message.encode())


async def _send_error(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    status: int,
    message: str,
    limits: HttpLimits,
    server_header: str,
) -> None:
    await _send_response(conn, stream, Response(status, message.encode()), limits, server_header)


async def _send_response(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    response: Response,
    limits: HttpLimits,
    server_header: str,
) -> None:
    """Answer through h11 and close: the request may not have been read to its end."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = response.body
    status = response.status
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(body))),
        *((name, value) for name, value in response.headers if name.lower() != "connection"),
        ("connection", "close"),
        ("server", server_header),
    ]
    try:
        data = conn.send(
            h11.Response(status_code=status, headers=headers, reason=REASONS.get(status, b""))
        )
        data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return
    await _write(stream, data, limits)


# RFC 9110 token characters; a header value may hold no control character but HTAB.
_HEADER_NAME: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_FORBIDDEN: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _keeps_alive(conn: h11.Connection, request: Request) -> bool:
    """Whether the connection may serve another request after this one (h11's rule)."""
    version = conn.their_http_version
    if version is None or version < b"1.1":
        return False  # HTTP/1.0: h11 closes after every response
    for name, value in request.headers:
        if name == b"connection" and b"close" in (
            token.strip() for token in value.lower().split(b",")
        ):
            return False
    return True


def _serialize(request: Request, response: Response, server_header: str) -> bytes:
    """The response's bytes: status line, headers, then the body unless the method was HEAD.

    What h11 would write for a Content-Length response, without its per-event state machine
    (a third of a small request's CPU). Framing is fixed: always Content-Length, the whole
    body at once; header names and values are checked as h11 checks them.

    Raises:
        h11.LocalProtocolError: a header name or value that cannot be sent.
    """
    lines = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, b'').decode()}\r\n"
        f"content-type: {response.content_type}\r\n"
        f"content-length: {len(response.body)}\r\n"
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
            raise h11.LocalProtocolError(f"illegal response header {name!r}: {value!r}")
    try:
        head = "".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise h11.LocalProtocolError("response headers must be ASCII") from None
    if request.method == b"HEAD" or not response.body:
        return head
    return head + response.body


def _next_cycle(conn: h11.Connection, limits: HttpLimits) -> h11.Connection:
    data, closed = conn.trailing_data
    fresh = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
    if data:
        fresh.receive_data(bytes(data))
    if closed:
        fresh.receive_data(b"")
    return fresh


async def _write(stream: trio.abc.Stream, data: bytes, limits: HttpLimits) -> None:
    with trio.move_on_after(limits.write_timeout_seconds) as scope:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _ClientGone from None
    if scope.cancelled_caught:
        raise _ClientGone


async def _close(stream: trio.abc.Stream) -> None:
    # aclose() on a socket stream does not block on the peer; still bound it, since TLS
    # streams send close_notify.
    with trio.move_on_after(1):
        await stream.aclose()
