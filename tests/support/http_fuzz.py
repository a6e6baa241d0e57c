"""Black-box fuzzing of wharf-balancer's HTTP listener: a balancer and a counting backend in a
thread of their own, a blocking raw-socket client, a strict parser of what the balancer
answers, and hypothesis strategies for raw HTTP/1.1 requests mutated at one point.

Every request a case sends carries an id (``X-Fuzz-Id: <tag>-r<k>`` and ``/fz/<tag>/r<k>``
in its target); a request hidden in a body carries ``<tag>-h<k>``. The backend records each
request it receives and echoes its id in ``x-fuzz-id``, so a test can tell which of the
client's requests reached it, how often, and which response answers which request.
Templates hold :data:`TAG`, eight bytes replaced by an eight-hex-digit tag when sent, so
lengths (and Content-Length values) are the same before and after.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import h11
import trio
from hypothesis import strategies as st

from balancer.cli import SPEC
from balancer.config import AccessLog, HealthCheck, ListenerTimeouts, Target, TargetGroup
from monitoring.lifecycle import Daemon
from tests.support.balancer_http import config, front, listener
from tests.support.daemons import running
from tests.support.targets import Seen

TAG = b"########"  # replaced by the case's tag when sent (same length: 8 hex digits)
HOST = b"fuzz.test"
# Short timeouts so that a case left incomplete is answered (408) or closed within ~1 s.
TIMEOUTS = ListenerTimeouts(request_header_seconds=0.5, request_body_seconds=0.5)
IDLE_SECONDS = 1
ANSWER_LIMIT = 6.0  # longer than any legitimate wait: 1 s for 100-continue + 0.5 s + 1 s idle
_ID = re.compile(r"([0-9a-f]{8})-(r\d|h\d|ok)")
_ID_IN_TARGET = re.compile(r"/fz/([0-9a-f]{8})/(r\d|h\d|ok)")
_tags = itertools.count(1)


def new_tag() -> bytes:
    return b"%08x" % next(_tags)


def request_id(seen: Seen) -> str | None:
    """The id a backend request carries (its X-Fuzz-Id, else its target), or None."""
    for value in seen.all("x-fuzz-id"):
        match = _ID.fullmatch(value.strip())
        if match:
            return match.group(0)
    found = _ID_IN_TARGET.search(seen.target)
    return f"{found.group(1)}-{found.group(2)}" if found else None


# ------------------------------------------------------------------------- the backend


class FuzzBackend:
    """An h11 backend that records every request and echoes its id; it never dies.

    Unlike :class:`tests.support.targets.TargetServer` it reads heads up to 1 MiB (the
    balancer forwards up to 64 KiB), answers CONNECT with 405 as real servers do, and
    answers a request it cannot parse with its own 400, noting it in ``errors``: a
    balancer that forwards something malformed shows up there.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[FuzzBackend]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a bug of this backend must not end the run
            self.errors.append(f"backend failed: {exc!r}")
        finally:
            await stream.aclose()

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        ended = False  # the balancer closed its side (a request cut short is no parse error)
        while True:
            request: h11.Request | None = None
            body = bytearray()
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    if ended:
                        return
                    self.errors.append(f"backend could not parse a forwarded request: {exc}")
                    await stream.send_all(
                        b"HTTP/1.1 400 Bad Request\r\nx-fuzz-backend: 1\r\n"
                        b"x-fuzz-id: unparsable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                    return
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data and conn.their_state is h11.IDLE:
                        return
                    ended = not data
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            assert request is not None
            seen = Seen(
                request.method.decode("latin-1"),
                request.target.decode("latin-1"),
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers],
                bytes(body),
            )
            self.seen.append(seen)
            await self._reply(stream, conn, request, seen)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _reply(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, seen: Seen
    ) -> None:
        ident = request_id(seen) or "none"
        content = json.dumps(
            {"id": ident, "method": seen.method, "target": seen.target, "body": len(seen.body)}
        ).encode()
        status = 405 if request.method == b"CONNECT" else 200
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(content))),
            ("x-fuzz-backend", "1"),
            ("x-fuzz-id", ident),
        ]
        data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        if request.method != b"HEAD":
            data += conn.send(h11.Data(data=content)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)


# ------------------------------------------------------------ the balancer in a thread


class FuzzBalancer:
    """A balancer with one HTTP listener forwarding to a :class:`FuzzBackend`, both on a
    trio loop in a thread of their own, so that a blocking client can drive them.

    A subclass may put another backend in (anything with a trio ``serve`` task that reports
    its ``port``) and other listener bounds (``timeouts``, ``idle_timeout_seconds``).
    """

    timeouts = TIMEOUTS
    idle_timeout_seconds = IDLE_SECONDS

    def __init__(self) -> None:
        self.backend: Any = FuzzBackend()
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.error: BaseException | None = None
        self._daemon: Daemon[Any] | None = None
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="wharf-fuzz", daemon=True)
        self._log_offset = 0
        self._seen_offset = 0
        # Read only when a case fails, to tell what the balancer made of its connections.
        self._log_dir = tempfile.mkdtemp(prefix="wharf-fuzz-")
        self._access_log = os.path.join(self._log_dir, "access.log")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self.error = exc
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.backend.serve)
            group = TargetGroup(
                name="web",
                targets=(Target(host="127.0.0.1", port=self.backend.port),),
                health_check=HealthCheck(enabled=False),
            )
            lst = listener(
                timeouts=self.timeouts,
                idle_timeout_seconds=self.idle_timeout_seconds,
                access_log=AccessLog(enabled=True, destination=self._access_log),
            )
            async with running(SPEC, config([lst], [group]), level="info") as daemon:
                self._daemon = daemon
                self.address = front(daemon)
                self._started.set()
                await self._stop.wait()
            nursery.cancel_scope.cancel()

    def start(self) -> FuzzBalancer:
        self._thread.start()
        self._started.wait(30)
        if self._daemon is None:
            raise RuntimeError("the balancer did not start") from self.error
        return self

    def stop(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)
        shutil.rmtree(self._log_dir, ignore_errors=True)

    def __enter__(self) -> FuzzBalancer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def new_log_errors(self) -> list[str]:
        """Error lines (tracebacks, failed handlers) logged since the last call."""
        assert self._daemon is not None
        text: str = self._daemon.log_output.getvalue()  # type: ignore[attr-defined]
        fresh, self._log_offset = text[self._log_offset :], len(text)
        return [line for line in fresh.splitlines() if "level=error" in line]

    def access_lines(self, needle: str) -> list[str]:
        """The access log's lines that mention ``needle`` (a case's tag), for a failure's story."""
        time.sleep(1.5)  # the balancer flushes its access log once a second
        with open(self._access_log, encoding="utf-8", errors="replace") as log:
            return [line for line in log if needle in line]

    def new_backend_requests(self) -> list[Seen]:
        """The requests the backend recorded since the last call."""
        seen = self.backend.seen[:]
        fresh, self._seen_offset = seen[self._seen_offset :], len(seen)
        return fresh


# --------------------------------------------------------------------------- the client


Mode = Literal["eof", "hold", "abort"]


@dataclass
class Answer:
    data: bytes
    closed: bool  # the balancer closed the connection (or reset it)
    reset: bool  # a reset: the last bytes it sent may be lost
    seconds: float


def reset_on_close(sock: socket.socket) -> None:
    """Make ``close()`` send a TCP reset (SO_LINGER on, zero seconds)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def send(
    address: tuple[str, int], payload: bytes, mode: Mode, pauses: tuple[int, ...] = ()
) -> Answer:
    """Send ``payload`` and read until the balancer closes or :data:`ANSWER_LIMIT` passes.

    ``eof`` half-closes after sending (the balancer sees the end of the client's data),
    ``hold`` keeps the connection open (its timeouts must end it), ``abort`` resets the
    connection right after sending without reading anything. The client pauses 20 ms at
    each offset of ``pauses`` (the balancer gets the bytes in pieces).
    """
    start = time.monotonic()
    data, closed, reset = b"", False, False
    with socket.create_connection(address, timeout=ANSWER_LIMIT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for begin, end in itertools.pairwise((0, *pauses, len(payload))):
                if begin:
                    time.sleep(0.02)
                sock.sendall(payload[begin:end])
        except OSError:  # the balancer answered and closed before it read everything
            reset = True
        if mode == "abort":
            reset_on_close(sock)
            return Answer(b"", True, True, time.monotonic() - start)
        if mode == "eof":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                reset = True
        while True:
            left = ANSWER_LIMIT - (time.monotonic() - start)
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = reset = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
    return Answer(data, closed, reset, time.monotonic() - start)


# --------------------------------------------------------------------- response parsing


class Malformed(Exception):
    """The balancer sent something that is not a valid HTTP/1.1 response stream."""


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def from_backend(self) -> bool:
        return self.header(b"x-fuzz-backend") == b"1"


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) ([\t -~\x80-\xff]*)\r\n")
_FIELD = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+): ?([\t -~\x80-\xff]*)")
_CHUNK = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")


def parse_responses(data: bytes, *, bodiless: bool) -> tuple[list[Response], bytes]:
    """The complete responses in ``data`` and the bytes of an incomplete last one.

    ``bodiless``: a response may lack the body its Content-Length announces (the answer to
    a HEAD: the case sent one), recognised by the next status line or the end of the data.

    Raises:
        Malformed: anything else than status line, header fields, blank line, framed body.
    """
    responses: list[Response] = []
    pos = 0
    while pos < len(data):
        start = pos
        line = _STATUS_LINE.match(data, pos)
        if line is None:
            if len(data) - pos < 64 and b"\n" not in data[pos:]:
                return responses, data[start:]  # a status line cut short
            raise Malformed(f"no status line at byte {pos}: {data[pos : pos + 80]!r}")
        end = data.find(b"\r\n\r\n", line.end() - 2)
        if end < 0:
            return responses, data[start:]
        headers: list[tuple[bytes, bytes]] = []
        for raw in data[line.end() : end + 2].split(b"\r\n")[:-1]:
            found = _FIELD.fullmatch(raw)
            if found is None:
                raise Malformed(f"bad header line {raw!r}")
            headers.append((found.group(1).lower(), found.group(2).strip()))
        response = Response(int(line.group(1)), line.group(2), headers, b"")
        pos = end + 4
        length = response.header(b"content-length")
        if 100 <= response.status < 200 or response.status in (204, 304):
            pass
        elif (response.header(b"transfer-encoding") or b"").lower() == b"chunked":
            body = b""
            while True:
                chunk = _CHUNK.match(data, pos)
                if chunk is None:
                    if len(data) - pos < 20:
                        return responses, data[start:]
                    raise Malformed(f"bad chunk at byte {pos}: {data[pos : pos + 40]!r}")
                size = int(chunk.group(1), 16)
                pos = chunk.end()
                if size == 0:
                    if data[pos : pos + 2] != b"\r\n":
                        return responses, data[start:]
                    pos += 2
                    break
                if len(data) < pos + size + 2:
                    return responses, data[start:]
                body += data[pos : pos + size]
                pos += size + 2
            response.body = body
        elif length is not None:
            if not length.isdigit():
                raise Malformed(f"bad content-length {length!r}")
            rest = data[pos:]
            if bodiless and (not rest or rest.startswith(b"HTTP/1.")):
                pass
            elif len(rest) < int(length):
                return responses, data[start:]
            else:
                response.body = rest[: int(length)]
                pos += int(length)
        else:
            response.body = data[pos:]  # delimited by the close
            pos = len(data)
        responses.append(response)
    return responses, b""


# --------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Request:
    """One request of a case, as parts a mutation can change; :meth:`render` makes bytes."""

    index: int
    method: bytes
    version: bytes
    headers: tuple[bytes, ...]  # raw field lines after the X-Fuzz-Id line, without EOL
    body: bytes  # everything after the blank line, already framed
    content: bytes  # the unframed body (for mutations that reframe it)
    target: bytes = b""
    request_line: bytes | None = None  # replaces method SP target SP version
    eol: bytes = b"\r\n"
    head_end: bool = True  # False: the blank line ending the head is missing

    def render(self) -> bytes:
        line = self.request_line
        if line is None:
            line = b" ".join((self.method, self.target, self.version))
        lines = [line, b"X-Fuzz-Id: " + TAG + b"-r%d" % self.index, *self.headers]
        head = self.eol.join(lines) + self.eol + (self.eol if self.head_end else b"")
        return head + self.body


@dataclass(frozen=True)
class Case:
    """A payload template, how it is sent, and what must become of it.

    ``blocked``: the index of a request that must never reach the backend, nor any request
    after it (refused, or never complete); ``refused``: it is one the balancer must answer
    with its own 4xx (an RFC 9112 "MUST reject" or one of the README's desync refusals).
    ``cut`` truncates the payload; ``pauses`` are offsets where the client pauses briefly.
    """

    mutation: str
    template: bytes
    requests: int
    mode: Mode
    cut: int | None = None
    pauses: tuple[int, ...] = ()
    blocked: int | None = None
    refused: bool = False
    head: bool = field(default=False, repr=False)

    def payload(self, tag: bytes) -> bytes:
        data = self.template.replace(TAG, tag)
        return data if self.cut is None else data[: self.cut]


Draw = Callable[[st.SearchStrategy[Any]], Any]
# What must become of a mutated request: ANY outcome; REFUSED by the balancer (never at the
# backend, answered with its own 4xx); INCOMPLETE (never at the backend: it never ends).
Fate = Literal["any", "refused", "incomplete"]
ANY: Fate = "any"
REFUSED: Fate = "refused"
INCOMPLETE: Fate = "incomplete"
Mutation = Callable[[Draw, Request], tuple[Request, Fate]]


def refused_if(condition: bool) -> Fate:
    return REFUSED if condition else ANY


def hidden_request(index: int) -> bytes:
    """A request smuggled in a body: it reaches the backend only if framing is split."""
    return b"GET /fz/%s/h%d HTTP/1.1\r\nHost: fuzz.test\r\nX-Fuzz-Id: %s-h%d\r\n\r\n" % (
        TAG,
        index,
        TAG,
        index,
    )


def chunked(content: bytes, sizes: list[int]) -> bytes:
    out, pos = b"", 0
    for size in [*sizes, len(content)]:
        piece = content[pos : pos + size]
        if piece:
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
        pos += len(piece)
    return out + b"0\r\n\r\n"


def _without(headers: tuple[bytes, ...], *names: bytes) -> tuple[bytes, ...]:
    return tuple(h for h in headers if h.split(b":", 1)[0].strip().lower() not in names)


_FRAMING = (b"content-length", b"transfer-encoding")


@st.composite
def base_request(draw: Draw, index: int) -> Request:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    extras = draw(
        st.lists(
            st.sampled_from(
                [
                    b"User-Agent: wharf-fuzz/1",
                    b"Accept: */*",
                    b"Cookie: a=b; c=d",
                    b"X-Extra: some value",
                    b"Connection: keep-alive",
                    b"Cache-Control: no-cache",
                ]
            ),
            max_size=3,
            unique=True,
        )
    )
    headers = (b"Host: " + HOST, *extras)
    content = draw(
        st.sampled_from([b"hello", hidden_request(index), b"a=1&b=2"])
        | st.binary(max_size=200).map(lambda b: b.replace(b"#", b"_"))
        # Past the balancer's 64 KiB batches: streamed while the backend is watched.
        | st.sampled_from([70_000, 300_000]).map(lambda n: hidden_request(index) * (n // 60))
    )
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if method in (b"GET", b"HEAD", b"DELETE", b"OPTIONS") and framing != "none":
        framing = draw(st.sampled_from(["none", "none", "none", framing]))
    if framing == "length":
        headers += (b"Content-Length: %d" % len(content),)
        body = content
    elif framing == "chunked":
        sizes = draw(st.lists(st.integers(1, 70_000), max_size=3))
        headers += (b"Transfer-Encoding: chunked",)
        body = chunked(content, sizes)
    else:
        content, body = b"", b""
    target = b"/fz/" + TAG + b"/r%d" % index + draw(st.sampled_from([b"", b"?q=1", b"/a/b"]))
    return Request(index, method, version, headers, body, content, target)


def _insert(draw: Draw, req: Request, *lines: bytes) -> Request:
    at = draw(st.integers(0, len(req.headers)))
    return replace(req, headers=(*req.headers[:at], *lines, *req.headers[at:]))


def _request_line(draw: Draw, req: Request) -> tuple[Request, Fate]:
    kind = draw(
        st.sampled_from(
            ["method", "odd method", "absolute", "no version", "0.9", "version", "spaces"]
        )
    )
    if kind == "method":
        method = draw(st.sampled_from([b"", b"G ET", b"GE\x00T", b"G(T", b"\xffGET", b"G\x7fT"]))
        return replace(req, method=method), REFUSED
    if kind == "odd method":
        odd = [b"get", b"PURGE", b"CONNECT", b"TRACE", b"PROPFIND", b"M" * 300, b"X-!#$%"]
        return replace(req, method=draw(st.sampled_from(odd))), ANY
    if kind == "absolute":
        prefix = draw(
            st.sampled_from([b"http://fuzz.test", b"https://other.test:8443", b"http://u@h", b"/"])
        )
        if draw(st.booleans()):  # authority-form or asterisk-form: no id in the target
            return replace(req, target=draw(st.sampled_from([b"fuzz.test:443", b"*"]))), ANY
        return replace(req, target=prefix + req.target), ANY
    if kind == "no version":
        return replace(req, request_line=req.method + b" " + req.target), REFUSED
    if kind == "0.9":  # an HTTP/0.9 simple request: no version, no headers
        line = b"GET " + req.target
        return replace(req, request_line=line, headers=(), body=b""), REFUSED
    if kind == "version":
        version = draw(
            st.sampled_from(
                [
                    *(b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0", b"HTTP/1.10"),
                    *(b"http/1.1", b"HTTP/1", b"HTTP/11", b"HTTP/1.1 ", b"HTTP/ 1.1"),
                    *(b"HTTP/1.1\x00", b"HTX/1.1"),
                ]
            )
        )
        # RFC 9112 2.3 only asks for HTTP/<digit>.<digit>; h11 (and the balancer) serve any
        # major version that fits it as HTTP/1.x: not refused here.
        return replace(req, version=version), refused_if(
            not re.fullmatch(rb"HTTP/[0-9]\.[0-9]", version)
        )
    parts = (req.method, req.target, req.version)
    spaced = draw(
        st.sampled_from(
            [
                b"%s  %s %s" % parts,
                b" %s %s %s" % parts,
                b"%s\t%s\t%s" % parts,
                b"%s %s %s " % parts,
                b"%s %s  %s" % parts,
            ]
        )
    )
    return replace(req, request_line=spaced), REFUSED


def _target(draw: Draw, req: Request) -> tuple[Request, Fate]:
    if draw(st.booleans()):
        byte = draw(st.sampled_from([b"\x00", b"\x01", b"\t", b"\x0b", b"\x7f", b"\x80", b"\xff"]))
        at = draw(st.integers(1, len(req.target)))
        return replace(req, target=req.target[:at] + byte + req.target[at:]), REFUSED
    size = draw(st.sampled_from([1000, 8000, 16300, 16400, 20000, 70000]))
    target = req.target + b"?" + b"a" * size
    return replace(req, target=target), refused_if(len(req.method) + len(target) + 10 > 16384)


def _header(draw: Draw, req: Request) -> tuple[Request, Fate]:
    kind = draw(
        st.sampled_from(
            [
                "obs-fold",
                "no colon",
                "space before colon",
                "control byte",
                "bare LF",
                "obs-text",
                "duplicate Host",
                "no Host",
                "bad name",
                "look-alike",
                "Connection tokens",
                "Expect",
                "Upgrade",
                "X-Forwarded-For",
            ]
        )
    )
    if kind == "obs-fold":
        if not req.headers:
            req = replace(req, headers=(b"X-A: a",))
        at = draw(st.integers(1, len(req.headers)))
        fold = draw(st.sampled_from([b" folded", b"\tfolded", b" ", b"  x: y"]))
        return replace(req, headers=(*req.headers[:at], fold, *req.headers[at:])), REFUSED
    if kind == "no colon":
        return _insert(draw, req, draw(st.sampled_from([b"X-No-Colon value", b"Bare"]))), REFUSED
    if kind == "space before colon":
        name = draw(st.sampled_from([b"X-A", b"Host", b"Content-Length", b"Transfer-Encoding"]))
        sep = draw(st.sampled_from([b" :", b"\t:", b"  :"]))
        value = b"chunked" if name == b"Transfer-Encoding" else b"5"
        return _insert(draw, req, name + sep + b" " + value), REFUSED
    if kind == "control byte":
        byte = draw(st.sampled_from([b"\x00", b"\r", b"\x01", b"\x1b", b"\x7f", b"\x0b", b"\x0c"]))
        return _insert(draw, req, b"X-Ctl: a" + byte + b"b"), REFUSED
    if kind == "bare LF":  # a bare LF ends a line: what follows is a field line of its own
        if draw(st.booleans()):
            return _insert(draw, req, b"X-Lf: a\nX-Injected: 1"), ANY
        return _insert(draw, req, b"X-Lf: a\nno colon here"), REFUSED
    if kind == "obs-text":
        return _insert(draw, req, b"X-Text: caf\xc3\xa9 \x80\xff"), ANY
    if kind == "duplicate Host":  # RFC 9112 3.2: 400 for more than one Host
        other = draw(st.sampled_from([HOST, b"evil.test", b""]))
        return _insert(draw, req, b"Host: " + other), REFUSED
    if kind == "no Host":  # RFC 9112 3.2: 400 for an HTTP/1.1 request without Host
        without = _without(req.headers, b"host")
        return replace(req, headers=without), refused_if(req.version == b"HTTP/1.1")
    if kind == "bad name":
        name = draw(st.sampled_from([b"X A: 1", b"X(A): 1", b"\x80X: 1", b": empty", b"X\x00: 1"]))
        return _insert(draw, req, name), REFUSED
    if kind == "look-alike":
        line = draw(st.sampled_from([b"Content_Length: 3", b"Transfer_Encoding: chunked"]))
        return _insert(draw, req, line), REFUSED
    if kind == "Connection tokens":
        tokens = [b"content-length", b"transfer-encoding, host", b"close", b"keep-alive, x-extra"]
        return _insert(draw, req, b"Connection: " + draw(st.sampled_from(tokens))), ANY
    if kind == "Expect":
        return _insert(draw, req, b"Expect: 100-continue"), ANY
    if kind == "Upgrade":
        proto = draw(st.sampled_from([b"websocket", b"h2c", b"foo/1"]))
        return _insert(draw, req, b"Connection: upgrade", b"Upgrade: " + proto), ANY
    chain = b", ".join(b"192.0.2.%d" % i for i in range(draw(st.integers(1, 40))))
    return _insert(draw, req, b"X-Forwarded-For: " + chain), ANY


def _framing(draw: Draw, req: Request) -> tuple[Request, Fate]:
    content = req.content or b"hello"
    plain = _without(req.headers, *_FRAMING)
    kind = draw(st.sampled_from(["Content-Length", "Transfer-Encoding", "TE and CL"]))
    if kind == "Content-Length":
        n = len(content)
        values: list[tuple[list[bytes], Fate]] = [
            ([b"%d" % n, b"%d" % n], REFUSED),  # duplicated (refused, README)
            ([b"%d" % n, b"%d" % (n + 1)], REFUSED),  # conflicting
            ([b"%d, %d" % (n, n)], REFUSED),
            ([b"%d,%d" % (n, n + 1)], REFUSED),
            ([b"+%d" % n], REFUSED),
            ([b"-1"], REFUSED),
            ([b"0x%x" % n], REFUSED),
            ([b"%da" % n], REFUSED),
            ([b""], REFUSED),
            ([b"1e3"], REFUSED),
            ([b" %d" % n], ANY),
            ([b"00%d" % n], ANY),
            ([b"9" * 20], INCOMPLETE),
        ]
        value, fate = draw(st.sampled_from(values))
        lines = tuple(b"Content-Length: " + v for v in value)
        return replace(req, headers=plain + lines, body=content), fate
    body = chunked(content, [])
    if kind == "TE and CL":
        both = (b"Transfer-Encoding: chunked", b"Content-Length: %d" % len(body))
        if draw(st.booleans()):
            both = both[::-1]
        return replace(req, headers=plain + both, body=body), REFUSED
    encodings: list[tuple[list[bytes], Fate]] = [
        ([b"chunked, identity"], REFUSED),
        ([b"identity"], REFUSED),
        ([b"xchunked"], REFUSED),
        ([b"chunkedx"], REFUSED),
        ([b"chunked, chunked"], REFUSED),
        ([b"gzip, chunked"], REFUSED),
        ([b"chunked;q=1"], REFUSED),
        ([b"chunked", b"chunked"], REFUSED),
        ([b"\x0bchunked"], REFUSED),
        ([b"Chunked"], ANY),
        ([b"  chunked  "], ANY),
        ([b"CHUNKED"], ANY),
    ]
    value, fate = draw(st.sampled_from(encodings))
    lines = tuple(b"Transfer-Encoding: " + v for v in value)
    return replace(req, headers=plain + lines, body=body), fate


def _sizes(draw: Draw, req: Request) -> tuple[Request, Fate]:
    if draw(st.booleans()):
        count = draw(st.sampled_from([20, 95, 101, 150, 1000]))
        lines = tuple(b"X-Flood-%d: v" % i for i in range(count))
        req = replace(req, headers=req.headers + lines)
        return req, refused_if(len(req.headers) + 1 > 100)  # + X-Fuzz-Id
    size = draw(st.sampled_from([8000, 30000, 60000, 70000, 200000]))
    req = _insert(draw, req, b"X-Big: " + b"b" * size)
    return req, refused_if(len(req.render()) - len(req.body) > 65536)


def _body(draw: Draw, req: Request) -> tuple[Request, Fate]:
    content = req.content or b"hello"
    plain = _without(req.headers, *_FRAMING)
    kind = draw(
        st.sampled_from(
            [
                *("short length", "long length", "bad size", "extension", "no last chunk"),
                *("trailers", "bad trailer", "no chunk CRLF", "size OWS"),
            ]
        )
    )
    if kind == "short length":  # the rest of the body is read as the next request
        n = draw(st.integers(0, len(content) - 1))
        return replace(req, headers=(*plain, b"Content-Length: %d" % n), body=content), ANY
    if kind == "long length":
        n = len(content) + draw(st.integers(1, 100))
        return replace(req, headers=(*plain, b"Content-Length: %d" % n), body=content), INCOMPLETE
    te = (*plain, b"Transfer-Encoding: chunked")
    data = b"%s\r\n0\r\n\r\n" % content
    if kind == "bad size":
        size = draw(
            st.sampled_from(
                [b"zz", b"-1", b"0x5", b"5 5", b"", b"+5", b"0" * 20 + b"5", b"f" * 21, b" 5"]
            )
        )
        return replace(req, headers=te, body=size + b"\r\n" + data), REFUSED
    size = b"%x" % len(content)
    if kind == "extension":
        ext = draw(st.sampled_from([b";a=b", b';a="q;x"', b"; a", b";", b";" + b"e" * 70000]))
        return replace(req, headers=te, body=size + ext + b"\r\n" + data), ANY
    if kind == "no last chunk":
        return replace(req, headers=te, body=b"%s\r\n%s\r\n" % (size, content)), INCOMPLETE
    if kind == "trailers":
        trailer = draw(st.sampled_from([b"X-Trailer: a", b"Content-Length: 5", b"Host: evil"]))
        body = b"%s\r\n%s\r\n0\r\n%s\r\n\r\n" % (size, content, trailer)
        return replace(req, headers=te, body=body), ANY
    if kind == "bad trailer":
        body = b"%s\r\n%s\r\n0\r\nno colon\r\n\r\n" % (size, content)
        return replace(req, headers=te, body=body), REFUSED
    if kind == "no chunk CRLF":
        return replace(req, headers=te, body=b"%s\r\n%sXY0\r\n\r\n" % (size, content)), REFUSED
    return replace(req, headers=te, body=size + b"  \r\n" + data), ANY


def _line_ends(draw: Draw, req: Request) -> tuple[Request, Fate]:
    kind = draw(st.sampled_from(["bare LF", "no blank line"]))
    if kind == "bare LF":
        return replace(req, eol=b"\n"), ANY
    return replace(req, head_end=False, body=b""), INCOMPLETE


MUTATIONS: dict[str, Mutation] = {
    "request line": _request_line,
    "target": _target,
    "header": _header,
    "framing": _framing,
    "sizes": _sizes,
    "body": _body,
    "line ends": _line_ends,
}


@st.composite
def cases(draw: Draw) -> Case:
    """A request (or two pipelined), one of them mutated at one point, sent in some mode."""
    count = draw(st.sampled_from([1, 1, 2]))
    requests = [draw(base_request(i)) for i in range(count)]
    name = draw(st.sampled_from([*MUTATIONS, "none"]))
    blocked, fate = None, ANY
    if name != "none":
        at = draw(st.integers(0, count - 1))
        requests[at], fate = MUTATIONS[name](draw, requests[at])
        if fate == INCOMPLETE and at < count - 1:
            fate = ANY  # the next request's bytes may complete it
        blocked = None if fate == ANY else at
    template = b"".join(r.render() for r in requests)
    mode: Mode = draw(st.sampled_from(["eof", "eof", "eof", "eof", "abort", "hold"]))
    cut = None
    if draw(st.integers(0, 5)) == 5 and len(template) > 1:
        cut = draw(st.integers(1, len(template) - 1))
    pauses: tuple[int, ...] = ()
    if draw(st.integers(0, 4)) == 4 and len(template) > 1:
        pauses = tuple(sorted(draw(st.sets(st.integers(1, len(template) - 1), max_size=3))))
    head = any(r.method == b"HEAD" for r in requests) or b"HEAD" in template
    return Case(name, template, count, mode, cut, pauses, blocked, fate == REFUSED, head)
