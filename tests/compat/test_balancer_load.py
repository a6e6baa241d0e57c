"""Failures and reloads under concurrent load: many clients in flight at once.

tests/balancer/test_checker.py kills a target between sequential requests and
tests/balancer/test_app_reload.py reloads between the requests of four clients; here sixteen
clients have requests in flight at the same moment as the kill or the reload.

The killed-target test runs on trio's MockClock (autojump): every client fires at the same
virtual ticks, so each tick puts sixteen requests in flight together, while health-check
intervals of several seconds pass in a fraction of real time. Bounds asserted there
(detection within interval x threshold, no request hangs) are virtual time, never the speed
of this machine. The reload test runs on the real clock with a target that is slow on
purpose, so that every reload lands while requests wait on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from balancer.cli import SPEC
from balancer.config import (
    BalancerConfig,
    Forward,
    HealthCheck,
    HttpListener,
    Target,
    TargetGroup,
)
from balancer.health import TargetState, TargetStateChanged
from monitoring.configfile import load
from monitoring.lifecycle import Daemon
from monitoring.settings import AdminSettings
from tests.support.balancer_http import Client
from tests.support.check_targets import StubTarget
from tests.support.daemons import address, running
from tests.support.http import request
from tests.support.targets import Reply, Seen, TargetServer, echo, running_targets

pytestmark = pytest.mark.slow

CLIENTS = 16
INTERVAL = 5  # AWS's smallest health-check interval
THRESHOLD = 2  # AWS's smallest unhealthy (and healthy) threshold
TICK = 1.0  # virtual seconds between the rounds every client fires together
ROUNDS = 25  # bounded load: CLIENTS x ROUNDS requests in all
KILL_AT = 3  # the round during which the target dies
REQUEST_LIMIT = 10.0  # a request not answered within this (virtual) time hangs: a failure


@pytest.fixture
def lazy_clock():
    # Loopback I/O finishes well within 0.1 s of real time; only then does the clock jump.
    return trio.testing.MockClock(autojump_threshold=0.1)


@dataclass
class Answer:
    round: int
    sent_at: float
    status: int
    body: bytes


class HealthLog:
    """When each target entered each state (virtual time), from the runtime's events."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, TargetState]] = []
        self.changed = trio.Event()

    def __call__(self, events: Sequence[TargetStateChanged]) -> None:
        now = trio.current_time()
        self.events += [(now, e.target_id, e.state) for e in events]
        self.changed.set()
        self.changed = trio.Event()

    def first(self, target_id: str, state: TargetState, *, after: float) -> float | None:
        return next(
            (t for t, tid, s in self.events if tid == target_id and s is state and t >= after),
            None,
        )

    async def wait(
        self, target_id: str, state: TargetState, *, after: float, limit: float
    ) -> float:
        with trio.fail_after(limit):
            while (at := self.first(target_id, state, after=after)) is None:
                await self.changed.wait()
        return at


async def test_a_target_killed_under_concurrent_load(nursery, lazy_clock):
    a, b = StubTarget(), StubTarget()
    a.body, b.body = b"a", b"b"
    await a.start(nursery)
    await b.start(nursery)
    check = HealthCheck(
        path="/health",
        interval_seconds=INTERVAL,
        timeout_seconds=2,
        healthy_threshold=THRESHOLD,
        unhealthy_threshold=THRESHOLD,
    )
    web = TargetGroup(
        name="web",
        targets=(Target(host="127.0.0.1", port=a.port), Target(host="127.0.0.1", port=b.port)),
        health_check=check,
    )
    front = HttpListener(
        name="front", host="127.0.0.1", port=0, default_action=Forward(target_group="web")
    )
    cfg = BalancerConfig(admin=AdminSettings(port=0), listeners=(front,), target_groups=(web,))
    a_id, b_id = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
    health = HealthLog()
    async with running(SPEC, cfg) as daemon:
        daemon.app.runtime.observers.append(health)
        addr = address(daemon, "front")
        for target_id in (a_id, b_id):
            await health.wait(target_id, TargetState.HEALTHY, after=0, limit=INTERVAL)
        answers: list[Answer] = []
        # Rounds fall a quarter tick off the health checks' schedule, so no request leaves
        # at the very instant a check decides.
        start = trio.current_time() + TICK + TICK / 4
        kill_round = start + KILL_AT * TICK
        killed_at = 0.0
        revived_at = 0.0
        load_seen_by_a_while_unhealthy: list[bytes] = []

        async def client() -> None:
            for round_ in range(ROUNDS):
                await trio.sleep_until(start + round_ * TICK)
                sent_at = trio.current_time()
                status, _, body = await request(
                    addr, target=f"/load/{round_}", limit_seconds=REQUEST_LIMIT
                )
                answers.append(Answer(round_, sent_at, status, body))

        async def killer() -> None:
            nonlocal killed_at, revived_at
            # The target stops answering just before the round begins, then dies with that
            # round's requests waiting on it: they are cut mid-request, not refused.
            await trio.sleep_until(kill_round - TICK / 4)
            a.hang = True
            await trio.sleep_until(kill_round + TICK / 2)
            a.stop()
            killed_at = trio.current_time()
            await health.wait(
                a_id, TargetState.UNHEALTHY, after=killed_at, limit=INTERVAL * THRESHOLD + 1
            )
            # Back on the same port, answering again: it gets health checks, and no load
            # until it has passed THRESHOLD of them.
            a.hang = False
            a.requests.clear()
            await a.start(nursery)
            revived_at = trio.current_time()
            healthy_again = await health.wait(
                a_id, TargetState.HEALTHY, after=revived_at, limit=INTERVAL * (THRESHOLD + 1)
            )
            assert healthy_again - revived_at >= INTERVAL * (THRESHOLD - 1)
            load_seen_by_a_while_unhealthy.extend(
                r.target for r in a.requests if not r.target.startswith(b"/health")
            )

        with trio.fail_after(ROUNDS * TICK + INTERVAL * THRESHOLD * 3):
            async with trio.open_nursery() as load:
                load.start_soon(killer)
                for _ in range(CLIENTS):
                    load.start_soon(client)

        unhealthy_at = health.first(a_id, TargetState.UNHEALTHY, after=killed_at)
        assert unhealthy_at is not None
        assert unhealthy_at - killed_at <= INTERVAL * THRESHOLD
        assert health.first(b_id, TargetState.UNHEALTHY, after=0) is None
        assert len(answers) == CLIENTS * ROUNDS
        before = [x for x in answers if x.sent_at < kill_round]
        undetected = [x for x in answers if kill_round <= x.sent_at <= unhealthy_at]
        detected = [x for x in answers if unhealthy_at < x.sent_at < revived_at + INTERVAL]
        assert {(x.status, x.body) for x in before} == {(200, b"a"), (200, b"b")}
        # Requests sent to the dying target got 502, and only those.
        assert {x.status for x in undetected} <= {200, 502}
        assert 502 in {x.status for x in undetected}  # some really were cut mid-request
        assert {(x.status, x.body) for x in undetected if x.status == 200} == {(200, b"b")}
        assert detected
        assert {(x.status, x.body) for x in detected} == {(200, b"b")}
        # Back on its port but not yet healthy again, the target got health checks only.
        assert load_seen_by_a_while_unhealthy == []
    b.stop()
    a.stop()


# Reload with requests in flight ----------------------------------------------------------

SLOW_SECONDS = 0.3  # how long the target keeps each request: reloads land inside it
REQUESTS_PER_CLIENT = 4


def write_config(path: Path, port: int, targets: Sequence[int], generation: int) -> None:
    listed = ", ".join(f'{{ host = "127.0.0.1", port = {p} }}' for p in targets)
    path.write_text(f"""
[admin]
port = 0
[logging]
level = "warning"

[[listeners]]
name = "web"
protocol = "http"
host = "127.0.0.1"
port = {port}
default_action = {{ type = "forward", target_group = "app" }}

[[listeners.rules]]
priority = 1
conditions = {{ path_pattern = ["/generation"] }}
action = {{ type = "fixed_response", status_code = 200, message_body = "{generation}" }}

[[target_groups]]
name = "app"
targets = [{listed}]
health_check = {{ enabled = false }}
""")


def file_balancer(path: Path) -> contextlib.AbstractAsyncContextManager[Daemon[Any]]:
    """A balancer that reloads from ``path``, as SIGHUP makes it (Daemon.reload)."""
    return running(SPEC, load(path, BalancerConfig), config_path=path, level="warning")


async def slow(seen: Seen, server: TargetServer) -> Reply | str:
    await trio.sleep(SLOW_SECONDS)
    return await echo(seen, server)


async def test_reloads_while_requests_are_in_flight_fail_none(tmp_path):
    path = tmp_path / "balancer.toml"
    async with running_targets(TargetServer("one", slow), TargetServer("two", slow)) as (
        one,
        two,
    ):
        write_config(path, 0, [one.port], 0)
        async with file_balancer(path) as daemon:
            port = address(daemon, "web")[1]
            answers: list[tuple[int, str]] = []
            in_flight = 0
            reloads_in_flight = 0
            generations = 0

            async def client() -> None:
                nonlocal in_flight
                async with Client.connect(("127.0.0.1", port)) as keep_alive:
                    for _ in range(REQUESTS_PER_CLIENT):
                        in_flight += 1
                        try:
                            status, headers, _ = await keep_alive.request(target="/work")
                        finally:
                            in_flight -= 1
                        answers.append((status, headers.get("x-target", "")))
                        # The connection outlived the reloads: a close would fail here.
                        assert headers.get("connection") != "close"
                        # Idle a while: some reloads find this connection between requests.
                        await trio.sleep(SLOW_SECONDS / 2)

            async def reloader() -> None:
                nonlocal reloads_in_flight, generations
                while True:
                    await trio.sleep(SLOW_SECONDS / 4)
                    generations += 1
                    # Each generation sends new requests to the other target only: requests
                    # in flight keep the target (and the generation) they started on.
                    target = two if generations % 2 else one
                    write_config(path, port, [target.port], generations)
                    busy = in_flight
                    assert await daemon.reload() is None
                    reloads_in_flight += busy > 0

            with trio.fail_after(60):
                async with trio.open_nursery() as load:
                    load.start_soon(reloader)
                    async with trio.open_nursery() as clients:
                        for _ in range(CLIENTS):
                            clients.start_soon(client)
                    load.cancel_scope.cancel()

            async with Client.connect(("127.0.0.1", port)) as probe:
                _, _, current = await probe.request(target="/generation")
            assert current == str(generations).encode()  # the last reload took effect
    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT
    assert {status for status, _ in answers} == {200}
    assert {name for _, name in answers} == {"one", "two"}
    assert reloads_in_flight >= 3
