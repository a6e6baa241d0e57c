"""The health-checker shell: one probe task per checked target, and the draining clock.

Task tree (owned by :meth:`HealthChecker.run`, which the app starts in its serve nursery)::

    HealthChecker.run
    ├── probe (group, target)   one per target whose state is checked; each has a cancel scope
    └── clock                   runtime.advance at draining deadlines; early completion

Theory of operation:

- The pure :class:`~balancer.health.HealthTable` of each group (in ``runtime.live``) decides
  states; this shell only observes the world and feeds it ``record_check`` results.
- A probe checks right away (ALB: one passing check makes a new target healthy; many
  probes started together wait their turn, below), then every ``interval_seconds`` (a
  little less: jitter, below) measured from the start of the previous check: "the result
  lasts for the entire interval", so a slow response does not shift the schedule. Settings
  are read from the current snapshot at every check, so a reload that changes the path,
  matcher or port applies from the next check without restarting anything; a waiting probe
  re-reads the interval when a generation changes its group's, so a shorter one applies at
  once.
- Probes are spread out, as HAProxy spreads a backend's checks, so thousands of targets do
  not all connect in the same instant of every interval. The probes started together (the
  daemon's first targets, a reload's, a large registration) take their first checks one
  after another, ``min(interval / count, FIRST_CHECK_GAP_SECONDS)`` apart: spread across the
  interval when there are many, yet a target registered alone, or a small group at start, is
  checked at once (an ``initial`` target gets no requests while others are healthy, so a
  slow spread would leave it idle). Each later check comes up to ``INTERVAL_JITTER`` of the
  interval early, at random (HAProxy's ``spread-checks``), so targets that started together
  drift apart instead of staying aligned; never late, so a target still turns unhealthy
  within ``interval_seconds x unhealthy_threshold`` of refusing connections (of hanging: plus
  ``timeout_seconds``, when the last failing check's verdict comes).
- Which targets have a probe follows the tables, incrementally: a batch of health events (a
  reload, an admin registration, a check result, a deadline) re-evaluates only the targets
  it names, so a check result costs O(1), not a walk of every target. A new configuration
  (a reload, not a targets-API change, which only changes targets that its events name)
  re-synchronises the whole set. Targets that are draining, unused or unavailable (checks
  off) are not checked; removed ones lose their probe; targets kept across a reload keep
  their probe and their state.
- Draining ends at the deregistration delay (:meth:`Runtime.advance` at
  :meth:`HealthTable.next_deadline`), or early once the target has nothing in flight: the
  runtime's outstanding counters tell, and the HTTP shell also reports the last request.
  The clock wakes when a target starts draining, at deadlines, and every second while
  targets drain; each wake looks at the draining targets only.
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
import random
from collections.abc import Callable, Container, Iterable, Sequence
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
from balancer.runtime import Runtime, target_policy
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

# Probes started together take their first checks at most this far apart (less when there
# are so many that the interval would not hold them): 100 a second at least, so a group of a
# hundred targets is all checked within a second of the daemon's start, while 5,000 targets
# with a 30 s interval are spread across it (6 ms apart) as HAProxy spreads them.
FIRST_CHECK_GAP_SECONDS: Final = 0.01
# Each later check is due up to this share of the interval early, drawn at random per
# check. HAProxy's spread-checks (a percentage either way; 2-5 advised) does the same; early
# only, so the interval stays an upper bound and "unhealthy within interval x threshold"
# holds. 5% costs 2.5% more checks on average; two targets checked in step drift apart as a
# random walk, some 6% of the interval (one standard deviation) after ten intervals.
INTERVAL_JITTER: Final = 0.05

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
        clock: monotonic seconds, the same clock the runtime's ``now`` uses (trio's: probes
            sleep until times read from it).
        rand: draws the checks' jitter (seeded by tests for reproducible schedules).
    """

    def __init__(
        self,
        runtime: Runtime,
        log: EventLog,
        metrics: Metrics,
        *,
        clock: Clock = trio.current_time,
        rand: random.Random | None = None,
    ) -> None:
        self._runtime = runtime
        self._log = log
        self._clock = clock
        self._rand = rand or random.Random()
        self._probes: dict[ProbeKey, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._exhaustion = Throttle()  # one "out of descriptors" line a minute
        # Per group, the interval its probes wait by and an event set when a generation
        # changes it: its waiting probes re-read it (the others sleep on).
        self._intervals: dict[str, int] = {}
        self._retimed: dict[str, trio.Event] = {}
        # The configuration the probe set was last fully synchronised with.
        self._synced_config = runtime.current.config
        self._generation_installed()
        runtime.on_install.append(self._generation_installed)
        self.transitions = metrics.counter(
            "wharf_balancer_target_health_transitions",
            "Target health state changes, by the state entered and AWS's reason code.",
            ["target_group", "state", "reason"],
        )
        # The (state, reason) label pairs counted per group, for forget_groups.
        self._counted: dict[str, set[tuple[str, str]]] = {}
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
            self._counted.setdefault(event.target_group, set()).add((event.state.value, reason))
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
        if any(event.state is TargetState.DRAINING for event in events):
            self._wake.set()  # a new deadline, and maybe an idle target to finish early
        self._follow(dict.fromkeys((e.target_group, e.target_id) for e in events))

    def counted_groups(self) -> set[str]:
        """The groups with transition series."""
        return set(self._counted)

    def forget_groups(self, keep: Container[str]) -> None:
        """Drop the transition series of the groups not in ``keep`` (those the runtime
        forgot: gone from the configuration, their last draining target left): kept, every
        group name a reload ever removed stayed in ``/metrics`` until the balancer stopped."""
        for group in [group for group in self._counted if group not in keep]:
            for state, reason in self._counted.pop(group):
                self.transitions.remove(group, state, reason)
        groups = self._runtime.current.groups
        for group in [group for group in self._intervals if group not in groups]:
            del self._intervals[group]
            retimed = self._retimed.pop(group, None)
            if retimed is not None:
                retimed.set()  # its probes read the group again: gone, they end

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
        return set(self._all_wanted())

    def sync(self) -> None:
        """Start probes for every target that needs checking; stop those that no longer do
        (a full pass over every target: at the start and for a new configuration)."""
        if self._nursery is None:
            return
        wanted = self._all_wanted()
        for key in list(self._probes):
            if key not in wanted:
                self._probes.pop(key).cancel()
        self._start([key for key in wanted if key not in self._probes])

    def probing(self) -> set[ProbeKey]:
        """The (group, target) pairs with a probe task (for tests and debugging)."""
        return set(self._probes)

    def _all_wanted(self) -> dict[ProbeKey, None]:
        """Every pair to probe, in configuration order (the order first checks go in)."""
        wanted: dict[ProbeKey, None] = {}
        for name, group in self._runtime.current.groups.items():
            if group.config.health_check.enabled:
                for target_id in group.by_id:
                    if self._is_wanted(name, target_id):
                        wanted[(name, target_id)] = None
        return wanted

    def _is_wanted(self, group_name: str, target_id: str) -> bool:
        """Whether one target should be probed: checks on, in the current generation, and in
        a checked state."""
        group = self._runtime.current.groups.get(group_name)
        if group is None or not group.config.health_check.enabled or target_id not in group.by_id:
            return False
        record = group.live.health.get(target_id)
        return record is not None and record.state in CHECKED_STATES

    def _follow(self, keys: Iterable[ProbeKey]) -> None:
        """Start or stop the probes of the targets that health events named (only those)."""
        if self._nursery is None:
            return  # run() synchronises the whole set when it starts
        starting = []
        for key in keys:
            if self._is_wanted(*key):
                if key not in self._probes:
                    starting.append(key)
            elif key in self._probes:
                self._probes.pop(key).cancel()
        self._start(starting)

    def _start(self, keys: Sequence[ProbeKey]) -> None:
        """Start probes whose first checks go one after another, at most
        ``FIRST_CHECK_GAP_SECONDS`` apart and all within their interval."""
        nursery = self._nursery
        if nursery is None or not keys:
            return
        now = self._clock()
        groups = self._runtime.current.groups
        for position, key in enumerate(keys):
            interval = groups[key[0]].config.health_check.interval_seconds
            gap = min(interval / len(keys), FIRST_CHECK_GAP_SECONDS)
            scope = trio.CancelScope()
            self._probes[key] = scope
            nursery.start_soon(self._probe, key, scope, now + position * gap)

    def _generation_installed(self) -> None:
        """Wake the probes of groups whose interval changed; a new configuration (not a
        targets-API change, which shares its predecessor's) re-synchronises every probe."""
        current = self._runtime.current
        for name, group in current.groups.items():
            interval = group.config.health_check.interval_seconds
            if self._intervals.get(name) != interval:
                self._intervals[name] = interval
                retimed = self._retimed.pop(name, None)
                if retimed is not None:
                    retimed.set()
        if current.config is not self._synced_config:
            self._synced_config = current.config
            self.sync()

    def _interval_changed(self, group_name: str) -> trio.Event:
        """Set when a generation changes the group's interval."""
        event = self._retimed.get(group_name)
        if event is None:
            event = self._retimed[group_name] = trio.Event()
        return event

    async def _probe(self, key: ProbeKey, scope: trio.CancelScope, first_at: float) -> None:
        group_name, target_id = key
        with scope:
            await trio.sleep_until(first_at)
            last_started: float | None = None
            share = 1.0  # of the interval until the next check (jitter: a little less)
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
                    due = last_started + check.interval_seconds * share
                    if due > now:
                        with trio.move_on_at(due):
                            await self._interval_changed(group_name).wait()
                        continue  # due now, or a new interval: read it again
                last_started = now  # from now, however late: a stalled loop fires no burst
                share = 1.0 - self._rand.random() * INTERVAL_JITTER
                try:
                    policy = target_policy(self._runtime.current.config)
                    result = await run_check(endpoint.host, endpoint.port, check, tls_policy=policy)
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
            draining = self._finish_idle(now)
            wake_at = math.inf
            for live in self._runtime.live.values():
                deadline = live.health.next_deadline()
                if deadline is not None:
                    wake_at = min(wake_at, deadline)
            if draining:
                wake_at = min(wake_at, now + IDLE_POLL_SECONDS)
            with trio.move_on_at(wake_at):
                await self._wake.wait()

    def _finish_idle(self, now: float) -> bool:
        """Draining targets with nothing in flight leave now (ALB's early completion).

        Returns:
            Whether targets are still draining (busy ones).
        """
        draining = False
        for live in list(self._runtime.live.values()):
            for target_id in live.health.draining_targets():
                if live.in_flight(target_id) == 0:
                    self._runtime.notify(live.health.target_idle(target_id, now))
                else:
                    draining = True
        return draining
