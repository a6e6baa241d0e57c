"""Fail-open told to the log and the metrics, from health events on a real runtime."""

from __future__ import annotations

import io

import msgspec
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import balancer.fail_open as fail_open_module
from balancer.config import (
    BalancerConfig,
    Conditions,
    Endpoint,
    Forward,
    HealthCheck,
    HttpListener,
    MinimumHealthyTargets,
    Rule,
    Target,
    TargetGroup,
)
from balancer.fail_open import FailOpenWatch
from balancer.health import Input
from balancer.runtime import Runtime
from monitoring.logging import EventLog
from monitoring.metrics import Metrics

A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"


def make_config(minimum: int = 2) -> BalancerConfig:
    group = TargetGroup(
        name="web",
        targets=tuple(Target(host="127.0.0.1", port=p) for p in (9001, 9002, 9003)),
        health_check=HealthCheck(healthy_threshold=2, unhealthy_threshold=2),
        minimum_healthy_targets=MinimumHealthyTargets(count=minimum),
    )
    listener = HttpListener(name="front", port=0, default_action=Forward(target_group="web"))
    return BalancerConfig(listeners=(listener,), target_groups=(group,))


class Harness:
    def __init__(self) -> None:
        self.now = 0.0
        self.runtime = Runtime(make_config(), now=self.now)
        self.output = io.StringIO()
        self.metrics = Metrics("balancer", version="test")
        self.watch = FailOpenWatch(
            self.runtime, EventLog("balancer", stream=self.output), self.metrics
        )

    def check(self, target: str, result: Input) -> None:
        self.now += 1
        table = self.runtime.live["web"].health
        self.runtime.notify(table.record_check(target, result, self.now))

    def events(self) -> list[str]:
        return [
            line.split("event=", 1)[1].split(" ", 1)[0]
            for line in self.output.getvalue().splitlines()
            if "event=target_group." in line
        ]

    def gauge(self) -> float:
        text = generate_latest(self.metrics.registry).decode()
        for family in text_string_to_metric_families(text):
            if family.name == "wharf_balancer_target_group_fail_open":
                [sample] = family.samples
                assert sample.labels == {"target_group": "web"}
                return sample.value
        raise AssertionError("no wharf_balancer_target_group_fail_open")


def test_new_targets_not_checked_yet_are_no_failing_open():
    harness = Harness()
    assert harness.gauge() == 0
    for target in (A, B, C):
        harness.check(target, Input.CHECK_PASSED)
    assert harness.events() == []
    assert harness.gauge() == 0


def test_too_few_healthy_routes_to_the_unhealthy_and_says_so_until_they_recover():
    harness = Harness()
    for target in (A, B, C):
        harness.check(target, Input.CHECK_PASSED)
    for _ in range(2):
        harness.check(A, Input.CHECK_FAILED)
    assert harness.events() == []  # two healthy: the minimum of 2 holds
    for _ in range(2):
        harness.check(B, Input.CHECK_TIMED_OUT)
    assert harness.events() == ["target_group.fail_open"]
    assert "healthy=1 unhealthy=2 minimum_count=2" in harness.output.getvalue()
    assert "level=warning" in harness.output.getvalue()
    assert harness.gauge() == 1
    harness.check(B, Input.CHECK_FAILED)  # still failing: said once
    assert harness.events() == ["target_group.fail_open"]
    harness.check(A, Input.CHECK_PASSED)
    assert harness.gauge() == 1  # one pass is not enough for a target once unhealthy
    harness.check(A, Input.CHECK_PASSED)
    assert harness.events() == ["target_group.fail_open", "target_group.fail_open_ended"]
    assert harness.gauge() == 0


def test_a_reload_that_lowers_the_minimum_ends_it():
    harness = Harness()
    for target in (A, B, C):
        harness.check(target, Input.CHECK_PASSED)
    for target in (A, B):
        for _ in range(2):
            harness.check(target, Input.CHECK_FAILED)
    assert harness.gauge() == 1
    harness.runtime.reload(make_config(minimum=1), (), harness.now)
    assert harness.events() == ["target_group.fail_open", "target_group.fail_open_ended"]
    assert harness.gauge() == 0


def test_a_targets_api_change_looks_only_at_its_own_group(monkeypatch):
    # Every targets-API change installs a generation; following every group then walked
    # every group's targets (1,000 groups of 100: 0.35 -> 9.1 ms a change).
    web = make_config().target_groups[0]
    api = msgspec.structs.replace(web, name="api")
    listener = HttpListener(name="front", port=0, default_action=Forward(target_group="web"))
    rule = Rule(
        priority=1,
        conditions=Conditions(path_pattern=("/api/*",)),
        action=Forward(target_group="api"),
    )
    config = BalancerConfig(
        listeners=(msgspec.structs.replace(listener, rules=(rule,)),), target_groups=(web, api)
    )
    runtime = Runtime(config, now=0.0)
    FailOpenWatch(
        runtime, EventLog("balancer", stream=io.StringIO()), Metrics("balancer", version="test")
    )
    looked: list[str] = []
    real = fail_open_module.fails_open

    def counting(group):  # type: ignore[no-untyped-def]
        looked.append(group.name)
        return real(group)

    monkeypatch.setattr(fail_open_module, "fails_open", counting)
    endpoints = [Endpoint(A, "127.0.0.1", 9001, 1, ""), Endpoint(C, "127.0.0.1", 9003, 1, "")]
    runtime.replace_targets("web", endpoints, 1.0)
    assert set(looked) == {"web"}
    looked.clear()
    reloaded = msgspec.structs.replace(config, target_groups=(web, api))  # another object
    runtime.reload(reloaded, (), 2.0)  # a new configuration: every group
    assert sorted(set(looked)) == ["api", "web"]
