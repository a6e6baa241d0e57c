"""Fail-open told to the log and the metrics, from health events on a real runtime."""

from __future__ import annotations

import io

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from balancer.config import (
    BalancerConfig,
    Forward,
    HealthCheck,
    HttpListener,
    MinimumHealthyTargets,
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
