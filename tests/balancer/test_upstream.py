"""Pooled connections to targets on real sockets."""

from __future__ import annotations

import h11
import pytest
import trio

from balancer import upstream
from balancer.config import Endpoint
from balancer.upstream import ConnectFailed, ConnectTimedOut, Pool, Pools
from tests.support.targets import TargetServer, running_targets


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


async def test_a_connection_the_target_closed_is_not_handed_out_after_a_while():
    async with running_targets(TargetServer("a")) as (target,):
        pool = Pool(endpoint(target.port), connect_timeout=5, idle_timeout=60)
        up = await pool.acquire(trio.current_time())
        assert await exchange(up) == 200
        pool.release(up, trio.current_time())
        up.idle_since -= upstream.FRESH_SECONDS + 1  # idle long enough to be checked
        up.stream.socket.shutdown(2)  # what a target closing it looks like to poll()
        fresh = await pool.acquire(trio.current_time())
        assert fresh is not up
        assert pool.opened == 2
        fresh.close()


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
    async def hang(host: str, port: int) -> trio.SocketStream:
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
