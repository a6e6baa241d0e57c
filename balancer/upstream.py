"""Connections to targets: one h11 client per TCP connection, pooled per target.

A connection goes back to its pool only after a complete, reusable exchange: both sides of
its h11 state machine ``DONE`` (so no byte of a response is left unread and nothing of a
request is half sent), then ``start_next_cycle``. Anything else (an error, a cancellation
mid-exchange, ``Connection: close``, a protocol switch) closes it. Each pool keeps at most
``max_idle`` idle connections, newest on top (a hot connection has the best chance of still
being open), and forgets those idle longer than the idle timeout.

Targets of https target groups are reached over TLS (:mod:`balancer.target_tls`: no
certificate verification, as on ALB), pooled and reused the same way; the handshake is part
of connecting, under the same timeout. Which is which comes with the endpoint: the runtime
hands out :class:`TargetEndpoint` objects that carry their generation's TLS context and their
group's live state (the ``owner``).

Pools follow the targets' lives: a pool whose target is draining or gone (deregistered,
removed by a reload) is retired at the next :meth:`Pools.prune` (the app's housekeeping runs
it every second): its idle connections are closed and it is forgotten; connections still in
use finish their request and are closed when they come back instead of being pooled.

A response head larger than the pool's ``max_head_bytes`` (``limits.response_header_bytes``,
ALB's 32 KiB by default) is a protocol error (:class:`TargetConnection`), which the listener
answers as an invalid target response: 502.

Errors are typed by phase, as httpcore does, so the listener maps them to ALB's status
codes without looking inside: :class:`ConnectFailed` (refused, unreachable, TLS handshake
failed: 502; a failed handshake is the subclass :class:`TlsNegotiationFailed`, which the
metrics count apart), :class:`ConnectTimedOut` (504, a handshake still pending included).
Failures after connecting surface from the listener's own reads and writes.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from typing import Any, Final, Protocol

import h11
import trio

from balancer import target_tls
from balancer.config import Endpoint, ListenerLimits
from balancer.tls_socket import TlsSocket
from monitoring import fastio
from monitoring.logging import EventLog
from monitoring.throttle import Throttle
from proto.http1 import header_list

DEFAULT_MAX_IDLE: Final = 256  # per target; more concurrent requests open more connections
# Socket buffers: large enough that a 64 KiB response passes in one read and one write.
SOCKET_BUFFER_BYTES: Final = 1 << 18
# trio sets TCP_NOTSENT_LOWAT to 16 KiB, which splits every large write into several waits
# for writability; a proxy relaying big bodies is better served by the kernel default.
NOTSENT_LOWAT_UNLIMITED: Final = 2**31 - 1  # the largest value setsockopt takes
# ALB's bound on a target's response head, when the listener passes none.
DEFAULT_MAX_HEAD_BYTES: Final = ListenerLimits().response_header_bytes


class UpstreamError(Exception):
    """A target could not be used; ``target_id`` names it."""

    def __init__(self, target_id: str, message: str) -> None:
        super().__init__(f"{target_id}: {message}")
        self.target_id = target_id


class ConnectFailed(UpstreamError):
    """The target refused or could not be reached (ALB answers 502)."""


class TlsNegotiationFailed(ConnectFailed):
    """The target took the TCP connection but no TLS session came of it: the handshake
    failed or the target reset or closed the connection during it (ALB's
    TargetTLSNegotiationErrorCount; a 502 as any failed connect)."""


class ConnectTimedOut(UpstreamError):
    """No connection within the connect timeout (ALB answers 504)."""


class OutOfResources(UpstreamError):
    """The balancer could not open a socket to the target: it ran out of file descriptors or
    memory. Its own fault, not the target's: never a target connection error or a failed
    health check."""


# What socket() or connect() fail with when this process, not the target, is out of
# something: descriptors (its own limit, the system's), kernel buffers, memory.
LOCAL_EXHAUSTION: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def report_out_of_resources(log: EventLog, throttle: Throttle, detail: str) -> None:
    """Log, at most once a minute, that the balancer could not open a socket: while it
    lasts every new target connection and health check fails the same way."""
    held_back = throttle.admit()
    if held_back is not None:
        log.error(
            "balancer.out_of_resources",
            detail=detail,
            held_back=held_back,
            hint="raise the descriptor limit (LimitNOFILE= in the unit) or lower "
            "limits.connections",
        )


def is_local_exhaustion(exc: BaseException) -> bool:
    """Whether ``exc``, or what caused it (trio's happy eyeballs wraps each attempt's error
    in a group), is this process running out of descriptors or memory."""
    if isinstance(exc, OSError) and exc.errno in LOCAL_EXHAUSTION:
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(is_local_exhaustion(inner) for inner in exc.exceptions)
    cause = exc.__cause__ or exc.__context__
    return cause is not None and is_local_exhaustion(cause)


def tune_socket(sock: trio.socket.SocketType) -> None:
    """Options every proxied TCP connection gets (client and target side)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT_UNLIMITED)
    except (OSError, AttributeError):  # not every kernel has it
        pass


class TargetOwner(Protocol):
    """What a pool asks of its target's group (``runtime.GroupLive`` answers)."""

    @property
    def name(self) -> str: ...

    def keeps_connections(self, target_id: str) -> bool:
        """Whether the target may get new requests: registered and not draining."""
        ...


class TargetEndpoint(Endpoint):
    """An endpoint as the runtime hands it to the data path: where to connect, with what
    TLS context (None: plain TCP) and whose target it is. Compares as the plain endpoint."""

    tls: target_tls.TargetContext | None
    owner: TargetOwner | None
    pool_key: PoolKey  # computed once per generation, not per request

    @classmethod
    def of(
        cls, endpoint: Endpoint, *, tls: target_tls.TargetContext | None, owner: TargetOwner | None
    ) -> TargetEndpoint:
        made = cls(*endpoint)
        made.tls = tls
        made.owner = owner
        made.pool_key = _key(made)
        return made


def _tls_of(endpoint: Endpoint) -> target_tls.TargetContext | None:
    return endpoint.tls if isinstance(endpoint, TargetEndpoint) else None


def _policy_of(tls: target_tls.TargetContext | None) -> str | None:
    return None if tls is None else tls.policy


def _owner_of(endpoint: Endpoint) -> TargetOwner | None:
    return endpoint.owner if isinstance(endpoint, TargetEndpoint) else None


def _head_bytes(head: h11.Response | h11.InformationalResponse) -> int:
    # As sent, give or take optional whitespace: status line, "name: value" lines, blank line.
    size = 17 + len(head.reason)
    for name, value in header_list(head.headers):
        size += len(name) + len(value) + 4
    return size


class TargetConnection(h11.Connection):
    """h11's client side with a bound on the target's response heads.

    h11's ``max_incomplete_event_size`` bounds a head only while it is incomplete; one that
    arrives whole in a single read passes however large. Here a complete head over the
    bound is refused too, and the refusal sticks (the connection is never reused).
    """

    def __init__(self, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES) -> None:
        super().__init__(h11.CLIENT, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self._refused: str | None = None

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        if self._refused is not None:
            raise h11.RemoteProtocolError(self._refused)
        # A head comes out of what is buffered now: under the bound, no head can be over it,
        # and the headers need not be walked (almost every response).
        buffered = getattr(self, "_receive_buffer", None)  # h11's; without it, always check
        could_be_over = buffered is None or len(buffered) > self.max_head_bytes
        event = super().next_event()
        if could_be_over:
            kind = type(event)
            if kind is h11.Response or kind is h11.InformationalResponse:
                assert isinstance(event, h11.Response | h11.InformationalResponse)
                if _head_bytes(event) > self.max_head_bytes:
                    self._refused = f"response head over {self.max_head_bytes} bytes"
                    raise h11.RemoteProtocolError(self._refused)
        return event


class Upstream:
    """One connection to a target and its h11 client state."""

    __slots__ = ("conn", "endpoint", "idle_since", "reset", "reused", "stream")

    def __init__(
        self,
        endpoint: Endpoint,
        stream: trio.SocketStream,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self.stream = stream  # over a TlsSocket for an https target
        self.conn = TargetConnection(max_head_bytes)
        self.reused = False
        self.idle_since = 0.0
        # The connection ended by a reset, not a clean close: a body delimited by the close
        # was cut (RFC 9112 8), whatever h11 makes of the end of the stream.
        self.reset = False

    def reusable(self) -> bool:
        """Whether the last exchange ended cleanly enough to send another request.

        Bytes the target sent past its response (already read, or waiting in a plain
        socket) answer no request: on a reused connection they would be read as the next
        request's response, so such a connection is not reused.
        """
        conn = self.conn
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        buffered, closed = conn.trailing_data  # a property that copies the buffer: read once
        if buffered or closed:
            return False
        # A TLS socket may be readable with records that are no response bytes (session
        # tickets): only a plain one is asked.
        return isinstance(self.stream.socket, TlsSocket) or not _looks_closed(self.stream)

    def close(self) -> None:
        """Close at once. A socket's close never waits on the peer (nor a TLS one's)."""
        self.stream.socket.close()


def _looks_closed(stream: trio.SocketStream) -> bool:
    # Readable while idle means the target closed (EOF or RST) or sent bytes nobody asked
    # for: either way the connection cannot carry a new exchange.
    return fastio.readable_now(stream.socket.fileno())


class Pool:
    """Idle keep-alive connections to one target of one target group."""

    __slots__ = (
        "_idle",
        "connect_timeout",
        "endpoint",
        "idle_timeout",
        "max_head_bytes",
        "max_idle",
        "opened",
        "owner",
        "retired",
        "tls",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int = DEFAULT_MAX_IDLE,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self.tls = _tls_of(endpoint)
        self.owner = _owner_of(endpoint)
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.max_head_bytes = max_head_bytes
        self.opened = 0  # connections opened since start (tests count reuse with it)
        self.retired = False  # its target left or drains: nothing goes back into it
        self._idle: list[Upstream] = []

    def __len__(self) -> int:
        return len(self._idle)

    def kept(self) -> bool:
        """Whether its target may still get requests (a plain endpoint always may)."""
        owner = self.owner
        return owner is None or owner.keeps_connections(self.endpoint.target_id)

    async def acquire(self, now: float) -> Upstream:
        """An idle connection that still looks usable, or a new one.

        Raises:
            ConnectFailed: the target refused or is unreachable, or the TLS handshake failed.
            ConnectTimedOut: the connect timeout passed.
            OutOfResources: no socket could be opened (descriptors or memory exhausted).
        """
        while self._idle:
            upstream = self._idle.pop()
            # Asked every time, however short the pause: bytes the target sent after its
            # response would otherwise reach the next client as its answer (RFC 9112 6.3),
            # and a close would fail a request that cannot be retried.
            if now - upstream.idle_since < self.idle_timeout and not _looks_closed(upstream.stream):
                upstream.reused = True
                if upstream.conn.max_head_bytes != self.max_head_bytes:
                    # Another listener's limit: h11 fixes its bound at construction, and
                    # a pooled connection is between exchanges, with nothing buffered.
                    upstream.conn = TargetConnection(self.max_head_bytes)
                return upstream
            upstream.close()
        return await self.connect()

    async def connect(self) -> Upstream:
        """A new connection to the target (TLS handshake included, for an https one)."""
        endpoint = self.endpoint
        max_head_bytes = self.max_head_bytes
        with trio.move_on_after(self.connect_timeout) as scope:
            try:
                stream = await _open(endpoint.host, endpoint.port, self.tls)
            except ssl.SSLError as exc:
                detail = f"TLS handshake failed: {exc.reason or exc}"
                raise TlsNegotiationFailed(endpoint.target_id, detail) from None
            except OSError as exc:
                if is_local_exhaustion(exc):
                    raise OutOfResources(endpoint.target_id, str(exc)) from None
                raise ConnectFailed(endpoint.target_id, exc.strerror or str(exc)) from None
            except trio.BrokenResourceError as exc:  # reset during the TLS handshake
                detail = f"TLS handshake failed: {exc.__cause__ or exc}"
                raise TlsNegotiationFailed(endpoint.target_id, detail) from None
        if scope.cancelled_caught:
            raise ConnectTimedOut(endpoint.target_id, f"no connection in {self.connect_timeout}s")
        self.opened += 1
        return Upstream(endpoint, stream, max_head_bytes)

    def release(self, upstream: Upstream, now: float) -> None:
        """Take a connection back after an exchange; closes it unless it is reusable and
        its target still takes requests."""
        if (
            not upstream.reusable()
            or len(self._idle) >= self.max_idle
            or self.retired
            or not self.kept()
        ):
            upstream.close()
            return
        upstream.conn.start_next_cycle()
        upstream.idle_since = now
        self._idle.append(upstream)

    def prune(self, now: float) -> int:
        """Close connections idle past the idle timeout; returns how many."""
        keep = [u for u in self._idle if now - u.idle_since < self.idle_timeout]
        closed = len(self._idle) - len(keep)
        for upstream in self._idle:
            if now - upstream.idle_since >= self.idle_timeout:
                upstream.close()
        self._idle = keep
        return closed

    def retire(self) -> int:
        """Close the idle connections and take none back from now on; returns how many."""
        self.retired = True
        closed = len(self._idle)
        self.close()
        return closed

    def close(self) -> None:
        for upstream in self._idle:
            upstream.close()
        self._idle.clear()


async def _open(host: str, port: int, tls: target_tls.TargetContext | None) -> trio.SocketStream:
    # A direct connect for IP literals: trio.open_tcp_stream's happy-eyeballs nursery costs
    # more than the connect itself on loopback. Names go through getaddrinfo (in a thread),
    # and each address is tried in turn, as the health checks' open_tcp_stream does: a name
    # whose first address refuses (localhost as ::1 before a target bound to 127.0.0.1) must
    # not fail every request of a target its checks find healthy.
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for info in infos[:-1]:
        try:
            sock = await _connected(info)
            break
        except OSError:
            continue
    else:
        sock = await _connected(infos[-1])
    try:
        if tls is None:
            stream = trio.SocketStream(sock)
        else:
            stream = await target_tls.wrap(sock, tls, host)
    except BaseException:
        sock.close()
        raise
    tune_socket(stream.socket)  # after SocketStream, which sets trio's 16 KiB
    return stream


async def _connected(info: tuple[Any, ...]) -> trio.socket.SocketType:
    family, type_, proto, _, address = info
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


PoolKey = tuple[str, str]  # (target group, target id); "" for a plain endpoint's group


def _key(endpoint: Endpoint) -> PoolKey:
    owner = _owner_of(endpoint)
    return ("" if owner is None else owner.name, endpoint.target_id)


class Pools:
    """Every target's pool, keyed by target group and target id; survives config
    generations (a target in two groups has a pool in each: each group drains it alone)."""

    def __init__(self, *, max_idle: int = DEFAULT_MAX_IDLE) -> None:
        self.max_idle = max_idle
        self._pools: dict[PoolKey, Pool] = {}

    def __iter__(self) -> Iterator[Pool]:
        return iter(list(self._pools.values()))

    def get(
        self,
        endpoint: Endpoint,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    ) -> Pool:
        """The pool of one target, created on first use; timeouts, the response head bound
        and the TLS context follow the latest config (a group that switched between http
        and https gets a new pool: the old connections speak the other protocol; so does one
        whose back-end TLS policy changed: the old ones may use what the new one refuses)."""
        key = endpoint.pool_key if isinstance(endpoint, TargetEndpoint) else _key(endpoint)
        pool = self._pools.get(key)
        if (  # the common case, every request: nothing changed since the last one
            pool is not None
            and pool.endpoint is endpoint
            and pool.connect_timeout == connect_timeout
            and pool.idle_timeout == idle_timeout
            and pool.max_head_bytes == max_head_bytes
        ):
            return pool
        tls = _tls_of(endpoint)
        if pool is not None and _policy_of(pool.tls) != _policy_of(tls):
            pool.retire()
            pool = None
        if pool is None:
            pool = Pool(
                endpoint,
                connect_timeout=connect_timeout,
                idle_timeout=idle_timeout,
                max_idle=self.max_idle,
                max_head_bytes=max_head_bytes,
            )
            self._pools[key] = pool
        else:
            # Same target id, same address; weight and zone may have changed.
            pool.endpoint = endpoint
            pool.tls = tls
            pool.owner = _owner_of(endpoint)
            pool.connect_timeout = connect_timeout
            pool.idle_timeout = idle_timeout
            pool.max_head_bytes = max_head_bytes
        return pool

    def prune(self, now: float) -> int:
        """Close idle connections past their idle timeout in every pool, and retire the
        pools whose targets drain or left; returns how many connections were closed."""
        closed = 0
        for key, pool in list(self._pools.items()):
            if pool.kept():
                closed += pool.prune(now)
            else:
                closed += pool.retire()
                del self._pools[key]
        return closed

    def discard(self, target_id: str) -> None:
        """Retire every pool of a target, whatever its group."""
        for key, pool in list(self._pools.items()):
            if key[1] == target_id:
                pool.retire()
                del self._pools[key]

    def close(self) -> None:
        for pool in self._pools.values():
            pool.retire()
        self._pools.clear()

    def idle_connections(self) -> int:
        return sum(len(pool) for pool in self._pools.values())

    def idle_by_group(self) -> dict[str, int]:
        """Idle pooled connections per target group name ("" for plain endpoints)."""
        idle: dict[str, int] = {}
        for (group, _), pool in self._pools.items():
            idle[group] = idle.get(group, 0) + len(pool)
        return idle
