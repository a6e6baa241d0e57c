"""The health-checker shell against real local targets, on a lazily jumping mock clock.

The clock is virtual (``MockClock`` with an autojump threshold): it jumps to the next deadline
once every task has been idle for a moment of real time, so intervals of several seconds pass
in milliseconds while socket I/O on 127.0.0.1 still happens for real. Assertions are about
outcomes; where a bound is asserted (unhealthy within interval x threshold) it is virtual time.
"""

from __future__ import annotations

import io
import itertools
import random
import ssl
from collections.abc import Iterator

import msgspec
import pytest
import trio
import trio.testing
import trustme

import balancer.checker as checker_module
from balancer.checker import (
    FIRST_CHECK_GAP_SECONDS,
    IDLE_POLL_SECONDS,
    INTERVAL_JITTER,
    HealthChecker,
)
from balancer.cli import SPEC
from balancer.config import (
    BalancerConfig,
    Endpoint,
    Forward,
    HealthCheck,
    HttpListener,
    Target,
    TargetGroup,
)
from balancer.health import HealthTable, Input, Reason, TargetHealth, TargetState
from balancer.probes import CheckResult
from balancer.runtime import Runtime
from balancer.upstream import OutOfResources
from monitoring.logging import EventLog
from monitoring.metrics import Metrics
from monitoring.settings import AdminSettings
from tests.support.check_targets import StubTarget, until_health
from tests.support.daemons import address, running
from tests.support.http import request

INTERVAL = 5
THRESHOLD = 2


@pytest.fixture
def lazy_clock():
    # Real I/O on 127.0.0.1 finishes well within 0.1 s of real time; only then does the
    # clock jump to the next deadline.
    return trio.testing.MockClock(autojump_threshold=0.1)


def make_config(
    ports, *, check: HealthCheck | None = None, delay: int = 30, in_use: bool = True
) -> BalancerConfig:
    group = TargetGroup(
        name="web",
        targets=tuple(Target(host="127.0.0.1", port=p) for p in ports),
        deregistration_delay_seconds=delay,
        health_check=check
        or HealthCheck(
            interval_seconds=INTERVAL,
            timeout_seconds=2,
            healthy_threshold=THRESHOLD,
            unhealthy_threshold=THRESHOLD,
        ),
    )
    listeners = (
        (HttpListener(name="front", port=0, default_action=Forward(target_group="web")),)
        if in_use
        else ()
    )
    return BalancerConfig(listeners=listeners, target_groups=(group,))


def state_of(runtime: Runtime, port: int) -> TargetState | None:
    record = runtime.live["web"].health.get(f"127.0.0.1:{port}")
    return record.state if record else None


async def wait_for(
    runtime: Runtime, port: int, state: TargetState | None, *, within: float
) -> float:
    """Virtual seconds until ``port``'s target reaches ``state`` (woken by health events)."""
    start = trio.current_time()
    await until_health(runtime, lambda: state_of(runtime, port) is state, within=within)
    return trio.current_time() - start


class Harness:
    def __init__(self, config: BalancerConfig, *, rand: random.Random | None = None) -> None:
        self.runtime = Runtime(config, now=trio.current_time())
        self.output = io.StringIO()
        self.metrics = Metrics("balancer", version="test")
        self.checker = HealthChecker(
            self.runtime,
            EventLog("balancer", level="debug", stream=self.output),
            self.metrics,
            rand=rand,
        )

    def state(self, port: int) -> TargetState | None:
        return state_of(self.runtime, port)

    def reason(self, port: int) -> Reason | None:
        record = self.runtime.live["web"].health.get(f"127.0.0.1:{port}")
        assert record is not None
        return record.reason

    async def wait_for(self, port: int, state: TargetState | None, *, within: float) -> float:
        return await wait_for(self.runtime, port, state, within=within)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


async def started(nursery: trio.Nursery, *targets: StubTarget) -> None:
    for target in targets:
        await target.start(nursery)


async def test_a_killed_target_turns_unhealthy_within_interval_times_threshold(nursery, lazy_clock):
    a, b = StubTarget(), StubTarget()
    await started(nursery, a, b)
    harness = Harness(make_config([a.port, b.port]))
    assert harness.state(a.port) is TargetState.INITIAL
    await nursery.start(harness.checker.run)
    # One passing check makes a new target healthy.
    await harness.wait_for(a.port, TargetState.HEALTHY, within=1)
    await harness.wait_for(b.port, TargetState.HEALTHY, within=1)

    a.stop()
    elapsed = await harness.wait_for(a.port, TargetState.UNHEALTHY, within=60)
    assert elapsed <= INTERVAL * THRESHOLD
    assert harness.reason(a.port) is Reason.FAILED_HEALTH_CHECKS
    assert harness.state(b.port) is TargetState.HEALTHY
    unhealthy = {"target": f"127.0.0.1:{a.port}", "state": "unhealthy"}
    assert (
        harness.sample(
            "wharf_balancer_target_health",
            target_group="web",
            reason="Target.FailedHealthChecks",
            **unhealthy,
        )
        == 1
    )

    await a.start(nursery)  # back on the same port
    elapsed = await harness.wait_for(a.port, TargetState.HEALTHY, within=60)
    assert elapsed <= INTERVAL * THRESHOLD

    assert (
        harness.sample(
            "wharf_balancer_target_health_transitions_total",
            target_group="web",
            state="unhealthy",
            reason="Target.FailedHealthChecks",
        )
        == 1
    )
    assert (
        harness.sample(
            "wharf_balancer_target_health_transitions_total",
            target_group="web",
            state="initial",
            reason="Elb.InitialHealthChecking",
        )
        == 2
    )
    assert harness.sample("wharf_balancer_targets", target_group="web", state="healthy") == 2
    assert harness.sample("wharf_balancer_targets", target_group="web", state="unhealthy") == 0
    each = "wharf_balancer_target_health"
    for stub in (a, b):
        target = f"127.0.0.1:{stub.port}"
        assert (
            harness.sample(each, target_group="web", target=target, state="healthy", reason="") == 1
        )
    log = harness.output.getvalue()
    assert (
        f"level=warning event=target.state_changed daemon=balancer target_group=web "
        f"target=127.0.0.1:{a.port} previous=healthy state=unhealthy" in log
    )
    assert "event=target.check_failed" in log
    a.stop()
    b.stop()


async def test_mismatched_codes_and_silence_have_their_reasons(nursery, lazy_clock):
    wrong, silent = StubTarget(status=503), StubTarget()
    silent.hang = True
    await started(nursery, wrong, silent)
    check = HealthCheck(interval_seconds=INTERVAL, timeout_seconds=2, matcher="200-299")
    harness = Harness(make_config([wrong.port, silent.port], check=check))
    await nursery.start(harness.checker.run)
    await harness.wait_for(wrong.port, TargetState.UNHEALTHY, within=60)
    await harness.wait_for(silent.port, TargetState.UNHEALTHY, within=60)
    assert harness.reason(wrong.port) is Reason.RESPONSE_CODE_MISMATCH
    assert harness.reason(silent.port) is Reason.TIMEOUT
    wrong.stop()
    silent.stop()


@pytest.mark.parametrize("protocol", ["tcp", "https"])
async def test_tcp_and_https_groups(nursery, lazy_clock, protocol):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("target.invalid").configure_cert(context)
    target = StubTarget(tls=context if protocol == "https" else None)
    await target.start(nursery)
    check = HealthCheck(protocol=protocol, interval_seconds=INTERVAL, timeout_seconds=2)
    harness = Harness(make_config([target.port], check=check))
    await nursery.start(harness.checker.run)
    await harness.wait_for(target.port, TargetState.HEALTHY, within=1)
    assert bool(target.requests) is (protocol == "https")
    target.stop()
    await harness.wait_for(target.port, TargetState.UNHEALTHY, within=60)


async def test_reload_keeps_survivors_checks_new_ones_and_drains_removed(nursery, lazy_clock):
    a, b, c, d = StubTarget(), StubTarget(), StubTarget(), StubTarget()
    await started(nursery, a, b, c, d)
    harness = Harness(make_config([a.port, b.port, c.port], delay=30))
    await nursery.start(harness.checker.run)
    for target in (a, b, c):
        await harness.wait_for(target.port, TargetState.HEALTHY, within=1)
    live = harness.runtime.live["web"]
    live.outstanding[f"127.0.0.1:{c.port}"] = 1  # a request still in flight on c
    healthy_since = live.health.get(f"127.0.0.1:{a.port}").since

    harness.runtime.reload(make_config([a.port, d.port], delay=30), (), trio.current_time())
    # a kept its state (no new "initial"), d is new and checked at once.
    assert live.health.get(f"127.0.0.1:{a.port}").since == healthy_since
    await harness.wait_for(d.port, TargetState.HEALTHY, within=1)
    # b was idle: its draining ended early. c is busy: it drains until the delay ends.
    await harness.wait_for(b.port, None, within=2)
    assert harness.state(c.port) is TargetState.DRAINING
    assert harness.checker.probing() == {
        ("web", f"127.0.0.1:{a.port}"),
        ("web", f"127.0.0.1:{d.port}"),
    }
    elapsed = await harness.wait_for(c.port, None, within=40)
    assert 25 <= elapsed <= 31
    log = harness.output.getvalue()
    assert (
        f"target=127.0.0.1:{b.port} previous=draining state=unused "
        "reason=Target.NotRegistered early=true" in log
    )
    assert (
        f"target=127.0.0.1:{c.port} previous=draining state=unused "
        "reason=Target.NotRegistered early=false" in log
    )
    for target in (a, b, c, d):
        target.stop()


async def test_a_reload_changes_the_check_from_the_next_one(nursery, lazy_clock):
    target = StubTarget(status=200)
    await target.start(nursery)
    harness = Harness(make_config([target.port]))
    await nursery.start(harness.checker.run)
    await harness.wait_for(target.port, TargetState.HEALTHY, within=1)
    check = HealthCheck(
        interval_seconds=INTERVAL, timeout_seconds=2, unhealthy_threshold=2, matcher="201"
    )
    harness.runtime.reload(make_config([target.port], check=check), (), trio.current_time())
    await harness.wait_for(target.port, TargetState.UNHEALTHY, within=60)
    assert harness.reason(target.port) is Reason.RESPONSE_CODE_MISMATCH
    target.stop()


async def test_unchecked_targets_have_no_probe(nursery, lazy_clock):
    target = StubTarget()
    await target.start(nursery)
    harness = Harness(make_config([target.port], check=HealthCheck(enabled=False)))
    await nursery.start(harness.checker.run)
    assert harness.state(target.port) is TargetState.UNAVAILABLE
    assert harness.checker.probing() == set()
    unused = Harness(make_config([target.port], in_use=False))
    await nursery.start(unused.checker.run)
    assert unused.state(target.port) is TargetState.UNUSED
    assert unused.checker.probing() == set()
    await trio.sleep(INTERVAL * 3)
    assert target.requests == []
    # The group comes into use: its target is checked at once.
    unused.runtime.reload(make_config([target.port]), (), trio.current_time())
    await unused.wait_for(target.port, TargetState.HEALTHY, within=1)
    target.stop()


async def test_through_the_daemon_a_killed_target_gets_no_new_requests(nursery, lazy_clock):
    a, b = StubTarget(), StubTarget()
    a.body, b.body = b"a", b"b"
    await started(nursery, a, b)
    front = HttpListener(
        name="front", host="127.0.0.1", port=0, default_action=Forward(target_group="web")
    )
    config = BalancerConfig(
        admin=AdminSettings(port=0),
        listeners=(front,),
        target_groups=make_config([a.port, b.port]).target_groups,
    )
    async with running(SPEC, config) as daemon:
        runtime = daemon.app.runtime
        addr = address(daemon, "front")
        await wait_for(runtime, a.port, TargetState.HEALTHY, within=1)
        await wait_for(runtime, b.port, TargetState.HEALTHY, within=1)
        assert {(await request(addr))[2] for _ in range(4)} == {b"a", b"b"}
        a.stop()
        elapsed = await wait_for(runtime, a.port, TargetState.UNHEALTHY, within=60)
        assert elapsed <= INTERVAL * THRESHOLD
        answers = [await request(addr) for _ in range(8)]
        assert {(status, body) for status, _, body in answers} == {(200, b"b")}
    b.stop()


async def test_a_reload_that_shortens_the_interval_applies_before_the_old_one_ends(
    nursery, lazy_clock
):
    """The issue: a killed target is unhealthy within interval x threshold, and a reload
    applies new target groups. Before, a probe slept out the interval it had scheduled."""
    a = StubTarget()
    await started(nursery, a)
    slow = HealthCheck(interval_seconds=300, timeout_seconds=2, unhealthy_threshold=THRESHOLD)
    harness = Harness(make_config([a.port], check=slow))
    await nursery.start(harness.checker.run)
    await harness.wait_for(a.port, TargetState.HEALTHY, within=1)
    await trio.sleep(1)  # the probe now waits out the 300 s interval
    harness.runtime.reload(make_config([a.port]), (), trio.current_time())  # 5 s interval
    a.stop()
    elapsed = await harness.wait_for(a.port, TargetState.UNHEALTHY, within=300)
    assert elapsed <= INTERVAL * THRESHOLD


async def test_a_target_that_left_early_counts_as_draining_until_its_delay_ends(lazy_clock):
    """As the targets API lists it (a load hunt found the gauge said draining 0 meanwhile)."""
    harness = Harness(make_config([9], delay=30))
    live = harness.runtime.live["web"]
    harness.runtime.notify(live.health.deregister("127.0.0.1:9", trio.current_time(), idle=True))
    assert live.health.get("127.0.0.1:9") is None  # gone for routing
    assert harness.sample("wharf_balancer_targets", target_group="web", state="draining") == 1
    reason = "Target.DeregistrationInProgress"
    each = {"target_group": "web", "target": "127.0.0.1:9", "state": "draining", "reason": reason}
    assert harness.sample("wharf_balancer_target_health", **each) == 1
    await trio.sleep(31)
    assert harness.sample("wharf_balancer_targets", target_group="web", state="draining") == 0


async def test_a_check_that_raises_fails_with_elb_internal_error_and_checks_go_on(
    nursery, lazy_clock
):
    target = StubTarget()
    await started(nursery, target)
    check = HealthCheck(
        interval_seconds=INTERVAL,
        timeout_seconds=2,
        healthy_threshold=THRESHOLD,
        unhealthy_threshold=THRESHOLD,
    )
    # A path h11 cannot encode, as the file's validation once let through (it refuses it
    # now): the check raises UnicodeEncodeError, which no target could cause.
    msgspec.structs.force_setattr(check, "path", "/health/é")
    harness = Harness(make_config([target.port], check=check))
    await nursery.start(harness.checker.run)
    await harness.wait_for(target.port, TargetState.UNHEALTHY, within=INTERVAL * THRESHOLD + 1)
    assert harness.reason(target.port) is Reason.INTERNAL_ERROR
    await trio.sleep(INTERVAL * 3)  # the probe carries on, and so does the checker
    assert harness.checker.probing() == {("web", f"127.0.0.1:{target.port}")}
    errors = harness.sample("wharf_handler_errors_total", listener="health_checks")
    assert errors is not None
    assert errors >= THRESHOLD + 2  # every check that raised, logged or not
    (logged,) = [
        line for line in harness.output.getvalue().splitlines() if "target.check_error" in line
    ]
    assert "level=error" in logged
    assert "error=UnicodeEncodeError" in logged
    assert f"target=127.0.0.1:{target.port}" in logged
    # A check that stops raising is judged as before.
    msgspec.structs.force_setattr(check, "path", "/health")
    await harness.wait_for(target.port, TargetState.HEALTHY, within=INTERVAL * THRESHOLD + 1)


async def test_a_check_the_balancer_cannot_open_leaves_the_target_as_it_was(
    nursery, lazy_clock, monkeypatch
):
    target = StubTarget()
    await started(nursery, target)
    check = HealthCheck(interval_seconds=INTERVAL, timeout_seconds=2)
    harness = Harness(make_config([target.port], check=check))
    await nursery.start(harness.checker.run)
    await harness.wait_for(target.port, TargetState.HEALTHY, within=INTERVAL + 1)

    async def exhausted(
        host: str, port: int, check: HealthCheck, *, tls_policy: str
    ) -> CheckResult:
        raise OutOfResources(f"{host}:{port}", "[Errno 24] Too many open files")

    monkeypatch.setattr(checker_module, "run_check", exhausted)
    await trio.sleep(INTERVAL * (check.unhealthy_threshold + 2))
    assert harness.state(target.port) is TargetState.HEALTHY  # its state says nothing new
    lines = [
        line
        for line in harness.output.getvalue().splitlines()
        if "balancer.out_of_resources" in line
    ]
    assert len(lines) == 1  # once a minute, however many checks failed so
    assert "level=error" in lines[0]
    assert harness.sample("wharf_handler_errors_total", listener="health_checks") in (None, 0)


# -- scale: what one event costs, and when checks run ------------------------------------------
#
# These use a fake check (no I/O) on a clock that jumps as soon as every task waits, so a
# thousand targets and dozens of intervals take no real time; they count what the checker
# reads or when the checks start, never how long anything took.


@pytest.fixture
def instant_clock():
    return trio.testing.MockClock(autojump_threshold=0)


class CheckLog:
    """A stand-in for ``run_check``: every check passes at once, and is noted with its
    virtual start time."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, float]] = []

    async def __call__(
        self, host: str, port: int, check: HealthCheck, *, tls_policy: str
    ) -> CheckResult:
        self.checks.append((f"{host}:{port}", trio.current_time()))
        return CheckResult(Input.CHECK_PASSED, "HTTP 200", 200)

    def first_checks(self) -> dict[str, float]:
        first: dict[str, float] = {}
        for target, at in self.checks:
            first.setdefault(target, at)
        return first

    def times(self, target: str) -> list[float]:
        return [at for checked, at in self.checks if checked == target]


@pytest.fixture
def check_log(monkeypatch):
    log = CheckLog()
    monkeypatch.setattr(checker_module, "run_check", log)
    return log


class TableReads:
    """Counts the health records anyone reads, one by one or by walking a table."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.records = 0
        get, walk = HealthTable.get, HealthTable.__iter__

        def counted_get(table: HealthTable, target_id: str) -> TargetHealth | None:
            self.records += 1
            return get(table, target_id)

        def counted_walk(table: HealthTable) -> Iterator[TargetHealth]:
            self.records += len(table)
            return walk(table)

        monkeypatch.setattr(HealthTable, "get", counted_get)
        monkeypatch.setattr(HealthTable, "__iter__", counted_walk)


def many_targets(count: int) -> tuple[Target, ...]:
    """``count`` distinct targets; never connected to (the checks are fake)."""
    return tuple(Target(host=f"127.0.{i // 100}.1", port=19100 + i % 100) for i in range(count))


def groups_config(
    *groups: tuple[str, tuple[Target, ...]], interval: int = INTERVAL, delay: int = 30
) -> BalancerConfig:
    check = HealthCheck(interval_seconds=interval, timeout_seconds=2)
    return BalancerConfig(
        listeners=tuple(
            HttpListener(name=f"to-{name}", port=0, default_action=Forward(target_group=name))
            for name, _ in groups
        ),
        target_groups=tuple(
            TargetGroup(
                name=name, targets=targets, deregistration_delay_seconds=delay, health_check=check
            )
            for name, targets in groups
        ),
    )


def endpoint(target: Target) -> Endpoint:
    return Endpoint(f"{target.host}:{target.port}", target.host, target.port, 1, "")


async def test_a_check_result_reads_only_its_own_target(nursery, instant_clock, check_log):
    """The issue: every batch of health events walked every target of every group (and woke
    the clock, which walked them all again), so 5,000 targets turning healthy at the start
    cost 5,000 x 5,000 reads and stalled the loop for seconds."""
    harness = Harness(groups_config(("web", many_targets(1000))))
    await nursery.start(harness.checker.run)
    await trio.sleep(INTERVAL)  # every target checked once: healthy
    live = harness.runtime.live["web"]
    assert live.health.statistics()[TargetState.HEALTHY] == 1000
    target = "127.0.0.1:19100"
    with pytest.MonkeyPatch.context() as patch:
        reads = TableReads(patch)
        now = trio.current_time()
        for _ in range(THRESHOLD):
            harness.runtime.notify(live.health.record_check(target, Input.CHECK_FAILED, now))
        await trio.testing.wait_all_tasks_blocked()
    assert live.health.get(target).state is TargetState.UNHEALTHY
    assert reads.records <= 2
    assert ("web", target) in harness.checker.probing()


async def test_a_registration_reads_only_its_group_and_is_checked_at_once(
    nursery, instant_clock, check_log
):
    """Through Runtime.replace_targets, as the targets API registers: another group's
    thousand targets are not read, and the new target's first check is immediate (ALB: one
    passing check makes a new target healthy)."""
    api = many_targets(1)
    harness = Harness(groups_config(("web", many_targets(1000)), ("api", api)))
    await nursery.start(harness.checker.run)
    await trio.sleep(INTERVAL * 2.5)
    added = Target(host="127.0.99.1", port=19199)
    with pytest.MonkeyPatch.context() as patch:
        reads = TableReads(patch)
        now = trio.current_time()
        harness.runtime.replace_targets("api", [endpoint(api[0]), endpoint(added)], now)
        await trio.testing.wait_all_tasks_blocked()
    assert reads.records <= 10  # the api group's two, and the new target's probe
    assert check_log.times("127.0.99.1:19199") == [now]
    record = harness.runtime.live["api"].health.get("127.0.99.1:19199")
    assert record is not None
    assert record.state is TargetState.HEALTHY


async def test_the_draining_clock_reads_only_draining_targets(nursery, instant_clock, check_log):
    """The clock wakes at every deregistration and every second while a target drains; it
    used to walk every target at each wake (three times)."""
    targets = many_targets(1000)
    harness = Harness(groups_config(("web", targets), delay=30))
    await nursery.start(harness.checker.run)
    await trio.sleep(INTERVAL)
    live = harness.runtime.live["web"]
    leaving = endpoint(targets[0]).target_id
    live.outstanding[leaving] = 1  # a request in flight: it drains until that ends
    with pytest.MonkeyPatch.context() as patch:
        reads = TableReads(patch)
        harness.runtime.replace_targets(
            "web", [endpoint(t) for t in targets[1:]], trio.current_time()
        )
        await trio.sleep(IDLE_POLL_SECONDS * 3.5)  # three idle polls, no check due yet
        assert live.health.get(leaving).state is TargetState.DRAINING
        live.outstanding[leaving] = 0
        await trio.sleep(IDLE_POLL_SECONDS)  # the safety net finds it idle
    assert live.health.get(leaving) is None
    # The table's own sync of the new target list reads the group once; the clock none.
    assert reads.records <= len(targets) + 10
    assert ("web", leaving) not in harness.checker.probing()


@pytest.mark.parametrize(
    ("count", "gap"),
    [
        (100, FIRST_CHECK_GAP_SECONDS),  # few enough: checked within a second
        (1000, INTERVAL / 1000),  # too many for that pace: spread across the interval
    ],
)
async def test_the_first_checks_of_the_first_targets_are_spread_out(
    nursery, instant_clock, check_log, count, gap
):
    """HAProxy's way (server position / count x interval), paced at most
    FIRST_CHECK_GAP_SECONDS apart: before, every target connected in the same instant."""
    targets = many_targets(count)
    harness = Harness(groups_config(("web", targets)))
    started_at = trio.current_time()
    await nursery.start(harness.checker.run)
    await trio.sleep(INTERVAL - 0.001)
    first = check_log.first_checks()
    assert list(first) == [endpoint(t).target_id for t in targets]  # in configuration order
    times = list(first.values())
    assert times[0] == started_at
    assert [b - a for a, b in itertools.pairwise(times)] == [pytest.approx(gap)] * (count - 1)
    assert times[-1] - started_at == pytest.approx((count - 1) * gap)
    assert times[-1] < started_at + INTERVAL
    # Each target keeps its place: its second check is about one interval after its first.
    await trio.sleep(INTERVAL)
    for target, at in list(first.items())[:: count // 10]:
        second = check_log.times(target)[1]
        assert at + INTERVAL * (1 - INTERVAL_JITTER) <= second <= at + INTERVAL


async def test_a_reload_adding_many_targets_spreads_their_first_checks(
    nursery, instant_clock, check_log
):
    old, new = many_targets(1000)[:1], many_targets(1000)[1:301]
    harness = Harness(groups_config(("web", old)))
    await nursery.start(harness.checker.run)
    await trio.sleep(1)
    reloaded_at = trio.current_time()
    harness.runtime.reload(groups_config(("web", old + new)), (), reloaded_at)
    await trio.sleep(INTERVAL * 0.99)
    first = check_log.first_checks()
    times = [first[endpoint(t).target_id] for t in new]
    assert times == [reloaded_at + i * FIRST_CHECK_GAP_SECONDS for i in range(len(new))]


async def test_later_checks_come_up_to_five_percent_early_at_random(
    nursery, instant_clock, check_log
):
    """Spread first checks would drift back into step if every interval were exact (targets
    that turn healthy together, a reload): each check is due a random 0-5% early, as
    HAProxy's spread-checks, never late (unhealthy within interval x threshold holds)."""
    harness = Harness(groups_config(("web", many_targets(1))), rand=random.Random(7))
    await nursery.start(harness.checker.run)
    await trio.sleep(INTERVAL * 100)
    times = check_log.times("127.0.0.1:19100")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 100
    assert all(INTERVAL * (1 - INTERVAL_JITTER) <= gap <= INTERVAL for gap in gaps)
    # Spread over the whole range, not a fixed offset.
    assert min(gaps) < INTERVAL * (1 - INTERVAL_JITTER * 0.9)
    assert max(gaps) > INTERVAL * (1 - INTERVAL_JITTER * 0.1)
