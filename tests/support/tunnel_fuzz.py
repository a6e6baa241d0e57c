"""Black-box fuzzing of wharf-balancer's tunnels (WebSocket and other upgrades, CONNECT): a
client on real sockets asks to switch protocols, a raw target answers with a drawn script,
and when the balancer opens a tunnel both ends talk through it and end it in a drawn way.

The pieces, each usable alone:

- :class:`Ask`: the client's request (WebSocket handshake, h2c, another Upgrade value,
  CONNECT, an Upgrade without ``Connection: upgrade``, a plain GET...), maybe with a body,
  maybe with bytes pipelined after it (early tunnel data or a second request).
- :class:`Answer`: the target's bytes for it: a 101 (right, or without Upgrade, or naming
  another protocol, or framed), 1xx before it, a 2xx/non-2xx of any framing, garbage; maybe
  with tunnel bytes in the same write, stalled, cut, closed or reset.
- :class:`Talk`: what both ends send through the tunnel, and how it ends (close, half-close
  or reset by either end, or silence past the idle timeout).
- :class:`TunnelTarget`: the target, which plays the :class:`Plan` registered for each
  request's tag and records what came through its tunnel; :class:`TunnelFuzzBalancer`, the
  balancer in front of it (a thread of its own, short timeouts).
- :func:`run_client`: the client side on a trio loop of the test's thread;
  :func:`judge`: what is wrong with what both ends saw.
- :func:`open_sockets`: the process's TCP sockets (``/proc``), so that a test can tell a
  descriptor the balancer never closed.

Every request carries its tag in ``X-Tu-Id`` (and in its target); a response the target
means as its own echoes the tag in ``X-Tu-Id`` and at the start of its body, so a response
or tunnel relayed to the wrong client shows.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import trio
from hypothesis import strategies as st

from tests.support.http_fuzz import FuzzBalancer
from tests.support.target_fuzz import (
    HEAD_STALL,
    IDLE_SECONDS,
    SHORT_PAUSE,
    TIMEOUTS,
    Malformed,
    Parsed,
    RawTarget,
    body_problems,
    parse_one,
    reset_on_close,
)

TAG = b"########"  # replaced by the example's tag when sent (8 hex digits: same length)
HOST = b"tunnel-fuzz.test"
LIMIT = 5.0  # longer than any legitimate wait of one step (the idle timeout is 1 s)
_tags = itertools.count(1)
# An example's tags: its request's, the pipelined second request's, the follow-up GET's.
Tags = tuple[bytes, bytes, bytes]


def new_tags() -> Tags:
    return tuple(b"%08x" % next(_tags) for _ in range(3))  # type: ignore[return-value]


def _short(data: bytes) -> str:
    if len(data) <= 300:
        return repr(data)
    return f"{data[:150]!r} + <{len(data) - 300} bytes> + {data[-150:]!r}"


def pattern(size: int, seed: int) -> bytes:
    """``size`` bytes in which a reordered, repeated or dropped piece shows."""
    out = b"".join(b"<%d:%07d>" % (seed, i) for i in range(size // 12 + 1))
    return out[:size]


# --------------------------------------------------------------------------- the client's ask

AskKind = Literal["websocket", "h2c", "other", "connect", "no-connection", "no-upgrade", "plain"]
Pipelined = Literal["none", "data", "request"]


@dataclass(frozen=True)
class Ask:
    """The client's request, and what it sends right after it without waiting."""

    kind: AskKind
    version: bytes = b"HTTP/1.1"
    body: bytes = b""
    chunked: bool = False
    expect: bool = False
    offer: bytes = b"websocket"  # the Upgrade value (kinds that send one)
    pipelined: Pipelined = "none"
    early: bytes = b""  # early tunnel data (pipelined == "data")

    def __repr__(self) -> str:  # bodies run to 300 kB: hypothesis prints this
        return (
            f"Ask({self.kind!r}, {self.version!r}, body={_short(self.body)}, "
            f"chunked={self.chunked}, expect={self.expect}, offer={self.offer!r}, "
            f"pipelined={self.pipelined!r}, early={_short(self.early)})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))

    @property
    def connect(self) -> bool:
        return self.kind == "connect"

    @property
    def proposes(self) -> bool:
        """Whether the target gets an upgrade request (the balancer passes Upgrade on only
        with ``Connection: upgrade``, and never an offer of h2c: only h2c offered is a plain
        request)."""
        return self.kind in ("websocket", "h2c", "other") and bool(_offered(self))

    def head(self, tag: bytes) -> bytes:
        lines: list[bytes] = []
        if self.connect:
            authority = b"t%s.%s:443" % (tag, HOST)
            lines += [b"CONNECT %s %s" % (authority, self.version), b"Host: " + authority]
        else:
            method = b"POST" if self.body else b"GET"
            lines += [b"%s /tu/%s %s" % (method, tag, self.version), b"Host: " + HOST]
        lines.append(b"X-Tu-Id: " + tag)
        if self.kind == "websocket":
            lines += [
                b"Upgrade: " + self.offer,
                b"Connection: Upgrade",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                b"Sec-WebSocket-Version: 13",
            ]
        elif self.kind == "h2c":
            lines += [
                b"Upgrade: " + self.offer,
                b"Connection: Upgrade, HTTP2-Settings",
                b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            ]
        elif self.kind == "other":
            lines += [b"Upgrade: " + self.offer, b"Connection: keep-alive, Upgrade"]
        elif self.kind == "no-connection":
            lines.append(b"Upgrade: " + self.offer)
        elif self.kind == "no-upgrade":
            lines.append(b"Connection: Upgrade")
        if self.body:
            lines.append(
                b"Transfer-Encoding: chunked"
                if self.chunked
                else b"Content-Length: %d" % len(self.body)
            )
        if self.expect:
            lines.append(b"Expect: 100-continue")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def framed_body(self) -> bytes:
        if not self.body or not self.chunked:
            return self.body
        half = len(self.body) // 2 or 1
        pieces = [self.body[:half], self.body[half:]]
        return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"

    def after(self, next_tag: bytes) -> bytes:
        """The bytes pipelined right after the request."""
        if self.pipelined == "data":
            return self.early
        if self.pipelined == "request":
            return plain_request(next_tag)
        return b""

    def render(self, tag: bytes, next_tag: bytes) -> bytes:
        return self.head(tag) + self.framed_body() + self.after(next_tag)


def plain_request(tag: bytes, *, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return b"GET /tu/%s HTTP/1.1\r\nHost: %s\r\nX-Tu-Id: %s\r\n%s\r\n" % (tag, HOST, tag, extra)


# ----------------------------------------------------------------------- the target's answer

End = Literal["keep", "close", "reset"]


@dataclass(frozen=True)
class Answer:
    """What the target sends for the request, and what that is.

    ``data`` holds the whole answer with :data:`TAG` inside: 1xx, the final head (a 101, a
    2xx or another status), then the body of a response that keeps HTTP, or the first
    tunnel bytes of a switch. The target switches to a tunnel after it has sent a 101 or a
    2xx to CONNECT, whatever the balancer makes of that.
    """

    data: bytes
    label: str
    status: int | None = None  # the final status (a 101 too), when the head parses
    head_end: int | None = None  # offset past the final head (None: no valid head ever)
    message_end: int | None = None  # past the body (None: ends with the close)
    content: bytes = b""  # the body as the target meant it
    interims: tuple[int, ...] = ()
    # A 101, or a 2xx to CONNECT, with Content-Length or Transfer-Encoding (RFC 9110 8.6,
    # 9.3.6): no tunnel the balancer may open.
    framed_switch: bool = False
    upgrade: bytes | None = None  # the Upgrade value of a 101 (None: none sent)
    pause: tuple[int, float] | None = None  # (offset, seconds) before that byte
    cut: int | None = None  # stop after this many bytes
    end: End = "keep"
    early: bool = False  # answer before reading the request body

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if k not in ("data", "content")}
        shown = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"Answer(data={_short(self.data)}, content={_short(self.content)}, {shown})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def sent_end(self) -> int:
        return len(self.data) if self.cut is None else min(self.cut, len(self.data))

    def switches(self, connect: bool) -> bool:
        """Whether the target turns the connection into a tunnel after this answer."""
        if self.status is None or self.head_end is None:
            return False
        return self.status == 101 or (connect and 200 <= self.status < 300)


def good_answer() -> Answer:
    content = b"good:" + TAG
    head = b"HTTP/1.1 200 OK\r\nX-Tu-Id: %s\r\nContent-Length: %d\r\n\r\n" % (TAG, len(content))
    return Answer(
        head + content,
        "good",
        200,
        head_end=len(head),
        message_end=len(head) + len(content),
        content=content,
    )


# ------------------------------------------------------------------------- the tunnel talk

Ending = Literal[
    "client close",
    "target close",
    "client half-close",
    "target half-close",
    "client reset",
    "target reset",
    "idle",
    "client stalls",
    "target stalls",
]
# An end that stalls reads nothing for this long (past the idle timeout), then reads on to
# the end: the balancer's writes to it must give up, and the tunnel end, meanwhile.
STALL = IDLE_SECONDS + 0.5
STALL_WINDOW = 8192  # the receive buffer of an end that stalls


@dataclass(frozen=True)
class Talk:
    """What goes through the tunnel once it is open, and how it ends.

    Both ends send their chunks at once (each reading meanwhile). An end that closes or
    half-closes does so once it has all the other end's bytes, so that no byte is in
    flight; the other end then sends ``late`` (after a half-close only: the balancer passes
    the half-close on and keeps the other direction open, so those bytes must get through).
    An end that stalls stops reading for :data:`STALL` once the tunnel is open.
    """

    client: tuple[bytes, ...] = ()
    target: tuple[bytes, ...] = ()
    pause: float = 0.0  # before each chunk
    ending: Ending = "client close"
    late: bytes = b""

    def __repr__(self) -> str:
        client = [_short(c) for c in self.client]
        target = [_short(c) for c in self.target]
        return (
            f"Talk(client={client}, target={target}, pause={self.pause}, "
            f"ending={self.ending!r}, late={self.late!r})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@dataclass(frozen=True)
class Case:
    ask: Ask
    answer: Answer
    talk: Talk


@dataclass(frozen=True)
class Plan:
    """What the target does for one tag: the answer, then (if it switched) its side of the
    talk; ``from_client``: how many bytes it is to get through the tunnel."""

    answer: Answer
    talk: Talk
    connect: bool
    from_client: int


# ------------------------------------------------------------------------------ both inboxes


class Inbox:
    """Bytes one end received, and how its connection ended; waitable on one trio loop."""

    def __init__(self, initial: bytes = b"") -> None:
        self.data = bytearray(initial)
        self.ended: str | None = None  # "eof", "reset", or "closed" (by this end)
        self.resume_at = 0.0  # trio time before which the pump reads no more (a stall)
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        self._wake()

    def end(self, how: str) -> None:
        if self.ended is None:
            self.ended = how
        self._wake()

    async def until(self, size: int, seconds: float = LIMIT) -> bool:
        """Wait until ``size`` bytes are in or the connection ended; whether they are in."""
        with trio.move_on_after(seconds):
            while len(self.data) < size and self.ended is None:
                await self._changed.wait()
        return len(self.data) >= size

    async def closed(self, seconds: float = LIMIT) -> bool:
        """Wait until the connection ended; whether it did in time."""
        with trio.move_on_after(seconds):
            while self.ended is None:
                await self._changed.wait()
        return self.ended is not None

    async def changed(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._changed.wait()


async def pump_in(stream: trio.SocketStream, inbox: Inbox) -> None:
    """Read until the peer closes or resets (or this end closes the stream)."""
    try:
        while True:
            await trio.sleep_until(inbox.resume_at)
            chunk = await stream.receive_some(1 << 18)
            if not chunk:
                inbox.end("eof")
                return
            inbox.feed(chunk)
    except trio.ClosedResourceError:
        inbox.end("closed")
    except (trio.BrokenResourceError, OSError):
        inbox.end("reset")


async def send_chunks(stream: trio.SocketStream, chunks: tuple[bytes, ...], pause: float) -> bool:
    """Send each chunk (pausing before it); False if the connection broke."""
    try:
        for chunk in chunks:
            if pause:
                await trio.sleep(pause)
            await stream.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return False
    return True


async def _close(stream: trio.SocketStream, *, reset: bool = False) -> None:
    if reset:
        try:
            reset_on_close(stream.socket)
        except OSError:
            pass
    await stream.aclose()


# ------------------------------------------------------------------------------ the target


@dataclass
class Visit:
    """One request the target received."""

    tag: str
    connection: int
    head: bytes


@dataclass
class TargetTunnel:
    """The target's side of one tunnel (of a tag whose answer switched at the target)."""

    connection: int
    received: bytes = b""
    ended: str | None = None  # how the connection ended, seen from the target
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Connection:
    number: int
    peer_port: int  # the balancer's port: its socket shows in /proc with it
    closed: bool = False  # the target closed it (or saw it end)


class TunnelTarget(RawTarget):
    """A raw TCP target: plays the :class:`Plan` registered for each request's tag (a good
    200 for an unknown tag), then, after a switch, its side of the talk."""

    def __init__(self) -> None:
        super().__init__()
        self.plans: dict[str, Plan] = {}
        self.visits: list[Visit] = []
        self.tunnels: dict[str, TargetTunnel] = {}
        self.connections: dict[int, Connection] = {}

    def connections_of(self, tag: bytes) -> set[int]:
        return {v.connection for v in self.visits if v.tag == tag.decode()}

    def visits_of(self, tag: bytes) -> list[Visit]:
        return [v for v in self.visits if v.tag == tag.decode()]

    def _opened(self, number: int, stream: trio.SocketStream) -> None:
        self.connections[number] = Connection(number, stream.socket.getpeername()[1])

    def _closed(self, number: int) -> None:
        self.connections[number].closed = True

    async def _serve(self, stream: trio.SocketStream, number: int) -> None:
        buffer = b""
        while True:
            head, buffer = await self._read_head(stream, buffer)
            if not head:
                return
            found = re.search(rb"\r\nx-tu-id: *([0-9a-f]{8})", head, re.IGNORECASE)
            tag = found.group(1).decode() if found else "?"
            self.visits.append(Visit(tag, number, head))
            plan = self.plans.get(tag) or Plan(good_answer(), Talk(), False, 0)
            answer = plan.answer
            if not answer.early:
                rest = await _read_body(stream, head, buffer)
                if rest is None:
                    return
                buffer = rest
            if not await _play(stream, answer, tag.encode()):
                return
            if answer.switches(plan.connect):
                # Everything after the head is the tunnel's now: after an early answer,
                # the request body too (the client switched when the 101 came).
                tunnel = TargetTunnel(number)
                self.tunnels[tag] = tunnel
                try:
                    await _talk(stream, plan, buffer, tunnel)
                finally:
                    tunnel.done.set()
                return
            if answer.early:
                rest = await _read_body(stream, head, buffer)
                if rest is None:
                    return
                buffer = rest


async def _receive_more(stream: trio.SocketStream, buffer: bytes) -> bytes | None:
    data = await stream.receive_some(65536)
    return buffer + data if data else None


async def _read_body(stream: trio.SocketStream, head: bytes, buffer: bytes) -> bytes | None:
    """Read the request body past ``buffer``; what is left after it (None: EOF first)."""
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    if length is not None:
        size = int(length.group(1))
        while len(buffer) < size:
            more = await _receive_more(stream, buffer)
            if more is None:
                return None
            buffer = more
        return buffer[size:]
    if re.search(rb"\r\ntransfer-encoding: *chunked", head, re.IGNORECASE) is None:
        return buffer
    pos = 0
    while True:
        while b"\r\n" not in buffer[pos:]:
            more = await _receive_more(stream, buffer)
            if more is None:
                return None
            buffer = more
        line_end = buffer.index(b"\r\n", pos)
        size = int(buffer[pos:line_end].split(b";")[0], 16)
        if size == 0:
            while b"\r\n\r\n" not in buffer[line_end:]:
                more = await _receive_more(stream, buffer)
                if more is None:
                    return None
                buffer = more
            return buffer[buffer.index(b"\r\n\r\n", line_end) + 4 :]
        pos = line_end + 2 + size + 2
        while len(buffer) < pos:
            more = await _receive_more(stream, buffer)
            if more is None:
                return None
            buffer = more


async def _play(stream: trio.SocketStream, answer: Answer, tag: bytes) -> bool:
    """Send the answer's bytes; whether the connection goes on."""
    data = answer.data.replace(TAG, tag)
    end = answer.sent_end()
    pos = 0
    if answer.pause is not None and answer.pause[0] <= end:
        offset, seconds = answer.pause
        await stream.send_all(data[:offset])
        await trio.sleep(seconds)
        pos = offset
    if end > pos:
        await stream.send_all(data[pos:end])
    if answer.cut is not None and answer.end == "keep":
        # Cut and kept open: silent until the balancer gives up on it.
        with trio.move_on_after(LIMIT):
            while await stream.receive_some(65536):
                pass
        return False
    if answer.end == "keep":
        return True
    await _close(stream, reset=answer.end == "reset")
    return False


async def _talk(stream: trio.SocketStream, plan: Plan, initial: bytes, log: TargetTunnel) -> None:
    """The target's side of a tunnel, recorded in ``log``."""
    inbox = Inbox(initial)
    try:
        await _talk_through(stream, plan, inbox)
    finally:
        log.received = bytes(inbox.data)
        log.ended = inbox.ended


async def _talk_through(stream: trio.SocketStream, plan: Plan, inbox: Inbox) -> None:
    talk = plan.talk
    if talk.ending == "target stalls":
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL_WINDOW)
        inbox.resume_at = trio.current_time() + STALL
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump_in, stream, inbox)
        await send_chunks(stream, talk.target, talk.pause)
        ending = talk.ending
        if ending == "target close":
            await inbox.until(plan.from_client)
            await _close(stream)
        elif ending == "target reset":
            await _close(stream, reset=True)
        elif ending == "target half-close":
            await inbox.until(plan.from_client)
            try:
                await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            await inbox.closed()
            await _close(stream)
        else:  # the client ends it, or the balancer when it idles out
            await inbox.closed(LIMIT + IDLE_SECONDS + STALL)
            if ending == "client half-close" and inbox.ended == "eof" and talk.late:
                await send_chunks(stream, (talk.late,), 0)
            await _close(stream)
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------- the balancer in a thread


class TunnelFuzzBalancer(FuzzBalancer):
    """:class:`tests.support.http_fuzz.FuzzBalancer` in front of a :class:`TunnelTarget`,
    with the target-side fuzz test's short timeouts (response 0.5 s, idle 1 s)."""

    timeouts = TIMEOUTS
    idle_timeout_seconds = IDLE_SECONDS

    def __init__(self) -> None:
        super().__init__()
        self.target = self.backend = TunnelTarget()

    def start(self) -> TunnelFuzzBalancer:
        super().start()
        return self

    def register(self, tag: bytes, plan: Plan) -> None:
        # A dict item set from another thread: atomic, and done before the request goes.
        self.target.plans[tag.decode()] = plan


# ------------------------------------------------------------------------------ the client

Shape = Literal["hang", "malformed", "closed", "switched", "response"]


@dataclass
class ClientLog:
    """What the client saw of one exchange."""

    port: int
    data: bytes = b""  # everything received (heads, then response or tunnel bytes)
    shape: Shape = "hang"
    error: str | None = None
    heads: list[tuple[int, list[tuple[bytes, bytes]]]] = field(default_factory=list)
    switch_at: int = 0  # offset past the head that opened the tunnel
    parsed: Parsed | None = None  # a response that kept HTTP
    closed: bool = False  # the balancer closed (or reset) the connection
    ended: str | None = None  # in a tunnel: how the connection ended
    ended_in_time: bool = True
    second: Parsed | None = None  # the answer to a pipelined second request
    second_error: str | None = None
    follow_up: list[str] = field(default_factory=list)  # what was wrong with the next GET
    ports: list[int] = field(default_factory=list)  # every client port the example used

    @property
    def tunnel(self) -> bytes:
        return self.data[self.switch_at :]


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([0-9]{3}) ([^\x00\r\n]*)\r\n")
_FIELD = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):[ \t]*([^\x00\r\n]*?)[ \t]*")


def _heads(data: bytes, connect: bool) -> tuple[list[tuple[int, list[tuple[bytes, bytes]]]], int]:
    """The complete heads at the start of ``data`` up to a switch or a final head, and the
    offset past the last one.

    Raises:
        Malformed: a head is not a valid HTTP/1.1 status line and fields.
    """
    heads: list[tuple[int, list[tuple[bytes, bytes]]]] = []
    pos = 0
    while pos < len(data):
        line = _STATUS_LINE.match(data, pos)
        if line is None:
            if b"\n" not in data[pos:] and len(data) - pos < 64:
                break
            raise Malformed(f"no status line at byte {pos}: {data[pos : pos + 80]!r}")
        end = data.find(b"\r\n\r\n", line.end() - 2)
        if end < 0:
            break
        headers = []
        for raw in data[line.end() : end + 2].split(b"\r\n")[:-1]:
            found = _FIELD.fullmatch(raw)
            if found is None:
                raise Malformed(f"bad header line {raw[:200]!r}")
            headers.append((found.group(1).lower(), found.group(2)))
        status = int(line.group(1))
        heads.append((status, headers))
        pos = end + 4
        if status >= 200 or status == 101:
            break
    return heads, pos


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _switch_head(log: ClientLog, connect: bool) -> int | None:
    if not log.heads:
        return None
    status = log.heads[-1][0]
    return status if status == 101 or (connect and 200 <= status < 300) else None


async def run_client(address: tuple[str, int], case: Case, tags: Tags) -> ClientLog:
    """Play the client's side of ``case``: the request, then the tunnel or the response
    (and the pipelined second request's), then a plain GET (on the same connection when it
    stays open and may carry one)."""
    tag, second_tag, after_tag = tags
    ask = case.ask
    sock = trio.socket.socket()
    if case.talk.ending == "client stalls":
        # A small window (set before the handshake), so that a stall soon blocks the
        # balancer's writes instead of filling megabytes of kernel buffers.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL_WINDOW)
    await sock.connect(address)
    stream = trio.SocketStream(sock)
    log = ClientLog(stream.socket.getsockname()[1])
    log.ports.append(log.port)
    inbox = Inbox()
    reuse = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump_in, stream, inbox)
        sent = trio.Event()

        async def request() -> None:
            if await send_chunks(stream, (ask.render(tag, second_tag),), 0):
                sent.set()

        nursery.start_soon(request)
        await _read_heads(log, inbox, ask.connect)
        if log.shape == "switched":
            # The client's tunnel bytes go after its request (early ones are part of it).
            with trio.move_on_after(LIMIT):
                await sent.wait()
            await _client_talk(stream, inbox, log, case, ready=sent.is_set())
        elif log.shape == "response":
            reuse = await _read_rest(log, inbox, ask) and sent.is_set()
        if reuse:
            log.follow_up = await _follow_up(stream, inbox, after_tag, len(inbox.data))
        nursery.cancel_scope.cancel()
    await stream.aclose()
    if not reuse:
        async with await trio.open_tcp_stream(*address) as fresh:
            log.ports.append(fresh.socket.getsockname()[1])
            fresh_inbox = Inbox()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump_in, fresh, fresh_inbox)
                log.follow_up = await _follow_up(fresh, fresh_inbox, after_tag, 0)
                nursery.cancel_scope.cancel()
    return log


async def _read_heads(log: ClientLog, inbox: Inbox, connect: bool) -> None:
    """Read until the heads say switched or a final response, or the connection ends."""
    with trio.move_on_after(LIMIT):
        while True:
            data = bytes(inbox.data)
            try:
                heads, pos = _heads(data, connect)
            except Malformed as exc:
                log.data, log.shape, log.error = data, "malformed", str(exc)
                return
            log.data, log.heads = data, heads
            if heads and (heads[-1][0] >= 200 or heads[-1][0] == 101):
                log.shape = "switched" if _switch_head(log, connect) else "response"
                log.switch_at = pos
                return
            if inbox.ended is not None:
                log.shape, log.closed = "closed", True
                return
            await inbox.changed(LIMIT)


async def _read_rest(log: ClientLog, inbox: Inbox, ask: Ask) -> bool:
    """The rest of a response that kept HTTP (and the pipelined second request's); whether
    the connection may carry the next request."""
    parsed = await _read_response(inbox, 0)
    log.data, log.closed = bytes(inbox.data), inbox.ended is not None
    if isinstance(parsed, str):
        log.shape, log.error = "malformed", parsed
        return False
    log.parsed = parsed
    final = parsed.final if parsed is not None else None
    if parsed is None or final is None or not final.complete or log.closed:
        return False
    if final.header(b"connection") == b"close" or ask.pipelined == "data":
        return False  # early tunnel data would be read as the next request
    if ask.pipelined != "request":
        return len(inbox.data) == parsed.end
    second = await _read_response(inbox, parsed.end)
    log.data, log.closed = bytes(inbox.data), inbox.ended is not None
    if isinstance(second, str):
        log.second_error = second
        return False
    log.second = second
    final = second.final if second is not None else None
    if second is None or final is None or not final.complete or log.closed:
        return False
    if final.header(b"connection") == b"close":
        return False
    return len(inbox.data) == parsed.end + second.end


async def _read_response(inbox: Inbox, start: int) -> Parsed | str | None:
    """The response at ``start`` once complete (or the connection ended: maybe cut short);
    None when nothing whole came in time, a string when it is malformed."""
    with trio.move_on_after(LIMIT):
        while True:
            data, closed = bytes(inbox.data[start:]), inbox.ended is not None
            try:
                parsed = parse_one(data, bodiless=False, eof=closed)
            except Malformed as exc:
                return str(exc)
            if closed or (parsed.final is not None and parsed.final.complete):
                return parsed
            await inbox.changed(LIMIT)
    return None


async def _client_talk(
    stream: trio.SocketStream, inbox: Inbox, log: ClientLog, case: Case, *, ready: bool
) -> None:
    """The client's side of the tunnel (``ready``: its request is all out)."""
    talk, answer = case.talk, case.answer
    start = log.switch_at
    runs = answer.end == "keep" and answer.cut is None  # the target talks
    expected = answer.sent_end() - (answer.head_end or 0)
    if runs:
        expected += sum(map(len, talk.target))
    ending = talk.ending if runs else "target close"
    if ending == "client stalls":
        inbox.resume_at = trio.current_time() + STALL
    ok = ready and await send_chunks(stream, talk.client, talk.pause)
    if ending == "client close":
        await inbox.until(start + expected)
    elif ending == "client reset":
        await _close(stream, reset=True)
    elif ending == "client half-close":
        await inbox.until(start + expected)
        if ok:
            try:
                await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        log.ended_in_time = await inbox.closed()
    elif ending == "target half-close":
        log.ended_in_time = await inbox.closed()
        if talk.late:
            await send_chunks(stream, (talk.late,), 0)
    else:  # the target ends it, or the balancer once the tunnel idles
        log.ended_in_time = await inbox.closed(LIMIT + IDLE_SECONDS + STALL)
    log.data = bytes(inbox.data)
    log.ended = inbox.ended


async def _follow_up(stream: trio.SocketStream, inbox: Inbox, tag: bytes, start: int) -> list[str]:
    """A well-behaved GET: its own 200 and body, then the close it asked for."""
    if not await send_chunks(stream, (plain_request(tag, close=True),), 0):
        return ["the balancer closed the connection before the next request"]
    parsed = await _read_response(inbox, start)
    if isinstance(parsed, str):
        return [f"the next request got a malformed answer: {parsed}"]
    data = bytes(inbox.data[start:])
    if parsed is None or parsed.final is None or not parsed.final.complete:
        return [f"the next request got no whole answer: {data[:300]!r}"]
    final = parsed.final
    got = (final.status, final.header(b"x-tu-id"), final.body)
    if got != (200, tag, b"good:" + tag):
        return [f"the next request got {got}: {data[:300]!r}"]
    await inbox.closed()
    tail = bytes(inbox.data[start + parsed.end :])
    return [f"bytes after the next response: {tail[:300]!r}"] if tail else []


# ------------------------------------------------------------------------------ the oracle


# Endings after which either end may miss the other's last bytes: a reset, or a tunnel the
# balancer ended while it could not write to an end that stalled.
LOSSY = ("client reset", "target reset", "client stalls", "target stalls")


def from_client(case: Case, second_tag: bytes) -> bytes:
    """What the target is to get through the tunnel: after an early answer the request body
    too (the client switched when the 101 came), then the pipelined bytes and the chunks."""
    ask = case.ask
    body = ask.framed_body() if case.answer.early else b""
    return body + ask.after(second_tag) + b"".join(case.talk.client)


def _offered(ask: Ask) -> list[bytes]:
    """The protocols the target is offered: the client's, but h2c (h2c smuggling)."""
    tokens = [token.strip().lower() for token in ask.offer.split(b",")]
    return [token for token in tokens if token and token != b"h2c"]


def acceptable_101(case: Case) -> bool:
    """A 101 the balancer has to relay: to an HTTP/1.1 upgrade it passed on, naming an
    offered protocol, unframed, sent once the whole request was read."""
    ask, answer = case.ask, case.answer
    return (
        answer.status == 101
        and ask.proposes
        and ask.version == b"HTTP/1.1"
        and not answer.early
        and not answer.framed_switch
        and answer.upgrade is not None
        and answer.upgrade.strip().lower() in _offered(ask)
    )


def judge(case: Case, log: ClientLog, target: TunnelTarget, tags: Tags) -> list[str]:
    """What is wrong with what the client (and the target, after a switch) saw."""
    ask, answer = case.ask, case.answer
    tag = tags[0]
    if log.shape == "malformed":
        return [f"malformed answer: {log.error}; got {_short(log.data)}"]
    if log.shape == "hang":
        return [f"no answer or close in {LIMIT} s; got {_short(log.data)}"]
    if log.shape == "closed":
        return [f"closed without a final response; got {_short(log.data)}"]
    problems: list[str] = []
    sent = answer.sent_end()
    reached = answer.head_end is not None and sent >= answer.head_end
    stalled = (
        answer.pause is not None
        and answer.pause[1] >= HEAD_STALL
        and answer.pause[0] <= sent
        and (answer.head_end is None or answer.pause[0] < answer.head_end)
    )
    timed_out = stalled or (not reached and answer.end == "keep")
    # A reset, or a close with the request body unread (the kernel resets then): the
    # balancer may lose any byte the target sent.
    lossy = answer.end == "reset" or (answer.end == "close" and answer.early)
    *interims, (status, headers) = log.heads
    for code, _ in interims:
        if code not in answer.interims:
            problems.append(f"a 1xx the target never sent: {code}")
        if code == 100 and not ask.expect:
            problems.append("a 100 Continue to a client that never asked for one")
        if ask.version == b"HTTP/1.0":
            problems.append(f"a {code} to an HTTP/1.0 client (RFC 9110 15.2)")
    ident = _header(headers, b"x-tu-id")
    if ident is None:  # the balancer's own answer
        if log.shape == "switched":
            return [*problems, f"a {status} that opens a tunnel, not from the target"]
        if status == 504:
            if not timed_out:
                problems.append(f"504 though the target answered in time ({answer.label})")
        elif status == 502:
            relayable = acceptable_101(case) or (
                answer.status is not None and answer.status != 101 and not answer.framed_switch
            )
            if reached and not stalled and not lossy and relayable:
                problems.append(f"502 for an answer to relay ({answer.label})")
        else:
            problems.append(f"the balancer answered {status}, not 502 or 504")
        return problems + _second(case, log, tags, target)
    if ident != tag:
        return [*problems, f"an answer for request {ident!r} relayed to request {tag!r}"]
    if not reached or stalled:
        return [*problems, f"relayed an answer the balancer had to refuse ({answer.label})"]
    if status != answer.status:
        problems.append(f"status {status}, the target sent {answer.status}")
    if log.shape == "switched":
        return problems + _judge_switch(case, log, target, tags, status, headers)
    if answer.switches(ask.connect) and ask.connect:
        return [*problems, f"the target's {answer.status} to CONNECT opened no tunnel"]
    problems += _judge_response(case, log, lossy)
    return problems + _second(case, log, tags, target)


def _judge_switch(
    case: Case,
    log: ClientLog,
    target: TunnelTarget,
    tags: Tags,
    status: int,
    headers: list[tuple[bytes, bytes]],
) -> list[str]:
    ask, answer, talk = case.ask, case.answer, case.talk
    tag, second_tag, _ = tags
    problems: list[str] = []
    if status == 101:
        if not ask.proposes:
            problems.append(f"a 101 to a request that asked for no upgrade ({ask.kind})")
        if ask.version == b"HTTP/1.0":
            problems.append("a 101 to an HTTP/1.0 client (RFC 9110 7.8, 15.2)")
        upgrade = _header(headers, b"upgrade")
        if not upgrade:
            problems.append("a 101 without Upgrade (RFC 9110 7.8: its sender MUST send one)")
        elif not {p.strip().lower() for p in upgrade.split(b",")} <= set(_offered(ask)):
            problems.append(f"a 101 switching to {upgrade!r}, which the client did not offer")
        connection = (_header(headers, b"connection") or b"").lower()
        if b"upgrade" not in [t.strip() for t in connection.split(b",")]:
            problems.append(f"a 101 whose Connection does not name upgrade: {connection!r}")
    elif not ask.connect:
        problems.append(f"a tunnel after a {status} to {ask.kind}")
    elif answer.framed_switch:
        # An application answering CONNECT as any method: the client's next requests
        # would reach it past the rules.
        problems.append(f"a tunnel after a {status} to CONNECT with framing (RFC 9110 9.3.6)")
    names = {name for name, _ in headers}
    if names & {b"content-length", b"transfer-encoding"}:
        problems.append(f"framing fields in a {status} that opens a tunnel (RFC 9110 8.6, 9.3.6)")
    # The target's bytes, as the client got them.
    runs = answer.end == "keep" and answer.cut is None
    sent = answer.data.replace(TAG, tag)[answer.head_end or 0 : answer.sent_end()]
    if runs:
        sent += b"".join(talk.target)
    got = log.tunnel
    # A target that closed (not half-closed) right after its answer resets the connection
    # when the client's bytes reach it, and its kernel drops what it had not sent yet.
    closed_early = answer.end == "close" and bool(from_client(case, second_tag))
    lossy = answer.end == "reset" or closed_early or (runs and talk.ending in LOSSY)
    # After the client's half-close the target's late bytes must still come through.
    if runs and talk.ending == "client half-close":
        sent += talk.late
    if lossy:
        if not sent.startswith(got):
            problems.append(f"tunnel bytes {_short(got)} are no prefix of {_short(sent)}")
    elif got != sent:
        problems.append(f"tunnel bytes {_short(got)}, the target sent {_short(sent)}")
    if not log.ended_in_time:
        problems.append(f"the tunnel did not end in time ({talk.ending}, {answer.label})")
    # The target's side: the request it got, and the client's bytes after it.
    visits = target.visits_of(tag)
    if len(visits) != 1:
        problems.append(f"the request reached the target {len(visits)} times")
    elif (
        ask.proposes and b"\r\nupgrade: " + b", ".join(_offered(ask)) not in visits[0].head.lower()
    ):
        problems.append(f"the target got no Upgrade: {visits[0].head[:300]!r}")
    if target.visits_of(second_tag):
        problems.append("the request pipelined into the tunnel reached the target as HTTP")
    if not runs:
        return problems
    tunnel = target.tunnels.get(tag.decode())
    if tunnel is None:
        if talk.ending == "client reset":
            # The client's reset closes the target's connection too, and it may come while
            # the target is still sending the answer that opens its side (a 101 that
            # trickles its first tunnel bytes): the target's send fails before it gets there.
            return problems
        return [*problems, "the target never got to its side of the tunnel"]
    if not tunnel.done.wait(LIMIT + IDLE_SECONDS + STALL):
        return [*problems, "the target's side of the tunnel did not end in time"]
    expected = from_client(case, second_tag)
    received = tunnel.received
    if talk.ending == "target half-close":
        expected += talk.late
    if talk.ending in LOSSY:
        if not expected.startswith(received):
            problems.append(f"the target got {_short(received)}, no prefix of {_short(expected)}")
    elif received != expected:
        problems.append(f"the target got {_short(received)}, the client sent {_short(expected)}")
    if tunnel.ended is None and talk.ending not in ("target close", "target reset"):
        problems.append(f"the target's connection did not end ({talk.ending})")
    return problems


def _judge_response(case: Case, log: ClientLog, lossy: bool) -> list[str]:
    """A response that kept HTTP: the target's status and body, cut only if it was."""
    answer = case.answer
    parsed = log.parsed
    if parsed is None or parsed.final is None:
        return [f"no whole response in {LIMIT} s: {_short(log.data)}"]
    final = parsed.final
    tag = final.header(b"x-tu-id") or b""
    data = answer.data.replace(TAG, tag)
    sent = answer.sent_end()
    delimited = answer.message_end is None  # by the close
    content = data[answer.head_end or 0 : sent] if delimited else answer.content.replace(TAG, tag)
    whole = answer.end != "keep" if delimited else sent >= (answer.message_end or 0)
    problems = []
    framed = final.status in (204, 304) or any(
        name in (b"content-length", b"transfer-encoding") for name, _ in final.headers
    )
    if final.complete and not framed:
        # Delimited by the close on the client's side (always so for an HTTP/1.0 client):
        # a cut shows only as a body cut short.
        if not content.startswith(final.body):
            problems.append(f"body {final.body[:100]!r} is no prefix of {content[:100]!r}")
        elif whole and not lossy and final.body != content:
            problems.append(f"a whole response cut short ({answer.label})")
    else:
        problems += body_problems(
            final,
            content,
            whole=whole,
            lossy=lossy,
            delimited=delimited,
            closed=log.closed,
            label=answer.label,
        )
    return problems


def _second(case: Case, log: ClientLog, tags: Tags, target: TunnelTarget) -> list[str]:
    """The request pipelined after one that kept HTTP: parsed by the balancer as a request
    of its own (never passed on raw), and answered in turn if the connection stayed open
    after the first answer."""
    if case.ask.pipelined != "request":
        return []
    second_tag = tags[1]
    problems = [
        f"the pipelined request reached the target raw: {visit.head!r}"
        for visit in target.visits_of(second_tag)
        if b"\r\nx-forwarded-for: " not in visit.head.lower()
    ]
    if log.second_error is not None:
        return [*problems, f"the pipelined request got a malformed answer: {log.second_error}"]
    second = log.second
    if second is None or second.final is None:
        return problems  # the connection closed after the first answer (a server may)
    first = log.parsed.final if log.parsed is not None else None
    if first is not None and first.header(b"connection") == b"close":
        problems.append("an answer to a request pipelined after Connection: close")
    final = second.final
    got = (final.status, final.header(b"x-tu-id"), final.body)
    if got != (200, second_tag, b"good:" + second_tag):
        problems.append(f"the pipelined request got {got}")
    return problems


# ------------------------------------------------------------------------------ strategies

Draw = Callable[..., Any]
INTERIMS = {
    100: b"HTTP/1.1 100 Continue\r\n\r\n",
    102: b"HTTP/1.1 102 Processing\r\n\r\n",
    103: b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n",
}
OFFERS: dict[AskKind, list[bytes]] = {
    "websocket": [b"websocket", b"WebSocket"],
    "h2c": [b"h2c"],
    "other": [b"foo/1", b"TLS/1.2", b"websocket, h2c", b"IRC/6.9"],
    "no-connection": [b"websocket", b"h2c"],
}
GARBAGE = [
    b"garbage\r\n\r\n",
    b"\x16\x03\x01\x02\x00",
    b"HTTP/1.1 1010 Switching\r\n\r\n",
    b"HTTP/1.1 101 Switching\r\nUpgrade websocket\r\n\r\n",
    b"HTTP/1.1 101 OK\r\n Upgrade: websocket\r\n\r\n",
    b"HTTP/2 101\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"\x81\x05hello",
]


def _big(size: int) -> st.SearchStrategy[bytes]:
    return st.integers(0, 9).map(lambda seed: pattern(size, seed))


def chunks() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=1, max_size=64) | st.sampled_from([3000, 70_000, 300_000]).flatmap(
        _big
    )


@st.composite
def asks(draw: Draw) -> Ask:
    kind: AskKind = draw(
        st.sampled_from(
            [
                *("websocket", "connect", "h2c", "websocket", "connect", "other"),
                *("websocket", "connect", "no-connection", "websocket", "no-upgrade", "plain"),
            ]
        )
    )
    version = draw(st.sampled_from([b"HTTP/1.1"] * 7 + [b"HTTP/1.0"]))
    offer = draw(st.sampled_from(OFFERS.get(kind, [b"websocket"])))
    body, chunked, expect = b"", False, False
    if kind != "connect" and draw(st.integers(0, 3)) == 0:
        body = draw(
            st.binary(min_size=1, max_size=100)
            | st.sampled_from([5000, 300_000]).map(lambda n: pattern(n, 7))
        )
        chunked = version == b"HTTP/1.1" and draw(st.booleans())
        expect = version == b"HTTP/1.1" and draw(st.integers(0, 3)) == 0
    pipelined: Pipelined = draw(st.sampled_from(["none", "none", "none", "data", "request"]))
    early = b""
    if pipelined == "data":
        early = draw(st.binary(min_size=1, max_size=100) | _big(70_000))
    return Ask(kind, version, body, chunked, expect, offer, pipelined, early)


def _framed(status: int, framing: str, content: bytes, lines: list[bytes]) -> bytes:
    """Head fields and body of a response that keeps HTTP."""
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(content))
        return content
    if framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        return b"%x\r\n%s\r\n0\r\n\r\n" % (len(content), content) if content else b"0\r\n\r\n"
    return content  # close-delimited


@st.composite
def answers(draw: Draw, ask: Ask) -> Answer:
    if ask.connect:
        shapes = ["2xx", "2xx", "2xx", "refusal", "refusal", "101", "garbage", "silence"]
    elif ask.proposes:
        shapes = ["101", "101", "101", "101", "101 other", "101 no upgrade", "101 framed"]
        shapes += ["2xx", "refusal", "refusal", "garbage", "silence"]
    else:
        shapes = ["101", "101", "2xx", "refusal", "garbage", "silence"]
    shape = draw(st.sampled_from(shapes))
    interims: tuple[int, ...] = ()
    if shape not in ("garbage", "silence") and draw(st.integers(0, 4)) == 0:
        interims = tuple(draw(st.lists(st.sampled_from(sorted(INTERIMS)), min_size=1, max_size=2)))
    prefix = b"".join(INTERIMS[code] for code in interims)
    status: int | None = None
    head_end: int | None = None
    message_end: int | None = None
    content = b""
    upgrade: bytes | None = None
    framed = False
    label = shape
    if shape.startswith("101"):
        status = 101
        offered = (_offered(ask) or [ask.offer.split(b",")[0].strip()])[0]
        upgrade = offered
        if shape == "101 other":
            upgrade = draw(
                st.sampled_from([b"h2c", b"foo/2", b"websocket"]).filter(
                    lambda p: p.lower() not in _offered(ask)
                )
            )
        lines = [b"HTTP/1.1 101 Switching Protocols", b"X-Tu-Id: " + TAG]
        if shape == "101 no upgrade":
            upgrade = None
        else:
            lines.append(b"Upgrade: " + upgrade)
        lines.append(draw(st.sampled_from([b"Connection: Upgrade", b"Connection: upgrade, x-a"])))
        if ask.kind == "websocket":
            lines.append(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        if shape == "101 framed":
            framed = True
            lines.append(
                draw(
                    st.sampled_from(
                        [b"Content-Length: 5", b"Content-Length: 0", b"Transfer-Encoding: chunked"]
                    )
                )
            )
        head = prefix + b"\r\n".join(lines) + b"\r\n\r\n"
        after = draw(st.sampled_from([b""] * 3 + [b"hi"]) | chunks())  # tunnel bytes at once
        data, head_end = head + after, len(head)
    elif shape in ("2xx", "refusal"):
        if shape == "2xx":
            status = draw(st.sampled_from([200, 200, 201, 204]))
        else:
            status = draw(st.sampled_from([400, 403, 404, 407, 426, 500, 502, 503]))
        lines = [
            b"HTTP/1.1 %d %s" % (status, draw(st.sampled_from([b"OK", b"Nope", b""]))),
            b"X-Tu-Id: " + TAG,
        ]
        if ask.connect and status < 300:
            # The target's tunnel: whatever follows the head is its first tunnel bytes,
            # however the head pretends to frame them (the balancer refuses a framed one).
            framing = draw(st.sampled_from(["none", "none", "length", "chunked"]))
            after = draw(st.sampled_from([b"", b"", b"hello"]) | chunks())
            if framing == "length":
                lines.append(b"Content-Length: %d" % len(after))
            elif framing == "chunked":
                lines.append(b"Transfer-Encoding: chunked")
            framed = framing != "none"
            label += f" {framing}"
            head = prefix + b"\r\n".join(lines) + b"\r\n\r\n"
            data, head_end = head + after, len(head)
        else:
            framing = draw(st.sampled_from(["length", "length", "chunked", "close"]))
            payload = draw(st.binary(max_size=50) | st.sampled_from([70_000]).flatmap(_big))
            content = b"" if status == 204 else b"id:" + TAG + b";" + payload
            if status == 204:
                framing = "length"
            body = _framed(status, framing, content, lines) if status != 204 else b""
            if draw(st.integers(0, 3)) == 0:
                lines.append(b"Connection: close")
            label += f" {framing}"
            head = prefix + b"\r\n".join(lines) + b"\r\n\r\n"
            data, head_end = head + body, len(head)
            message_end = None if framing == "close" else len(data)
    elif shape == "garbage":
        data = draw(st.sampled_from(GARBAGE))
    else:  # silence, or a head that never ends
        data = draw(st.sampled_from([b"", b"HTTP/1.1 101 Switching Protocols\r\n"]))
    switches = status is not None and (status == 101 or (ask.connect and 200 <= status < 300))
    ends: list[End] = ["keep", "keep", "keep", "close", "reset"]
    if shape in ("garbage", "silence"):
        ends = ["keep", "close", "reset"]
    elif not switches and message_end is None:
        ends = ["close", "close", "reset"]
    end: End = draw(st.sampled_from(ends))
    cut = None
    if shape != "silence" and draw(st.integers(0, 5)) == 0:
        cut = draw(st.integers(0, len(data)))
        label += " cut"
        if end == "keep" and draw(st.integers(0, 2)) > 0:
            end = "close"  # a stall to the timeout costs half a second; keep those rarer
    early = bool(ask.body) and not ask.chunked and draw(st.integers(0, 2)) == 0
    pause = None
    kind = draw(st.sampled_from(["none"] * 8 + ["trickle", "stall"]))
    if kind == "trickle" and len(data) > 1:
        pause = (draw(st.integers(1, len(data) - 1)), SHORT_PAUSE)
    elif kind == "stall" and not early and head_end is not None:
        pause = (draw(st.integers(0, head_end - 1)), HEAD_STALL)
    if pause is not None:
        label += f" {kind}"
    if early:
        label += " early"
    return Answer(
        data,
        label,
        status,
        head_end,
        message_end,
        content,
        interims,
        framed,
        upgrade,
        pause,
        cut,
        end,
        early,
    )


@st.composite
def talks(draw: Draw) -> Talk:
    client = tuple(draw(st.lists(chunks(), max_size=3)))
    target = tuple(draw(st.lists(chunks(), max_size=3)))
    pause = draw(st.sampled_from([0.0, 0.0, SHORT_PAUSE]))
    ending: Ending = draw(
        st.sampled_from(
            [
                *("client close", "target close", "client half-close", "target half-close"),
                *("client reset", "target reset", "client close", "target close", "idle"),
                *("client stalls", "target stalls"),
            ]
        )
    )
    late = draw(st.binary(max_size=16))
    return Talk(client, target, pause, ending, late)


@st.composite
def cases(draw: Draw) -> Case:
    ask = draw(asks())
    return Case(ask, draw(answers(ask)), draw(talks()))


# --------------------------------------------------------------------- descriptors left open


def open_sockets() -> list[tuple[int, int, str]]:
    """This process's TCP sockets (balancer, target and client alike), from /proc: (local
    port, remote port, state as /proc/net/tcp writes it: 01 established, 08 close-wait,
    0A listen...)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    parts = line.split()
                    if int(parts[9]) in inodes:
                        local = int(parts[1].rsplit(":", 1)[1], 16)
                        remote = int(parts[2].rsplit(":", 1)[1], 16)
                        found.append((local, remote, parts[3]))
        except FileNotFoundError:
            continue
    return found
