"""A target on ::1: health-checked over IPv6 and sent real requests through the balancer.

tests/balancer/test_config.py only shows that an IPv6 target loads and gets a bracketed id;
here the checker and the forward path open real IPv6 connections to it.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from balancer.config import HealthCheck, Target, TargetGroup
from balancer.health import TargetState
from balancer.runtime import Runtime
from tests.support.balancer_http import Client, balancer, config, front, listener
from tests.support.check_targets import until_health
from tests.support.targets import Reply, Seen, TargetServer, echo, running_targets

pytestmark = pytest.mark.slow


def loopback_v6_available() -> bool:
    """Whether this machine can bind ::1 (containers without IPv6 cannot)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_v6 = pytest.mark.skipif(not loopback_v6_available(), reason="this machine has no ::1")


class V6Target(TargetServer):
    """The test target, listening on [::1] instead of 127.0.0.1."""

    async def serve(self, *, task_status: trio.TaskStatus[TargetServer]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="::1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._connection, listeners)


async def fail_checks(seen: Seen, server: TargetServer) -> Reply | str:
    """Fail the health check, keep serving traffic: only the checker can notice."""
    if seen.target == "/health":
        return Reply(500)
    return await echo(seen, server)


async def wait_state(runtime: Runtime, target_id: str, state: TargetState) -> None:
    """Until the target's record says ``state``, woken by health events (virtual time)."""

    def reached() -> bool:
        record = runtime.live["web"].health.get(target_id)
        return record is not None and record.state is state

    await until_health(runtime, reached, within=60)


@pytest.fixture
def lazy_clock():
    # Checks come every 5 virtual seconds; real I/O on the loopback finishes well within
    # 0.1 s of real time, and only then does the clock jump.
    return trio.testing.MockClock(autojump_threshold=0.1)


@needs_v6
async def test_an_ipv6_target_is_checked_and_gets_requests(lazy_clock):
    async with running_targets(V6Target("six")) as (six,):
        check = HealthCheck(
            path="/health", interval_seconds=5, timeout_seconds=2, healthy_threshold=2
        )
        web = TargetGroup(
            name="web", targets=(Target(host="::1", port=six.port),), health_check=check
        )
        async with balancer(config([listener()], [web])) as daemon:
            runtime = daemon.app.runtime
            target_id = f"[::1]:{six.port}"
            await wait_state(runtime, target_id, TargetState.HEALTHY)
            # The health check itself reached the target over IPv6.
            assert any(seen.target == "/health" for seen in six.seen)
            async with Client.connect(front(daemon)) as client:
                for path in ("/one", "/two"):
                    status, headers, _ = await client.request(target=path)
                    assert (status, headers["x-target"]) == (200, "six")
            assert [s.target for s in six.seen if s.target != "/health"] == ["/one", "/two"]
            # It is the same target that fails its checks once it stops answering them.
            six.handler = fail_checks
            await wait_state(runtime, target_id, TargetState.UNHEALTHY)
