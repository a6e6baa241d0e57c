"""Black-box fuzzing of wharf-balancer's target side: a hostile target on 127.0.0.1 answers
each proxied request with hypothesis-drawn bytes, a blocking raw-socket client reads what the
balancer makes of them, and :func:`judge` says whether that was a right answer.

Every request carries an id (``/tf/<tag>`` and ``X-Tf-Id: <tag>``); the test registers a
:class:`Script` under that tag before sending, and the :class:`HostileTarget` plays it to
whichever of its connections the request arrives on: the bytes (with :data:`TAG` replaced
by the tag, same length, so Content-Length values hold), in pieces with pauses, cut short
at some byte, then kept open, closed, reset or closed after draining. A response the target
meant as valid carries ``X-Tf-Id: <tag>`` and echoes the tag at the start of its body, so a
response relayed to the wrong request shows. The target records which of its connections
each request came on, so a test can tell whether a connection was reused after a broken
exchange.

A :class:`Script` knows what the balancer may make of it: where the final response head
ends (the balancer decides there), where the message ends (bytes after it were never asked
for), whether the head is invalid (502), valid only to a lenient parser (relayed or 502),
or the body is invalid (the response may only be cut). :func:`judge` derives the allowed
answers from that, the cut and the pauses. The strategies that draw scripts are in
:mod:`tests.support.target_fuzz_cases`.
"""

from __future__ import annotations

import itertools
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from balancer.config import ListenerTimeouts
from tests.support.http_fuzz import FuzzBalancer

TAG = b"########"  # replaced by the example's tag when played (8 hex digits: same length)
HOST = b"target-fuzz.test"
# The listener's bounds, low so that a stalled example ends fast.
RESPONSE_SECONDS = 0.5  # target_response_seconds: request sent to response head
IDLE_SECONDS = 1  # idle_timeout_seconds (an int): also a stall inside a response body
HEAD_LIMIT = 32768  # limits.response_header_bytes (ALB's default)
TIMEOUTS = ListenerTimeouts(
    request_header_seconds=2.0,
    request_body_seconds=2.0,
    target_connect_seconds=2.0,
    target_response_seconds=RESPONSE_SECONDS,
)
HEAD_STALL = RESPONSE_SECONDS + 0.35  # a pause that outlasts the response timeout
BODY_STALL = IDLE_SECONDS + 0.4  # a pause inside a body that outlasts the idle timeout
SHORT_PAUSE = 0.01  # a trickle within every timeout
ANSWER_LIMIT = 5.0  # longer than any legitimate wait of one exchange
_tags = itertools.count(1)


def new_tag() -> bytes:
    return b"%08x" % next(_tags)


def _short(data: bytes) -> str:
    if len(data) <= 600:
        return repr(data)
    return f"{data[:300]!r} + <{len(data) - 600} bytes> + {data[-300:]!r}"


End = Literal["keep", "close", "reset", "linger"]
Validity = Literal["valid", "lenient", "head-invalid", "body-invalid"]


@dataclass(frozen=True)
class Script:
    """What the target sends for one request, and what that response is."""

    data: bytes  # every byte it would send (1xx, final response, extra bytes), with TAG
    label: str
    validity: Validity
    status: int | None = None  # the final status, when the head parses
    content: bytes = b""  # the final body as the target meant it (TAG inside)
    interims: tuple[int, ...] = ()
    head_end: int | None = None  # offset just past the final head (None: never complete)
    message_end: int | None = None  # offset just past the body (None: ends with the close)
    big_head: bool = False  # a head over the limit: refused before its end arrives
    ambiguous: bool = False  # framing another parser may read otherwise (TE and CL)
    pauses: tuple[tuple[int, float], ...] = ()  # (offset, seconds): pause before that byte
    cut: int | None = None  # stop sending after this many bytes
    end: End = "keep"
    read_body: bool = True  # read the request body before answering

    def __repr__(self) -> str:  # bodies run to 200 kB: hypothesis prints this
        fields = {k: v for k, v in vars(self).items() if k not in ("data", "content")}
        shown = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"Script(data={_short(self.data)}, content={_short(self.content)}, {shown})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))

    def sent_end(self) -> int:
        return len(self.data) if self.cut is None else min(self.cut, len(self.data))

    @property
    def extra(self) -> bool:
        return self.message_end is not None and self.message_end < len(self.data)


@dataclass(frozen=True)
class ClientRequest:
    method: bytes
    body: bytes = b""
    expect: bool = False

    def __repr__(self) -> str:
        return f"ClientRequest({self.method!r}, {_short(self.body)}, expect={self.expect})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))

    def render(self, tag: bytes, *, close: bool = False) -> bytes:
        lines = [b"%s /tf/%s HTTP/1.1" % (self.method, tag), b"Host: " + HOST]
        lines.append(b"X-Tf-Id: " + tag)
        if self.body or self.method in (b"POST", b"PUT"):
            lines.append(b"Content-Length: %d" % len(self.body))
        if self.expect:
            lines.append(b"Expect: 100-continue")
        if close:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


@dataclass(frozen=True)
class Case:
    request: ClientRequest
    script: Script


def good_script() -> Script:
    """A plain keep-alive 200 with the tag in header and body."""
    content = b"good:" + TAG
    head = b"HTTP/1.1 200 OK\r\nX-Tf-Id: %s\r\nContent-Length: %d\r\n\r\n" % (TAG, len(content))
    return Script(
        head + content,
        "good",
        "valid",
        200,
        content,
        head_end=len(head),
        message_end=len(head) + len(content),
    )


# ------------------------------------------------------------------------ the target


@dataclass
class Arrival:
    tag: str
    connection: int


class RawTarget:
    """A raw TCP target on 127.0.0.1 that serves each connection with ``_serve``.

    Connections are numbered from 1. A failure of the target's own code is recorded in
    ``errors`` (the test asserts there are none) instead of ending the run; the peer going
    away is not a failure.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.port = 0
        self._numbers = itertools.count(1)

    async def serve(self, *, task_status: trio.TaskStatus[Any]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        number = next(self._numbers)
        self._opened(number, stream)
        try:
            await self._serve(stream, number)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception as exc:  # a bug of this target must not end the run
            self.errors.append(f"target failed: {exc!r}")
        finally:
            stream.socket.close()
            self._closed(number)

    def _opened(self, number: int, stream: trio.SocketStream) -> None:
        """Connection ``number`` was accepted."""

    def _closed(self, number: int) -> None:
        """Connection ``number`` is closed."""

    async def _serve(self, stream: trio.SocketStream, number: int) -> None:
        raise NotImplementedError

    async def _read_head(self, stream: trio.SocketStream, buffer: bytes) -> tuple[bytes, bytes]:
        """The next request head past ``buffer`` and what came after it; ``(b"", b"")`` at
        EOF, or for a head over 1 MiB (recorded as an error)."""
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some(65536)
            if not data:
                return b"", b""
            buffer += data
            if len(buffer) > 1 << 20:
                self.errors.append("a request head over 1 MiB")
                return b"", b""
        head, _, rest = buffer.partition(b"\r\n\r\n")
        return head, rest


class HostileTarget(RawTarget):
    """A raw TCP target that plays the script registered for each request's tag."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, Script] = {}
        self.arrivals: list[Arrival] = []

    def connections_of(self, tag: bytes) -> set[int]:
        return {a.connection for a in self.arrivals if a.tag == tag.decode()}

    async def _serve(self, stream: trio.SocketStream, number: int) -> None:
        buffer = b""
        while True:
            head, buffer = await self._read_head(stream, buffer)
            if not head:
                return
            lines = head.split(b"\r\n")
            found = re.match(rb"[A-Z]+ /tf/([0-9a-f]{8})", lines[0])
            tag = found.group(1).decode() if found else "?"
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            self.arrivals.append(Arrival(tag, number))
            script = self.scripts.get(tag) or good_script()
            if script.read_body or not length:
                rest = await _read_exactly(stream, buffer, length)
                if rest is None:
                    return
                buffer, length = rest, 0
            if not await _play(stream, script, tag.encode()):
                return
            if length:  # answered early: now read what was left of the body
                rest = await _read_exactly(stream, buffer, length)
                if rest is None:
                    return
                buffer = rest


async def _read_exactly(stream: trio.SocketStream, buffer: bytes, length: int) -> bytes | None:
    """Read ``length`` body bytes past ``buffer``; what is left after them (None: EOF)."""
    while len(buffer) < length:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data
    return buffer[length:]


def reset_on_close(sock: Any) -> None:
    """Make ``close()`` send a TCP reset (SO_LINGER on, zero seconds)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _play(stream: trio.SocketStream, script: Script, tag: bytes) -> bool:
    """Send the script's bytes; whether the connection goes on to the next request."""
    data = script.data.replace(TAG, tag)
    end = script.sent_end()
    pos = 0
    for offset, seconds in script.pauses:
        if offset > end:
            break
        if offset > pos:
            await stream.send_all(data[pos:offset])
            pos = offset
        await trio.sleep(seconds)
    if end > pos:
        await stream.send_all(data[pos:end])
    if script.end == "keep":
        return True
    if script.end == "reset":
        reset_on_close(stream.socket)
    elif script.end == "linger":  # half-close, then read what comes until the peer closes
        stream.socket.shutdown(socket.SHUT_WR)
        with trio.move_on_after(3):
            while await stream.receive_some(65536):
                pass
    stream.socket.close()
    return False


# ----------------------------------------------------------- the balancer in a thread


class TargetFuzzBalancer(FuzzBalancer):
    """:class:`tests.support.http_fuzz.FuzzBalancer` with the hostile target as its only
    target and the short target-side timeouts above."""

    timeouts = TIMEOUTS
    idle_timeout_seconds = IDLE_SECONDS

    def __init__(self) -> None:
        super().__init__()
        self.target = self.backend = HostileTarget()

    def start(self) -> TargetFuzzBalancer:
        super().start()
        return self

    def __enter__(self) -> TargetFuzzBalancer:
        return self.start()

    def register(self, tag: bytes, script: Script) -> None:
        # A dict item set from another thread: atomic, and done before the request goes.
        self.target.scripts[tag.decode()] = script


# -------------------------------------------------------------------------- the client


class Malformed(Exception):
    """The balancer sent something that is not a valid HTTP/1.1 response stream."""


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class Parsed:
    interims: list[Response] = field(default_factory=list)
    final: Response | None = None
    end: int = 0  # offset just past the final response, once complete


# RFC 9112 4 and 5 as a sender must write them; a field value may keep CTLs other than
# NUL, CR and LF (RFC 9110 5.5 lets a recipient retain them), never those three.
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3}) ([^\x00\r\n]*)\r\n")
_FIELD = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*([^\x00\r\n]*?)[ \t]*")
_CHUNK = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?\r\n")


def parse_one(data: bytes, *, bodiless: bool, eof: bool) -> Parsed:
    """The 1xx responses and the final response at the start of ``data``.

    ``final.complete`` is False while its body is still incomplete (or its head, when
    ``final`` is None). With ``eof``, a body delimited by the close is complete.

    Raises:
        Malformed: anything else than status line, header fields, blank line, framed body.
    """
    parsed = Parsed()
    pos = 0
    while True:
        if pos >= len(data):
            return parsed
        line = _STATUS_LINE.match(data, pos)
        if line is None:
            if b"\n" not in data[pos:] and len(data) - pos < 64:
                return parsed
            raise Malformed(f"no status line at byte {pos}: {data[pos : pos + 80]!r}")
        end = data.find(b"\r\n\r\n", line.end() - 2)
        if end < 0:
            if b"\n\n" in data[pos:] or b"\n\r\n" in data[line.end() :].replace(b"\r\n", b""):
                raise Malformed(f"a head with bare LF: {data[pos : pos + 200]!r}")
            return parsed
        headers = []
        for raw in data[line.end() : end + 2].split(b"\r\n")[:-1]:
            found = _FIELD.fullmatch(raw)
            if found is None:
                raise Malformed(f"bad header line {raw[:200]!r}")
            headers.append((found.group(1).lower(), found.group(2)))
        response = Response(int(line.group(1)), headers)
        pos = end + 4
        if 100 <= response.status < 200:
            parsed.interims.append(response)
            continue
        parsed.final = response
        break
    final = parsed.final
    lengths = [v for k, v in final.headers if k == b"content-length"]
    codings = [v for k, v in final.headers if k == b"transfer-encoding"]
    if lengths and codings:
        raise Malformed(f"both Content-Length and Transfer-Encoding: {final.headers}")
    if len(lengths) > 1 or len(codings) > 1:
        raise Malformed(f"framing headers repeated: {final.headers}")
    if lengths and not lengths[0].isdigit():
        raise Malformed(f"bad content-length {lengths[0]!r}")
    if codings and codings[0].lower() != b"chunked":
        raise Malformed(f"transfer-encoding {codings[0]!r}")
    if bodiless or final.status in (204, 304):
        final.complete, parsed.end = True, pos
    elif codings:
        body = b""
        while True:
            chunk = _CHUNK.match(data, pos)
            if chunk is None:
                if b"\r\n" in data[pos : pos + 100] or len(data) - pos >= 100:
                    raise Malformed(f"bad chunk at byte {pos}: {data[pos : pos + 40]!r}")
                final.body = body
                return parsed
            size = int(chunk.group(1), 16)
            if size == 0:
                trailers = data.find(b"\r\n\r\n", chunk.end() - 2)
                if trailers < 0:
                    final.body = body
                    return parsed
                for raw in data[chunk.end() : trailers + 2].split(b"\r\n")[:-1]:
                    if _FIELD.fullmatch(raw) is None:
                        raise Malformed(f"bad trailer line {raw!r}")
                final.body, final.complete, parsed.end = body, True, trailers + 4
                return parsed
            if len(data) < chunk.end() + size + 2:
                final.body = body + data[chunk.end() : chunk.end() + size]
                return parsed
            if data[chunk.end() + size : chunk.end() + size + 2] != b"\r\n":
                raise Malformed(f"no CRLF after a chunk at byte {chunk.end() + size}")
            body += data[chunk.end() : chunk.end() + size]
            pos = chunk.end() + size + 2
    elif lengths:
        length = int(lengths[0])
        final.body = data[pos : pos + length]
        if len(final.body) == length:
            final.complete, parsed.end = True, pos + length
    else:
        final.body = data[pos:]
        final.complete, parsed.end = eof, len(data)
    return parsed


@dataclass
class Outcome:
    data: bytes
    parsed: Parsed | None  # None: a hang (neither a complete response nor a close in time)
    closed: bool
    seconds: float
    error: str | None = None  # what the client could not parse


def read_response(sock: socket.socket, method: bytes, start: float) -> Outcome:
    """Read until one final response is complete, the balancer closes, or time runs out."""
    data, closed = b"", False
    bodiless = method == b"HEAD"
    while True:
        try:
            parsed = parse_one(data, bodiless=bodiless, eof=closed)
        except Malformed as exc:
            return Outcome(data, None, closed, time.monotonic() - start, str(exc))
        if closed or (parsed.final is not None and parsed.final.complete):
            return Outcome(data, parsed, closed, time.monotonic() - start)
        left = ANSWER_LIMIT - (time.monotonic() - start)
        if left <= 0:
            return Outcome(data, None, closed, time.monotonic() - start)
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 18)
        except TimeoutError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            closed = True
        data += chunk


def send_all(sock: socket.socket, payload: bytes) -> bool:
    """Send ``payload``; False when the balancer closed before taking all of it."""
    try:
        sock.settimeout(ANSWER_LIMIT)
        sock.sendall(payload)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- the oracle


def _stalls(script: Script, begin: int, end: int, seconds: float) -> bool:
    """Whether the target pauses ``seconds`` or more before some byte in [begin, end)."""
    sent = script.sent_end()
    return any(begin <= o < end and s >= seconds and o <= sent for o, s in script.pauses)


def judge(case: Case, outcome: Outcome, tag: bytes) -> list[str]:
    """What is wrong with the client's answer to ``case`` (nothing: an empty list)."""
    script, request = case.script, case.request
    if outcome.error is not None:
        return [f"malformed answer: {outcome.error}; got {outcome.data[:400]!r}"]
    parsed = outcome.parsed
    if parsed is None:
        return [f"no answer or close in {ANSWER_LIMIT} s; got {outcome.data[:400]!r}"]
    final = parsed.final
    if final is None:
        return [f"closed without a final response; got {outcome.data[:400]!r}"]
    problems = []
    for interim in parsed.interims:
        if interim.status not in script.interims:
            problems.append(f"a 1xx the target never sent: {interim.status}")
        if interim.status == 100 and not request.expect:
            problems.append("a 100 Continue to a client that never asked for one")
    sent = script.sent_end()
    # Answered before the request body was read: the balancer may still be uploading
    # (under the body timeout, not the response timeout) when the target speaks or stalls.
    early = not script.read_body and bool(request.body)
    # A reset, or a close with the request body unread (the kernel turns it into a reset):
    # the balancer may lose any bytes the target sent.
    lossy = script.end == "reset" or (script.end == "close" and early)
    decisive = script.head_end  # the balancer knows what to answer once this much arrived
    reached = decisive is not None and sent >= decisive
    stalled = _stalls(script, 0, decisive if reached else len(script.data) + 1, HEAD_STALL)
    silent = not reached and script.end == "keep"  # the target says no more, yet stays
    timed_out = stalled or silent or (script.big_head and script.cut is not None)
    ident = final.header(b"x-tf-id")
    if ident is None:  # the balancer's own answer
        if final.status == 504:
            if not timed_out:
                problems.append(f"504 though the target answered in time ({script.label})")
        elif final.status == 502:
            if reached and not stalled and script.validity == "valid" and not lossy:
                problems.append(f"502 for a valid response ({script.label})")
            if timed_out and not (reached or script.big_head or early or (stalled and lossy)):
                problems.append(f"502 though the target only went quiet ({script.label})")
        else:
            problems.append(f"the balancer answered {final.status}, not 502 or 504")
        return problems
    if ident != tag:
        return [f"a response for request {ident!r} relayed to request {tag!r}"]
    if not reached or script.validity == "head-invalid" or (stalled and not early):
        return [f"relayed a response that the balancer had to refuse ({script.label})"]
    if final.status != script.status:
        problems.append(f"status {final.status}, the target sent {script.status}")
    bodiless = request.method == b"HEAD" or script.status in (204, 304)
    content = b"" if bodiless else script.content.replace(TAG, tag)
    delimited = script.message_end is None and not bodiless  # by the close
    if delimited:
        assert decisive is not None
        # The target tagged the whole response, then cut it: a cut may split the tag.
        content = script.data.replace(TAG, tag)[decisive:sent]
    body_end = script.message_end or len(script.data)
    mid_stall = _stalls(script, decisive or 0, body_end, BODY_STALL)
    whole = (
        script.validity in ("valid", "lenient")
        and not mid_stall
        # RFC 9112 8: only a clean close completes a body delimited by the close.
        and (script.end == "close" if delimited else sent >= body_end)
    )
    return problems + body_problems(
        final,
        content,
        whole=whole,
        lossy=lossy,
        delimited=delimited,
        closed=outcome.closed,
        label=script.label,
    )


def body_problems(
    final: Response,
    content: bytes,
    *,
    whole: bool,
    lossy: bool,
    delimited: bool,
    closed: bool,
    label: str,
) -> list[str]:
    """What is wrong with a relayed body, against ``content``, what the target meant.

    Args:
        final: the response the client parsed.
        whole: the target sent all of it (a cut or a stall excepted).
        lossy: the target's reset (or the like) may have lost any of its bytes.
        delimited: the body ends with the close, not by its framing.
        closed: the client's connection was closed after it.
        label: the target's script, for the messages.
    """
    problems = []
    if final.complete:
        if not whole:
            problems.append(f"a complete response from an incomplete one ({label})")
        if lossy and delimited:
            if not content.startswith(final.body):
                problems.append(f"body {final.body[:100]!r} is not a prefix of {content[:100]!r}")
        elif final.body != content:
            problems.append(f"body {final.body[:100]!r}, the target sent {content[:100]!r}")
    else:
        if whole and not lossy:
            problems.append(f"a valid response cut short ({label})")
        if not content.startswith(final.body):
            problems.append(f"body {final.body[:100]!r} is not a prefix of {content[:100]!r}")
        if not closed:
            problems.append("an incomplete response, and the connection left open")
    return problems


def clean(case: Case) -> bool:
    """Whether the exchange leaves the target connection fit for another request (a target
    that answered before reading the body reads it afterwards, when it keeps the
    connection)."""
    script = case.script
    return (
        script.validity in ("valid", "lenient")
        and not script.ambiguous
        and script.sent_end() == len(script.data)  # a cut at the very end cuts nothing
        and script.end == "keep"
        and script.message_end == len(script.data)
        and not _stalls(script, 0, len(script.data) + 1, 0.3)
    )
