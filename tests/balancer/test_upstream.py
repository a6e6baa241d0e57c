"""Pooled connections to targets on real sockets."""

from __future__ import annotations

import errno
import os

import h11
import pytest
import trio
import trustme
from hypothesis import given
from hypothesis import strategies as st

from balancer import upstream
from balancer.config import (
    BalancerConfig,
    Endpoint,
    Forward,
    HealthCheck,
    HttpListener,
    Target,
    TargetGroup,
)
from balancer.runtime import Runtime
from balancer.target_tls import BACKEND_FIPS_POLICY, BACKEND_TLS13_POLICY, client_context
from balancer.upstream import (
    ConnectFailed,
    ConnectTimedOut,
    Pool,
    Pools,
    TargetConnection,
    TargetEndpoint,
)
from tests.support.descriptors import FD_SETSIZE, new_descriptors_past_fd_setsize
from tests.support.targets import TargetServer, running_targets
from tests.support.tls_targets import TlsTargetServer, server_context


def endpoint(port: int) -> Endpoint:
    return Endpoint(f"127.0.0.1:{port}", "127.0.0.1", port, 1, "")


async def exchange(up: upstream.Upstream) -> int:
    """One GET on a pooled connection; the response status."""
    data = up.conn.send(h11.Request(method="GET", target="/", headers=[("host", "t")]))
    data += up.conn.send(h11.EndOfMessage())
    await up.stream.send_all(data)
    status = 0
    while True:
        event = up.conn.next_event()
        if event is h11.NEED_DATA:
            up.conn.receive_data(await up.stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            return status


async def test_a_connection_is_reused_after_a_complete_exchange():
    async with running_targets(TargetServer("a")) as (target,):
        pool = Pool(endpoint(target.port), connect_timeout=5, idle_timeout=60)
        first = await pool.acquire(trio.current_time())
        assert not first.reused
        assert await exchange(first) == 200
        pool.release(first, trio.current_time())
        assert len(pool) == 1
        second = await pool.acquire(trio.current_time())
        assert second is first
        assert second.reused
        assert await exchange(second) == 200
        pool.release(second, trio.current_time())
        assert (target.accepts, pool.opened) == (1, 1)
        pool.close()


async def test_a_half_used_connection_is_never_pooled():
    async with running_targets(TargetServer("a")) as (target,):
        pool = Pool(endpoint(target.port), connect_timeout=5, idle_timeout=60)
        up = await pool.acquire(trio.current_time())
        up.conn.send(h11.Request(method="GET", target="/", headers=[("host", "t")]))
        pool.release(up, trio.current_time())  # the request never ended
        assert len(pool) == 0
        assert up.stream.socket.fileno() == -1


async def test_a_connection_the_target_closed_is_not_handed_out():
    async with running_targets(TargetServer("a")) as (target,):
        pool = Pool(endpoint(target.port), connect_timeout=5, idle_timeout=60)
        up = await pool.acquire(trio.current_time())
        assert await exchange(up) == 200
        pool.release(up, trio.current_time())
        up.stream.socket.shutdown(2)  # what a target closing it looks like to poll()
        fresh = await pool.acquire(trio.current_time())
        assert fresh is not up
        assert pool.opened == 2
        fresh.close()


async def test_a_connection_numbered_past_fd_setsize_is_checked_and_reused():
    # A balancer holding a thousand client connections gives every new target connection such
    # a number; the check before reuse once used select(), which refuses them (ValueError).
    async with running_targets(TargetServer("a")) as (target,):
        pool = Pool(endpoint(target.port), connect_timeout=5, idle_timeout=60)
        with new_descriptors_past_fd_setsize():
            up = await pool.acquire(trio.current_time())
        assert up.stream.socket.fileno() >= FD_SETSIZE
        assert await exchange(up) == 200
        pool.release(up, trio.current_time())
        again = await pool.acquire(trio.current_time())
        assert again is up
        assert await exchange(again) == 200
        pool.release(again, trio.current_time())
        again.stream.socket.shutdown(2)
        fresh = await pool.acquire(trio.current_time())
        assert fresh is not again
        fresh.close()
        pool.close()


async def test_idle_connections_are_bounded_and_pruned():
    async with running_targets(TargetServer("a")) as (target,):
        pool = Pool(endpoint(target.port), connect_timeout=5, idle_timeout=10, max_idle=2)
        ups = [await pool.acquire(trio.current_time()) for _ in range(3)]
        for up in ups:
            assert await exchange(up) == 200
            pool.release(up, trio.current_time())
        assert len(pool) == 2
        assert pool.prune(trio.current_time() + 5) == 0
        assert pool.prune(trio.current_time() + 11) == 2
        assert len(pool) == 0


async def test_refused_and_timed_out_connects_are_typed():
    async with running_targets(TargetServer("a")) as (target,):
        port = target.port
    pool = Pool(endpoint(port), connect_timeout=5, idle_timeout=60)
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}"):
        await pool.acquire(trio.current_time())


async def test_a_connect_that_hangs_times_out(monkeypatch, autojump_clock):
    async def hang(host: str, port: int, tls: object) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(upstream, "_open", hang)
    pool = Pool(endpoint(9), connect_timeout=2, idle_timeout=60)
    start = trio.current_time()
    with pytest.raises(ConnectTimedOut):
        await pool.acquire(start)
    assert trio.current_time() - start == pytest.approx(2)


async def test_pools_are_per_target_and_follow_new_timeouts():
    pools = Pools(max_idle=4)
    a = pools.get(endpoint(1000), connect_timeout=1, idle_timeout=2)
    assert pools.get(endpoint(1000), connect_timeout=3, idle_timeout=4) is a
    assert (a.connect_timeout, a.idle_timeout, a.max_idle) == (3, 4, 4)
    assert pools.get(endpoint(1001), connect_timeout=1, idle_timeout=2) is not a
    assert len(list(pools)) == 2
    pools.discard("127.0.0.1:1000")
    assert len(list(pools)) == 1
    assert pools.idle_connections() == 0
    assert pools.prune(0.0) == 0
    pools.close()


# --- https targets: TLS connections, pooled like plain ones ---------------------------------


def tls_endpoint(port: int) -> TargetEndpoint:
    return TargetEndpoint.of(endpoint(port), tls=client_context(BACKEND_TLS13_POLICY), owner=None)


async def test_a_tls_connection_is_pooled_and_reused():
    target = TlsTargetServer("s", context=server_context(trustme.CA()))
    async with running_targets(target):
        pool = Pool(tls_endpoint(target.port), connect_timeout=5, idle_timeout=60)
        for _ in range(3):
            up = await pool.acquire(trio.current_time())
            assert await exchange(up) == 200
            pool.release(up, trio.current_time())
        assert (target.accepts, target.handshakes, pool.opened) == (1, 1, 1)
        assert target.alpn == ["http/1.1"]
        assert target.server_names == [None]  # an IP literal: no SNI
        assert target.seen[0].header("host") == "t"
        pool.close()


async def test_a_target_that_is_not_tls_fails_the_connect():
    async with running_targets(TargetServer("plain")) as (target,):
        pool = Pool(tls_endpoint(target.port), connect_timeout=5, idle_timeout=60)
        with pytest.raises(ConnectFailed, match="TLS handshake failed"):
            await pool.acquire(trio.current_time())
        assert pool.opened == 0


async def test_the_handshake_is_under_the_connect_timeout():
    # A listening socket nobody accepts on: TCP connects (the kernel's backlog), TLS never.
    silent = trio.socket.socket()
    await silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    pool = Pool(tls_endpoint(silent.getsockname()[1]), connect_timeout=0.5, idle_timeout=60)
    start = trio.current_time()
    with pytest.raises(ConnectTimedOut):
        await pool.acquire(start)
    assert 0.5 <= trio.current_time() - start < 4
    silent.close()


# --- the response head bound ----------------------------------------------------------------


def head_of(size: int) -> bytes:
    """A 200 head of exactly ``size`` bytes (one padding header)."""
    fixed = len(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-pad: \r\n\r\n")
    return b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-pad: %s\r\n\r\n" % (b"p" * (size - fixed))


def started(limit: int) -> TargetConnection:
    conn = TargetConnection(limit)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "t")]))
    conn.send(h11.EndOfMessage())
    return conn


@given(size=st.integers(min_value=100, max_value=3000), pieces=st.integers(1, 4))
def test_a_head_passes_exactly_when_it_fits_the_bound(size, pieces):
    limit = 1500
    conn = started(limit)
    head = head_of(size)
    step = -(-len(head) // pieces)
    event: object = h11.NEED_DATA
    try:
        for start in range(0, len(head), step):
            conn.receive_data(head[start : start + step])
            event = conn.next_event()
    except h11.RemoteProtocolError:
        assert size > limit
        with pytest.raises(h11.RemoteProtocolError):  # sticks: never reused
            conn.next_event()
        return
    assert size <= limit
    assert isinstance(event, h11.Response)


def test_h11_alone_lets_a_whole_oversized_head_through():
    # Why TargetConnection checks complete heads: h11 bounds only incomplete ones.
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1000)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "t")]))
    conn.receive_data(head_of(5000))
    assert isinstance(conn.next_event(), h11.Response)


async def test_pools_hand_out_the_bound_they_were_given():
    async with running_targets(TargetServer("a")) as (target,):
        pools = Pools()
        pool = pools.get(endpoint(target.port), connect_timeout=5, idle_timeout=60)
        up = await pool.acquire(trio.current_time())
        assert up.conn.max_head_bytes == upstream.DEFAULT_MAX_HEAD_BYTES == 32768
        assert await exchange(up) == 200
        pool.release(up, trio.current_time())
        # Another listener with its own limit reuses the connection under that limit.
        pool = pools.get(
            endpoint(target.port), connect_timeout=5, idle_timeout=60, max_head_bytes=2048
        )
        again = await pool.acquire(trio.current_time())
        assert again is up
        assert again.conn.max_head_bytes == 2048
        assert await exchange(again) == 200
        again.close()
        pools.close()


# --- pools follow their targets' lives ------------------------------------------------------


def runtime_for(*ports: int, protocol: str = "http") -> Runtime:
    group = TargetGroup(
        name="web",
        protocol=protocol,  # type: ignore[arg-type]
        targets=tuple(Target(host="127.0.0.1", port=port) for port in ports),
        health_check=HealthCheck(enabled=False),
    )
    listener = HttpListener(name="front", port=8080, default_action=Forward(target_group="web"))
    config = BalancerConfig(listeners=(listener,), target_groups=(group,))
    return Runtime(config, now=trio.current_time())


async def wait_closed(target: TargetServer) -> None:
    with trio.fail_after(5):
        while target.open_connections:  # noqa: ASYNC110 (a counter: no event to wait on)
            await trio.sleep(0.01)


async def test_a_draining_targets_pool_is_retired_and_in_use_connections_close():
    async with running_targets(TargetServer("a"), TargetServer("b")) as (a, b):
        runtime = runtime_for(a.port, b.port)
        pools = Pools()
        group = runtime.current.groups["web"]
        first, second = (pools.get(e, connect_timeout=5, idle_timeout=60) for e in group.endpoints)
        idle = await first.acquire(trio.current_time())
        busy = await first.acquire(trio.current_time())
        other = await second.acquire(trio.current_time())
        for up in (idle, busy, other):
            assert await exchange(up) == 200
        first.release(idle, trio.current_time())
        second.release(other, trio.current_time())
        assert pools.prune(trio.current_time()) == 0
        # a is deregistered: it drains (300 s by default), b stays.
        runtime.replace_targets("web", [group.endpoints[1]], trio.current_time())
        assert not runtime.live["web"].keeps_connections(group.endpoints[0].target_id)
        assert pools.prune(trio.current_time()) == 1
        assert [p.endpoint.port for p in pools] == [b.port]
        first.release(busy, trio.current_time())  # its request ended: closed, not pooled
        assert len(first) == 0
        await wait_closed(a)
        assert b.open_connections == 1
        # Registered again: a new pool, new connections.
        runtime.replace_targets("web", group.endpoints, trio.current_time())
        fresh = pools.get(group.endpoints[0], connect_timeout=5, idle_timeout=60)
        assert fresh is not first
        pools.close()


async def test_a_group_switching_to_https_gets_a_new_pool():
    pools = Pools()
    plain = runtime_for(1000).current.groups["web"].endpoints[0]
    tls = runtime_for(1000, protocol="https").current.groups["web"].endpoints[0]
    assert tls == plain  # the same target...
    old = pools.get(plain, connect_timeout=1, idle_timeout=2)
    new = pools.get(tls, connect_timeout=1, idle_timeout=2)
    assert new is not old  # ...but the pooled connections speak another protocol
    assert old.retired
    assert new.tls is not None
    assert len(list(pools)) == 1


async def test_a_new_backend_tls_policy_gets_a_new_pool_and_the_same_keeps_it():
    """Idle connections made under one back-end policy may use what another refuses
    (ChaCha20 under the FIPS one, TLS 1.3 under 2016-08): they are not reused."""
    pools = Pools()
    first = pools.get(tls_endpoint(1000), connect_timeout=1, idle_timeout=2)
    again = TargetEndpoint.of(endpoint(1000), tls=client_context(BACKEND_TLS13_POLICY), owner=None)
    assert pools.get(again, connect_timeout=1, idle_timeout=2) is first  # a reload, same policy
    fips = TargetEndpoint.of(endpoint(1000), tls=client_context(BACKEND_FIPS_POLICY), owner=None)
    new = pools.get(fips, connect_timeout=1, idle_timeout=2)
    assert new is not first
    assert first.retired
    assert new.tls is fips.tls


@pytest.mark.parametrize("code", sorted(upstream.LOCAL_EXHAUSTION))
async def test_a_socket_the_balancer_cannot_open_is_its_own_fault(monkeypatch, code):
    async def exhausted(host: str, port: int, tls: object) -> trio.SocketStream:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(upstream, "_open", exhausted)
    pool = Pool(endpoint(9), connect_timeout=2, idle_timeout=60)
    with pytest.raises(upstream.OutOfResources, match=r"127\.0\.0\.1:9"):
        await pool.acquire(trio.current_time())


def test_exhaustion_is_found_inside_trios_connect_errors():
    # trio.open_tcp_stream raises one OSError for every attempt, caused by a group of them.
    attempts = ExceptionGroup("attempts", [OSError(errno.EMFILE, "Too many open files")])
    wrapped = OSError("all attempts to connect to 10.0.0.1:80 failed")
    wrapped.__cause__ = attempts
    assert upstream.is_local_exhaustion(wrapped)
    assert not upstream.is_local_exhaustion(OSError(errno.ECONNREFUSED, "refused"))
    assert not upstream.is_local_exhaustion(OSError("no errno"))


class TwoAddresses(trio.abc.HostnameResolver):
    """Resolves the name to a refusing address first, then to the target's own."""

    def __init__(self, refused: int, listening: int) -> None:
        self.ports = (refused, listening)

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 - trio's signature
        return [
            (trio.socket.AF_INET, trio.socket.SOCK_STREAM, 6, "", ("127.0.0.1", each))
            for each in self.ports
        ]

    async def getnameinfo(self, sockaddr, flags):  # pragma: no cover - not called
        raise NotImplementedError


async def test_a_name_whose_first_address_refuses_connects_to_the_next():
    """localhost as ::1 first, before a target bound to 127.0.0.1: the health checks'
    open_tcp_stream tries every address, and so must the requests."""
    async with running_targets(TargetServer("gone")) as (gone,):
        refused = gone.port  # closed once the block ends: connects to it are refused
    async with running_targets(TargetServer("b")) as (target,):
        trio.socket.set_custom_hostname_resolver(TwoAddresses(refused, target.port))
        try:
            named = Endpoint(f"target.test:{target.port}", "target.test", target.port, 1, "")
            pool = Pool(named, connect_timeout=5, idle_timeout=60)
            up = await pool.acquire(trio.current_time())
            assert await exchange(up) == 200
            pool.release(up, trio.current_time())
            pool.close()
        finally:
            trio.socket.set_custom_hostname_resolver(None)
