"""Slow start through a running balancer: turning it on by a reload leaves the targets that are
healthy then at their full share (AWS, "Edit target group attributes", Slow start mode: "When
you enable slow start for a target group, the healthy targets registered with the target group
do not enter slow start mode").

Health checks run on trio's mock clock; request shares are counted, never timed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from balancer.config import BalancerConfig, HealthCheck, TargetGroup
from balancer.health import TargetState
from monitoring.lifecycle import Daemon
from tests.support.balancer_http import Client, balancer, config, front, group, listener
from tests.support.check_targets import until_health
from tests.support.targets import TargetServer, running_targets

CHECK = HealthCheck(interval_seconds=5, timeout_seconds=2, healthy_threshold=2)


@pytest.fixture
def lazy_clock() -> trio.testing.MockClock:
    # Checks come every 5 virtual seconds; loopback I/O finishes well within 0.1 s of real
    # time, and only then does the clock jump.
    return trio.testing.MockClock(autojump_threshold=0.1)


def web(*targets: TargetServer, slow_start: int = 0) -> BalancerConfig:
    checked: TargetGroup = msgspec.structs.replace(
        group("web", *targets), health_check=CHECK, slow_start_seconds=slow_start
    )
    return config([listener()], [checked])


async def healthy(daemon: Daemon[Any], target: TargetServer) -> None:
    health = daemon.app.runtime.live["web"].health

    def reached() -> bool:
        record = health.get(f"127.0.0.1:{target.port}")
        return record is not None and record.state is TargetState.HEALTHY

    await until_health(daemon.app.runtime, reached, within=60)


async def test_slow_start_turned_on_by_a_reload_leaves_healthy_targets_at_full_share(
    lazy_clock: trio.testing.MockClock,
) -> None:
    served: Counter[str] = Counter()
    async with (
        running_targets(TargetServer("a"), TargetServer("b")) as (a, b),
        balancer(web(a)) as daemon,
    ):
        await healthy(daemon, a)
        await trio.sleep(10)  # virtual: b is registered later than a
        await daemon.app.reload(web(a, b))
        await healthy(daemon, b)
        await daemon.app.reload(web(a, b, slow_start=900))
        async with Client.connect(front(daemon)) as client:
            for _ in range(20):
                status, headers, _ = await client.request()
                assert status == 200
                served[headers["x-target"]] += 1
    # Round robin: equal shares. Had b entered slow start, it would get 1 in 100.
    assert served == {"a": 10, "b": 10}
