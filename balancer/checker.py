"""The health-checker shell: one probe task per checked target, and the draining clock.

Task tree (owned by :meth:`HealthChecker.run`, which the app starts in its serve nursery)::

    HealthChecker.run
    ├── probe (group, target)   one per target whose state is checked; each has a cancel scope
    └── clock                   runtime.advance at draining deadlines; early completion

Theory of operation:

- The pure :class:`~balancer.health.HealthTable` of each group (in ``runtime.live``) decides
  states; this shell only observes the world and feeds it ``record_check`` results.
- A probe checks right away (ALB: one passing check makes a new target healthy), then every
  ``interval_seconds`` measured from the start of the previous check: "the result lasts for
  the entire interval", so a slow response does not shift the schedule. Settings are read
  from the current snapshot at every check, so a reload that changes the path, matcher or
  port applies from the next check without restarting anything; a waiting probe re-reads the
  interval when a generation is installed, so a shorter one applies at once.
- Which targets have a probe follows the tables: every batch of health events (a reload, an
  admin registration, a check result, a deadline) re-synchronises the set. Targets that are
  draining, unused or unavailable (checks off) are not checked; removed ones lose their probe;
  targets kept across a reload keep their probe and their state.
- Draining ends at the deregistration delay (:meth:`Runtime.advance` at
  :meth:`HealthTable.next_deadline`), or early once the target has nothing in flight: the
  runtime's outstanding counters tell, and the HTTP shell also reports the last request.
- A check that raises (a bug: :func:`~balancer.probes.run_check` returns a result for
  anything a target does) fails with ALB's ``Elb.InternalError``, is logged at error level
  (``target.check_error``, once while it keeps raising) and counted in
  ``wharf_handler_errors_total{listener="health_checks"}``; the probe goes on.
- Every transition is logged (one ``target.state_changed`` line) and counted in
  ``wharf_balancer_target_health_transitions_total{target_group,state,reason}``; the number
  of targets per group and state is a scrape-time gauge, ``wharf_balancer_targets``, and
  each target's state and reason code is ``wharf_balancer_target_health`` (1 per target).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import trio
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from balancer.health import (
    Input,
    TargetDeregistered,
    TargetRegistered,
    TargetState,
    TargetStateChanged,
)
from balancer.probes import CheckResult, run_check
from balancer.runtime import Runtime
from balancer.upstream import OutOfResources, report_out_of_resources
from monitoring.logging import EventLog
from monitoring.metrics import Metrics
from monitoring.throttle import Throttle

# States whose targets are probed: the others ignore check results (draining, unused) or have
# checks turned off (unavailable).
CHECKED_STATES: Final = frozenset({TargetState.INITIAL, TargetState.HEALTHY, TargetState.UNHEALTHY})
# The clock also wakes at least this often to finish idle draining targets, in case a request
# ended without the HTTP shell reporting it (a safety net; reports make it prompt).
IDLE_POLL_SECONDS: Final = 1.0

# The checks' series of wharf_handler_errors_total{listener}.
HANDLER_ERRORS_LABEL: Final = "health_checks"

Clock = Callable[[], float]
ProbeKey = tuple[str, str]  # (target group, target id)


class HealthChecker:
    """Runs active health checks for every target group of a :class:`Runtime`.

    Args:
        runtime: the balancer's runtime; its ``live`` tables are fed, ``current`` is read.
        log: transitions are logged here.
        metrics: the daemon's registry (transition counter, targets gauge).
        clock: monotonic seconds, the same clock the runtime's ``now`` uses.
    """

    def __init__(
        self,
        runtime: Runtime,
        log: EventLog,
        metrics: Metrics,
        *,
        clock: Clock = trio.current_time,
    ) -> None:
        self._runtime = runtime
        self._log = log
        self._clock = clock
        self._probes: dict[ProbeKey, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._exhaustion = Throttle()  # one "out of descriptors" line a minute
        # Set when a new generation is installed: probes waiting out an interval re-read it.
        self._installed = trio.Event()
        runtime.on_install.append(self._generation_installed)
        self.transitions = metrics.counter(
            "wharf_balancer_target_health_transitions",
            "Target health state changes, by the state entered and AWS's reason code.",
            ["target_group", "state", "reason"],
        )
        metrics.register_collector(self.collect_targets)
        # A check that raised is a bug caught where it happened, as in a connection handler.
        self._handler_errors = metrics.handler_errors.labels(HANDLER_ERRORS_LABEL)
        runtime.observers.append(self.on_events)
        # The first generation registered its targets before anyone could listen.
        for live in runtime.live.values():
            self.on_events(
                [
                    TargetRegistered(
                        r.target_id, r.since, None, r.state, r.reason, target_group=live.name
                    )
                    for r in live.health
                ]
            )

    # -- observing --------------------------------------------------------------------------

    def on_events(self, events: Sequence[TargetStateChanged]) -> None:
        """Log and count health events, then follow them with the probe set (an observer)."""
        for event in events:
            reason = event.reason.value if event.reason is not None else ""
            self.transitions.labels(event.target_group, event.state.value, reason).inc()
            fields: dict[str, object] = {
                "target_group": event.target_group,
                "target": event.target_id,
                "previous": event.previous.value if event.previous is not None else None,
                "state": event.state.value,
                "reason": reason or None,
            }
            if isinstance(event, TargetDeregistered):
                fields["early"] = event.early
            if event.state is TargetState.UNHEALTHY:
                self._log.warning("target.state_changed", **fields)
            else:
                self._log.info("target.state_changed", **fields)
        if events:
            self.sync()

    def collect_targets(self) -> Iterable[Metric]:
        """Scrape-time gauge: targets per group and state (zeros included)."""
        family = GaugeMetricFamily(
            "wharf_balancer_targets",
            "Registered targets per target group and health state.",
            labels=["target_group", "state"],
        )
        each = GaugeMetricFamily(
            "wharf_balancer_target_health",
            "1 per registered target, labelled with its health state and ALB reason code "
            "(DescribeTargetHealth's State and Reason; reason empty when healthy).",
            labels=["target_group", "target", "state", "reason"],
        )
        try:
            now: float | None = self._clock()
        except RuntimeError:  # before trio runs: the registry reads the names at registration
            now = None
        for name, live in sorted(self._runtime.live.items()):
            # Targets that left early are shown draining until their delay ends, as the
            # targets API lists them (DescribeTargetHealth does the same).
            departed = live.health.departed(now) if now is not None else []
            counts = live.health.statistics()
            counts[TargetState.DRAINING] += len(departed)
            for state, count in counts.items():
                family.add_metric([name, state.value], count)
            for record in [*live.health, *departed]:
                reason = record.reason.value if record.reason is not None else ""
                each.add_metric([name, record.target_id, record.state.value, reason], 1)
        return [family, each]

    # -- tasks ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check until cancelled; ``started`` once the first probes are running."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                self.sync()
                nursery.start_soon(self._clock_loop)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def wanted(self) -> set[ProbeKey]:
        """The (group, target) pairs that should be probed now."""
        wanted: set[ProbeKey] = set()
        for name, group in self._runtime.current.groups.items():
            if not group.config.health_check.enabled:
                continue
            for target_id in group.by_id:
                record = group.live.health.get(target_id)
                if record is not None and record.state in CHECKED_STATES:
                    wanted.add((name, target_id))
        return wanted

    def sync(self) -> None:
        """Start probes for targets that need checking; stop those that no longer do."""
        self._wake.set()
        nursery = self._nursery
        if nursery is None:
            return
        wanted = self.wanted()
        for key in list(self._probes):
            if key not in wanted:
                self._probes.pop(key).cancel()
        for key in wanted - self._probes.keys():
            scope = trio.CancelScope()
            self._probes[key] = scope
            nursery.start_soon(self._probe, key, scope)

    def probing(self) -> set[ProbeKey]:
        """The (group, target) pairs with a probe task (for tests and debugging)."""
        return set(self._probes)

    def _generation_installed(self) -> None:
        self._installed.set()
        self._installed = trio.Event()

    async def _probe(self, key: ProbeKey, scope: trio.CancelScope) -> None:
        group_name, target_id = key
        with scope:
            last_started: float | None = None
            failing = False  # the last check raised: logged already, not every interval
            while True:
                group = self._runtime.current.groups.get(group_name)
                endpoint = group.by_id.get(target_id) if group is not None else None
                if group is None or endpoint is None:
                    break
                check = group.config.health_check
                now = self._clock()
                if last_started is not None:
                    # Due one interval after the last check started, by the interval of the
                    # generation current now: a reload that shortens it applies at once.
                    due = last_started + check.interval_seconds
                    if due > now:
                        with trio.move_on_at(due):
                            await self._installed.wait()
                        continue  # due now, or a new generation: read the interval again
                last_started = now  # from now, however late: a stalled loop fires no burst
                try:
                    result = await run_check(endpoint.host, endpoint.port, check)
                except OutOfResources as exc:
                    # Says nothing about the target: no result, no state change.
                    report_out_of_resources(self._log, self._exhaustion, str(exc))
                    failing = False
                    continue
                except Exception as exc:
                    # A bug in one check stays in that check: it fails as ALB's own errors
                    # do, and the probe, the checker and the daemon carry on.
                    result = self._internal_error(key, exc, logged=failing)
                    failing = True
                else:
                    failing = False
                self._record(group_name, target_id, result)
        if self._probes.get(key) is scope:
            del self._probes[key]

    def _internal_error(self, key: ProbeKey, exc: Exception, *, logged: bool) -> CheckResult:
        """The result of a check that raised; logged (once in a row) and counted."""
        self._handler_errors.inc()
        if not logged:
            group_name, target_id = key
            self._log.exception(
                "target.check_error", exc, target_group=group_name, target=target_id
            )
        return CheckResult(Input.CHECK_INTERNAL_ERROR, f"internal error: {type(exc).__name__}")

    def _record(self, group_name: str, target_id: str, result: CheckResult) -> None:
        live = self._runtime.live.get(group_name)
        if live is None:
            return
        if result.input is not Input.CHECK_PASSED:
            self._log.debug(
                "target.check_failed",
                target_group=group_name,
                target=target_id,
                result=result.input.value,
                detail=result.detail,
            )
        events = live.health.record_check(
            target_id, result.input, self._clock(), status=result.status
        )
        self._runtime.notify(events)

    async def _clock_loop(self) -> None:
        while True:
            self._wake = trio.Event()
            now = self._clock()
            self._runtime.advance(now)
            self._finish_idle(now)
            wake_at = math.inf
            for live in self._runtime.live.values():
                deadline = live.health.next_deadline()
                if deadline is not None:
                    wake_at = min(wake_at, deadline)
            if self._draining():
                wake_at = min(wake_at, now + IDLE_POLL_SECONDS)
            with trio.move_on_at(wake_at):
                await self._wake.wait()

    def _draining(self) -> bool:
        return any(
            record.state is TargetState.DRAINING
            for live in self._runtime.live.values()
            for record in live.health
        )

    def _finish_idle(self, now: float) -> None:
        """Draining targets with nothing in flight leave now (ALB's early completion)."""
        for live in list(self._runtime.live.values()):
            for record in live.health:
                if record.state is TargetState.DRAINING and live.in_flight(record.target_id) == 0:
                    self._runtime.notify(live.health.target_idle(record.target_id, now))
