"""Connections to targets: one h11 client per TCP connection, pooled per target.

A connection goes back to its pool only after a complete, reusable exchange: both sides of
its h11 state machine ``DONE`` (so no byte of a response is left unread and nothing of a
request is half sent), then ``start_next_cycle``. Anything else (an error, a cancellation
mid-exchange, ``Connection: close``, a protocol switch) closes it. Each pool keeps at most
``max_idle`` idle connections, newest on top (a hot connection has the best chance of still
being open), and forgets those idle longer than the idle timeout.

Errors are typed by phase, as httpcore does, so the listener maps them to ALB's status
codes without looking inside: :class:`ConnectFailed` (refused, unreachable: 502),
:class:`ConnectTimedOut` (504). Failures after connecting surface from the listener's own
reads and writes.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Final

import h11
import trio

from balancer.config import Endpoint

# A connection idle for less than this is reused without asking the kernel whether the
# target closed it: a target that closes keep-alive connections after milliseconds is
# broken, and the listener retries a reused connection that fails before any response byte.
FRESH_SECONDS: Final = 1.0
DEFAULT_MAX_IDLE: Final = 256  # per target; more concurrent requests open more connections
# Socket buffers: large enough that a 64 KiB response passes in one read and one write.
SOCKET_BUFFER_BYTES: Final = 1 << 18
# trio sets TCP_NOTSENT_LOWAT to 16 KiB, which splits every large write into several waits
# for writability; a proxy relaying big bodies is better served by the kernel default.
NOTSENT_LOWAT_UNLIMITED: Final = 2**31 - 1  # the largest value setsockopt takes


class UpstreamError(Exception):
    """A target could not be used; ``target_id`` names it."""

    def __init__(self, target_id: str, message: str) -> None:
        super().__init__(f"{target_id}: {message}")
        self.target_id = target_id


class ConnectFailed(UpstreamError):
    """The target refused or could not be reached (ALB answers 502)."""


class ConnectTimedOut(UpstreamError):
    """No connection within the connect timeout (ALB answers 504)."""


def tune_socket(sock: trio.socket.SocketType) -> None:
    """Options every proxied TCP connection gets (client and target side)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT_UNLIMITED)
    except (OSError, AttributeError):  # not every kernel has it
        pass


class Upstream:
    """One connection to a target and its h11 client state."""

    __slots__ = ("conn", "endpoint", "idle_since", "reused", "stream")

    def __init__(self, endpoint: Endpoint, stream: trio.SocketStream) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.reused = False
        self.idle_since = 0.0

    def reusable(self) -> bool:
        """Whether the last exchange ended cleanly enough to send another request."""
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def close(self) -> None:
        """Close at once. A plain TCP socket's close never waits on the peer."""
        self.stream.socket.close()


def _looks_closed(stream: trio.SocketStream) -> bool:
    # Readable while idle means the target closed (EOF or RST) or sent bytes nobody asked
    # for: either way the connection cannot carry a new exchange.
    readable, _, _ = select.select([stream.socket.fileno()], [], [], 0)
    return bool(readable)


class Pool:
    """Idle keep-alive connections to one target."""

    __slots__ = ("_idle", "connect_timeout", "endpoint", "idle_timeout", "max_idle", "opened")

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int = DEFAULT_MAX_IDLE,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.opened = 0  # connections opened since start (tests count reuse with it)
        self._idle: list[Upstream] = []

    def __len__(self) -> int:
        return len(self._idle)

    async def acquire(self, now: float) -> Upstream:
        """An idle connection that still looks usable, or a new one.

        Raises:
            ConnectFailed: the target refused or is unreachable.
            ConnectTimedOut: the connect timeout passed.
        """
        while self._idle:
            upstream = self._idle.pop()
            idle_for = now - upstream.idle_since
            if idle_for < FRESH_SECONDS or (
                idle_for < self.idle_timeout and not _looks_closed(upstream.stream)
            ):
                upstream.reused = True
                return upstream
            upstream.close()
        return await self.connect()

    async def connect(self) -> Upstream:
        """A new connection to the target."""
        endpoint = self.endpoint
        with trio.move_on_after(self.connect_timeout) as scope:
            try:
                stream = await _open(endpoint.host, endpoint.port)
            except OSError as exc:
                raise ConnectFailed(endpoint.target_id, exc.strerror or str(exc)) from None
        if scope.cancelled_caught:
            raise ConnectTimedOut(endpoint.target_id, f"no connection in {self.connect_timeout}s")
        self.opened += 1
        return Upstream(endpoint, stream)

    def release(self, upstream: Upstream, now: float) -> None:
        """Take a connection back after an exchange; closes it unless it is reusable."""
        if not upstream.reusable() or len(self._idle) >= self.max_idle:
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

    def close(self) -> None:
        for upstream in self._idle:
            upstream.close()
        self._idle.clear()


async def _open(host: str, port: int) -> trio.SocketStream:
    # A direct connect for IP literals: trio.open_tcp_stream's happy-eyeballs nursery costs
    # more than the connect itself on loopback. Names go through getaddrinfo (in a thread).
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, type_, proto, _, address = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    tune_socket(sock)
    return trio.SocketStream(sock)


class Pools:
    """Every target's pool, keyed by target id; survives config generations."""

    def __init__(self, *, max_idle: int = DEFAULT_MAX_IDLE) -> None:
        self.max_idle = max_idle
        self._pools: dict[str, Pool] = {}

    def __iter__(self) -> Iterator[Pool]:
        return iter(list(self._pools.values()))

    def get(self, endpoint: Endpoint, *, connect_timeout: float, idle_timeout: float) -> Pool:
        """The pool of one target, created on first use; timeouts follow the latest config."""
        pool = self._pools.get(endpoint.target_id)
        if pool is None:
            pool = Pool(
                endpoint,
                connect_timeout=connect_timeout,
                idle_timeout=idle_timeout,
                max_idle=self.max_idle,
            )
            self._pools[endpoint.target_id] = pool
        else:
            # Same target id, same address; weight and zone may have changed.
            pool.endpoint = endpoint
            pool.connect_timeout = connect_timeout
            pool.idle_timeout = idle_timeout
        return pool

    def prune(self, now: float) -> int:
        """Close idle connections past their idle timeout in every pool."""
        return sum(pool.prune(now) for pool in self._pools.values())

    def discard(self, target_id: str) -> None:
        """Close a target's idle connections (it left, or is draining)."""
        pool = self._pools.pop(target_id, None)
        if pool is not None:
            pool.close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def idle_connections(self) -> int:
        return sum(len(pool) for pool in self._pools.values())
