"""Which target groups fail open, told to the log and the metrics (an observer shell).

A group fails open when fewer of its targets are healthy than ``minimum_healthy_targets``
(:func:`balancer.selection.eligible`): every registered target that is not draining then gets
requests, unhealthy ones included. The selector decides it for its request set; an operator
needs to know when it starts and stops, since the requests it sends to unhealthy targets are
the ones that fail. ALB shows this only indirectly (HealthyHostCount under the threshold).
Here, while a group fails open with an unhealthy target among those it routes to:

- ``target_group.fail_open`` (warning) when it starts, ``target_group.fail_open_ended``
  (info) when it stops, each with the counts;
- ``wharf_balancer_target_group_fail_open{target_group}`` is 1 (read at scrape time).

Failing open onto new targets that have not had their first check yet (every group, for a
moment, at the start) routes to no target known to fail and is left out of both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from balancer.health import TargetState, TargetStateChanged
from balancer.runtime import GroupRuntime, Runtime
from balancer.selection import ROUTABLE, Candidate, eligible
from monitoring.logging import EventLog
from monitoring.metrics import Metrics


def fails_open(group: GroupRuntime) -> tuple[bool, Sequence[Candidate]]:
    """Whether the group routes to an unhealthy target for want of healthy ones, and its
    candidates."""
    selector = group.selector
    candidates = group.candidates()
    pool, failing = eligible(
        candidates,
        minimum_count=selector.minimum_healthy_count,
        minimum_percent=selector.minimum_healthy_percent,
    )
    return failing and any(c.state is TargetState.UNHEALTHY for c in pool), candidates


class FailOpenWatch:
    """Follows every group's fail-open state through health events and reloads."""

    def __init__(self, runtime: Runtime, log: EventLog, metrics: Metrics) -> None:
        self._runtime = runtime
        self._log = log
        self._failing: set[str] = set()
        self._followed_config = runtime.current.config
        runtime.observers.append(self.on_events)
        runtime.on_install.append(self.follow_all)
        metrics.register_collector(self.collect)
        self._follow(runtime.current.groups)

    def on_events(self, events: Sequence[TargetStateChanged]) -> None:
        """A health observer: look again at the groups the events name."""
        self._follow(dict.fromkeys(event.target_group for event in events))

    def follow_all(self) -> None:
        """After a new configuration (its targets and minimums may differ): every group. A
        targets-API change shares its predecessor's configuration and is followed through
        its events alone, so an admin call does not walk every group's targets."""
        current = self._runtime.current
        if current.config is self._followed_config:
            return
        self._followed_config = current.config
        self._failing &= set(current.groups)
        self._follow(current.groups)

    def _follow(self, names: Iterable[str]) -> None:
        groups = self._runtime.current.groups
        for name in names:
            group = groups.get(name)
            if group is None:
                continue  # a group of an older generation, draining out
            failing, candidates = fails_open(group)
            if failing == (name in self._failing):
                continue
            healthy = sum(c.state in ROUTABLE for c in candidates)
            if failing:
                self._failing.add(name)
                self._log.warning(
                    "target_group.fail_open",
                    target_group=name,
                    healthy=healthy,
                    unhealthy=sum(c.state is TargetState.UNHEALTHY for c in candidates),
                    minimum_count=group.selector.minimum_healthy_count,
                    minimum_percent=group.selector.minimum_healthy_percent,
                )
            else:
                self._failing.discard(name)
                self._log.info("target_group.fail_open_ended", target_group=name, healthy=healthy)

    def collect(self) -> Iterable[Metric]:
        """Scrape-time gauge: 1 per group failing open, 0 for the others."""
        family = GaugeMetricFamily(
            "wharf_balancer_target_group_fail_open",
            "1 while the target group routes to its unhealthy targets too, because too few "
            "are healthy (minimum_healthy_targets).",
            labels=["target_group"],
        )
        for name, group in sorted(self._runtime.current.groups.items()):
            family.add_metric([name], 1.0 if fails_open(group)[0] else 0.0)
        return [family]
