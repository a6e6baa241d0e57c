"""Target health: the pure state table (AWS's states and reason codes) and matcher parsing.

Theory of operation. Each registered target has one :class:`TargetHealth` record. Inputs are
facts the shell observed (a check passed, a check timed out, an operator deregistered the
target, the target's last request finished, time passed); :func:`step` maps
``(record, input, now)`` to the next record (or ``None`` when the target leaves the table)
plus the events that describe what changed. The table is data (``_TRANSITIONS``), so every
``(state, input)`` pair has a defined outcome and the tests sweep all of them.

Rules, from the ALB user guide (target-group-health-checks.md, load-balancer-target-groups.md):

1. A newly registered target is ``initial``; **one** passing check makes it healthy. After
   that, ``healthy_threshold`` consecutive passes or ``unhealthy_threshold`` consecutive
   failures are needed to change state.
2. A deregistered target is ``draining`` for ``deregistration_delay`` seconds and gets no new
   requests; it leaves early once it has no requests in flight. ``unused`` targets too:
   requests routed before their group stopped serving rules may still be running.
3. Draining targets ignore check results; ``unused`` targets (their group serves no listener
   rule) are not checked; with checks disabled a target is ``unavailable`` and takes traffic.

Nothing here reads a clock, sleeps or logs: times are arguments, the shell runs the checks,
sleeps until :meth:`HealthTable.next_deadline` and logs and counts the returned events.
The trio checker shell lives in its own module.

Cost: the table indexes its draining targets by deadline, so the shell's clock
(:meth:`~HealthTable.next_deadline`, :meth:`~HealthTable.advance`,
:meth:`~HealthTable.draining_targets`) costs O(log n) per deadline or O(draining targets),
never a walk of every record: a balancer with thousands of targets wakes it at every
deregistration and every second while targets drain.
"""

from __future__ import annotations

import enum
import heapq
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.config import TargetGroup

# ALB accepts HTTP matcher codes 200-499 (target-group-health-checks.md).
MATCHER_MIN_CODE = 200
MATCHER_MAX_CODE = 499
MAX_MATCHER_CHARS = 256  # ample for any sensible list; bounds parsing work
_CODE = re.compile(r"[0-9]+")


class TargetState(enum.StrEnum):
    """AWS's target health states (DescribeTargetHealth ``State``)."""

    INITIAL = "initial"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNUSED = "unused"
    DRAINING = "draining"
    UNAVAILABLE = "unavailable"


class Reason(enum.StrEnum):
    """AWS's reason codes (DescribeTargetHealth ``Reason``)."""

    REGISTRATION_IN_PROGRESS = "Elb.RegistrationInProgress"
    INITIAL_HEALTH_CHECKING = "Elb.InitialHealthChecking"
    INTERNAL_ERROR = "Elb.InternalError"
    RESPONSE_CODE_MISMATCH = "Target.ResponseCodeMismatch"
    TIMEOUT = "Target.Timeout"
    FAILED_HEALTH_CHECKS = "Target.FailedHealthChecks"
    DEREGISTRATION_IN_PROGRESS = "Target.DeregistrationInProgress"
    HEALTH_CHECK_DISABLED = "Target.HealthCheckDisabled"
    NOT_REGISTERED = "Target.NotRegistered"
    NOT_IN_USE = "Target.NotInUse"
    INVALID_STATE = "Target.InvalidState"
    IP_UNUSABLE = "Target.IpUnusable"


class Input(enum.Enum):
    """What the shell observed about one target."""

    CHECK_PASSED = "check_passed"
    CHECK_TIMED_OUT = "check_timed_out"  # no response within timeout_seconds
    CHECK_CODE_MISMATCH = "check_code_mismatch"  # a response outside the matcher
    CHECK_FAILED = "check_failed"  # refused, reset, TLS or protocol error
    CHECK_INTERNAL_ERROR = "check_internal_error"  # the check itself failed (a bug of ours)
    REGISTERED = "registered"  # registered again (e.g. while draining)
    DEREGISTERED = "deregistered"
    IDLE = "idle"  # no requests in flight and no open connections
    TICK = "tick"  # time passed (draining deadlines)
    NOT_IN_USE = "not_in_use"  # no listener rule forwards to the group any more
    IN_USE = "in_use"


_FAILURE_REASONS = {
    Input.CHECK_TIMED_OUT: Reason.TIMEOUT,
    Input.CHECK_CODE_MISMATCH: Reason.RESPONSE_CODE_MISMATCH,
    Input.CHECK_FAILED: Reason.FAILED_HEALTH_CHECKS,
    Input.CHECK_INTERNAL_ERROR: Reason.INTERNAL_ERROR,
}


# ---------------------------------------------------------------------------------------------
# Matcher: which HTTP status codes count as a passing check.


@dataclass(frozen=True, slots=True)
class Matcher:
    """A parsed ``matcher`` setting: inclusive ranges of passing status codes."""

    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and any(lo <= status <= hi for lo, hi in self.ranges)


def parse_matcher(text: str) -> Matcher:
    """Parse AWS's matcher syntax: ``"200"``, ``"200,202"``, ``"200-299"`` or a mix.

    Raises:
        ValueError: empty parts, non-numbers, reversed ranges or codes outside 200-499.
    """
    if len(text) > MAX_MATCHER_CHARS:
        raise ValueError(f"health_check matcher is longer than {MAX_MATCHER_CHARS} characters")
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        lo_text, dash, hi_text = part.strip().partition("-")
        # ASCII digits only: str.isdigit() and int() take other scripts' digits ("２００")
        # too, which AWS refuses.
        if not _CODE.fullmatch(lo_text) or (dash and not _CODE.fullmatch(hi_text)):
            raise ValueError(
                f"health_check matcher {text!r}: {part.strip()!r} is not a code or a range; "
                'use HTTP codes in ASCII digits: "200", "200,202" or "200-299"'
            )
        lo, hi = int(lo_text), int(hi_text) if dash else int(lo_text)
        if lo > hi:
            raise ValueError(f"health_check matcher {text!r}: range {lo}-{hi} is reversed")
        if lo < MATCHER_MIN_CODE or hi > MATCHER_MAX_CODE:
            raise ValueError(
                f"health_check matcher {text!r}: codes must be within "
                f"{MATCHER_MIN_CODE}-{MATCHER_MAX_CODE}"
            )
        ranges.append((lo, hi))
    return Matcher(tuple(ranges))


def classify_response(status: int, matcher: Matcher) -> Input:
    """The input for a health-check response with this status code."""
    return Input.CHECK_PASSED if status in matcher else Input.CHECK_CODE_MISMATCH


# ---------------------------------------------------------------------------------------------
# Records, policy and events.


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """What the table needs to know about a target group: its settings, and whether any
    listener rule forwards to it (``in_use``)."""

    healthy_threshold: int = 5
    unhealthy_threshold: int = 2
    deregistration_delay: float = 300.0
    checks_enabled: bool = True
    in_use: bool = True

    @classmethod
    def from_target_group(cls, group: TargetGroup, *, in_use: bool = True) -> HealthPolicy:
        """The policy of one configured target group."""
        check = group.health_check
        return cls(
            healthy_threshold=check.healthy_threshold,
            unhealthy_threshold=check.unhealthy_threshold,
            deregistration_delay=float(group.deregistration_delay_seconds),
            checks_enabled=check.enabled,
            in_use=in_use,
        )

    def starting_state(self) -> tuple[TargetState, Reason]:
        """Where a newly registered (or restarted) target begins."""
        if not self.in_use:
            return TargetState.UNUSED, Reason.NOT_IN_USE
        if self.checks_enabled:
            return TargetState.INITIAL, Reason.INITIAL_HEALTH_CHECKING
        return TargetState.UNAVAILABLE, Reason.HEALTH_CHECK_DISABLED


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """One target's health record. ``since`` is when it entered ``state``."""

    target_id: str
    state: TargetState
    reason: Reason | None
    since: float
    passes: int = 0  # consecutive passing checks
    failures: int = 0  # consecutive failing checks
    drain_deadline: float | None = None
    # The status of the last check that failed on it (ALB's "failed with these codes").
    failed_status: int | None = None
    # When it was registered (one registration, one time; registering a draining target again
    # is a new one): slow start tells targets registered together from later ones
    # (balancer.selection.slow_start_entries).
    registered_at: float | None = None
    # Whether it was healthy before its present state since it was registered (or started
    # over): becoming healthy then is a recovery, and slow start treats a recovering target
    # as ALB does, not as a new registration.
    was_healthy: bool = False


@dataclass(frozen=True, slots=True)
class TargetStateChanged:
    """A target changed state (``previous`` is None for a new registration)."""

    target_id: str
    at: float
    previous: TargetState | None
    state: TargetState
    reason: Reason | None
    # The group whose table emitted the event (set by a named HealthTable), so observers of
    # several groups' events at once can tell them apart; keyword-only to keep positions.
    target_group: str = field(default="", kw_only=True)


@dataclass(frozen=True, slots=True)
class TargetRegistered(TargetStateChanged):
    """A target joined the table."""


@dataclass(frozen=True, slots=True)
class TargetBecameInitial(TargetStateChanged):
    """A target's checks (re)started from scratch: back in use, re-registered, re-enabled."""


@dataclass(frozen=True, slots=True)
class TargetBecameHealthy(TargetStateChanged):
    """A target passed enough checks to receive requests."""


@dataclass(frozen=True, slots=True)
class TargetBecameUnhealthy(TargetStateChanged):
    """A target failed enough checks to stop receiving requests (unless fail-open)."""


@dataclass(frozen=True, slots=True)
class TargetBecameUnused(TargetStateChanged):
    """A target's group no longer serves any listener rule."""


@dataclass(frozen=True, slots=True)
class TargetBecameUnavailable(TargetStateChanged):
    """Health checks were disabled; the target takes requests unchecked."""


@dataclass(frozen=True, slots=True)
class TargetStartedDraining(TargetStateChanged):
    """A target was deregistered and gets no new requests until it leaves."""


@dataclass(frozen=True, slots=True)
class TargetDeregistered(TargetStateChanged):
    """A target left the table; ``early`` when it went idle before the delay ended."""

    early: bool = False


_ENTERED: dict[TargetState, type[TargetStateChanged]] = {
    TargetState.INITIAL: TargetBecameInitial,
    TargetState.HEALTHY: TargetBecameHealthy,
    TargetState.UNHEALTHY: TargetBecameUnhealthy,
    TargetState.UNUSED: TargetBecameUnused,
    TargetState.UNAVAILABLE: TargetBecameUnavailable,
    TargetState.DRAINING: TargetStartedDraining,
}

Step = tuple[TargetHealth | None, list[TargetStateChanged]]


def _move(
    record: TargetHealth,
    state: TargetState,
    reason: Reason | None,
    now: float,
    *,
    drain_deadline: float | None = None,
) -> Step:
    event = _ENTERED[state](record.target_id, now, record.state, state, reason)
    new = TargetHealth(
        record.target_id,
        state,
        reason,
        now,
        drain_deadline=drain_deadline,
        registered_at=record.registered_at,
        was_healthy=record.was_healthy or record.state is TargetState.HEALTHY,
    )
    return new, [event]


def _leave(record: TargetHealth, now: float, *, early: bool) -> Step:
    event = TargetDeregistered(
        record.target_id, now, record.state, TargetState.UNUSED, Reason.NOT_REGISTERED, early
    )
    return None, [event]


def _stay(record: TargetHealth, input_: Input, now: float, policy: HealthPolicy) -> Step:
    return record, []


def _selection_view(record: TargetHealth) -> tuple[TargetState, float, float | None, bool]:
    """What target selection reads of a record (balancer.selection.Candidate.from_health)."""
    return record.state, record.since, record.registered_at, record.was_healthy


def _fresh(record: TargetHealth, input_: Input, now: float, policy: HealthPolicy) -> Step:
    """Start over as a new target would: initial, unavailable (no checks) or unused. Its
    first healthy state then is no recovery: a group back in use, or with its checks turned
    on again, has every target start over together, as at the start."""
    state, reason = policy.starting_state()
    if state is record.state:
        return record, []
    new, events = _move(record, state, reason, now)
    return (None if new is None else replace(new, was_healthy=False)), events


def _register_again(record: TargetHealth, input_: Input, now: float, policy: HealthPolicy) -> Step:
    """A draining target registered again starts over, and as a new registration: slow start
    tells targets registered together from later ones by ``registered_at``, and ALB ramps a
    target registered again ("If you register the same target again, it enters slow start
    mode when it is considered healthy by the target group": edit-target-group-attributes.md,
    Slow start mode), whether it had left already (a new record) or still drained (this)."""
    new, events = _fresh(record, input_, now, policy)
    return (None if new is None else replace(new, registered_at=now)), events


def _passed(record: TargetHealth, input_: Input, now: float, policy: HealthPolicy) -> Step:
    if record.state is TargetState.INITIAL:  # rule 1: one pass is enough for a new target
        return _move(record, TargetState.HEALTHY, None, now)
    passes = record.passes + 1
    if record.state is TargetState.UNHEALTHY and passes >= policy.healthy_threshold:
        return _move(record, TargetState.HEALTHY, None, now)
    return replace(record, passes=passes, failures=0), []


def _failed(record: TargetHealth, input_: Input, now: float, policy: HealthPolicy) -> Step:
    reason = _FAILURE_REASONS[input_]
    failures = record.failures + 1
    if record.state is TargetState.UNHEALTHY:  # already out: keep the latest cause
        return replace(record, reason=reason, passes=0, failures=failures), []
    if failures >= policy.unhealthy_threshold:
        return _move(record, TargetState.UNHEALTHY, reason, now)
    return replace(record, passes=0, failures=failures), []


def _deregister(record: TargetHealth, input_: Input, now: float, policy: HealthPolicy) -> Step:
    if policy.deregistration_delay <= 0:
        return _leave(record, now, early=False)
    return _move(
        record,
        TargetState.DRAINING,
        Reason.DEREGISTRATION_IN_PROGRESS,
        now,
        drain_deadline=now + policy.deregistration_delay,
    )


def _drain_idle(record: TargetHealth, input_: Input, now: float, policy: HealthPolicy) -> Step:
    return _leave(record, now, early=True)  # rule 2: nothing in flight, finish early


def _drain_tick(record: TargetHealth, input_: Input, now: float, policy: HealthPolicy) -> Step:
    deadline = record.drain_deadline
    if deadline is not None and now < deadline:
        return record, []
    return _leave(record, now, early=False)


def _unuse(record: TargetHealth, input_: Input, now: float, policy: HealthPolicy) -> Step:
    return _move(record, TargetState.UNUSED, Reason.NOT_IN_USE, now)


Handler = Callable[[TargetHealth, Input, float, HealthPolicy], Step]

_CHECKS = (
    Input.CHECK_PASSED,
    Input.CHECK_TIMED_OUT,
    Input.CHECK_CODE_MISMATCH,
    Input.CHECK_FAILED,
    Input.CHECK_INTERNAL_ERROR,
)
_IN_SERVICE: dict[Input, Handler] = {
    Input.CHECK_PASSED: _passed,
    Input.CHECK_TIMED_OUT: _failed,
    Input.CHECK_CODE_MISMATCH: _failed,
    Input.CHECK_FAILED: _failed,
    Input.CHECK_INTERNAL_ERROR: _failed,
    Input.REGISTERED: _stay,
    Input.DEREGISTERED: _deregister,
    Input.IDLE: _stay,
    Input.TICK: _stay,
    Input.NOT_IN_USE: _unuse,
    Input.IN_USE: _stay,
}
# The transition table: every (state, input) pair has exactly one handler.
_TRANSITIONS: dict[TargetState, dict[Input, Handler]] = {
    TargetState.INITIAL: _IN_SERVICE,
    TargetState.HEALTHY: _IN_SERVICE,
    TargetState.UNHEALTHY: _IN_SERVICE,
    TargetState.UNAVAILABLE: {**_IN_SERVICE, **dict.fromkeys(_CHECKS, _stay)},
    TargetState.UNUSED: {
        **dict.fromkeys(Input, _stay),
        # Requests routed before the reload that made the group unused may still be in
        # flight: the target drains like any other, and leaves early once idle.
        Input.DEREGISTERED: _deregister,
        Input.IN_USE: _fresh,
    },
    TargetState.DRAINING: {
        **dict.fromkeys(Input, _stay),  # rule 3: checks are ignored while draining
        Input.REGISTERED: _register_again,
        Input.IDLE: _drain_idle,
        Input.TICK: _drain_tick,
    },
}


def step(record: TargetHealth, input_: Input, now: float, policy: HealthPolicy) -> Step:
    """Apply one input to one record.

    Returns:
        The next record (``None`` once the target has left) and the events, in order.
    """
    return _TRANSITIONS[record.state][input_](record, input_, now, policy)


# ---------------------------------------------------------------------------------------------
# The table of one target group.


class HealthTable:
    """Health records of one target group's targets, keyed by target id."""

    def __init__(self, policy: HealthPolicy, *, name: str = "") -> None:
        self.policy = policy
        self.name = name  # the target group's name, stamped on every event
        self._records: dict[str, TargetHealth] = {}
        # Targets that finished draining early, shown as draining until their deadline as
        # ALB shows them (load-balancer-target-groups.md); nothing routes to them.
        self._departed: dict[str, TargetHealth] = {}
        # The drain deadline of every record that has one (draining targets), and the same
        # deadlines as a heap for the earliest; heap entries that no longer match the dict
        # (the target left or came back) are dropped when they reach the top.
        self._deadlines: dict[str, float] = {}
        self._deadline_heap: list[tuple[float, str]] = []
        # Bumped on every change of what target selection reads of a record (which targets
        # there are, their state, when they became healthy or registered), so readers can
        # cache what they derive from the table (the runtime's per-group candidate list) and
        # notice when it is stale. A passing check of a healthy target changes only its
        # counters: with thousands of targets, bumping then would rebuild the candidate
        # list hundreds of times a second for nothing.
        self.version = 0

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[TargetHealth]:
        return iter(list(self._records.values()))

    def get(self, target_id: str) -> TargetHealth | None:
        """The record of one target, or None if it is not registered."""
        return self._records.get(target_id)

    def register(self, target_id: str, now: float) -> list[TargetStateChanged]:
        """Add a target (a no-op for a registered one, except that draining ones come back)."""
        record = self._records.get(target_id)
        if record is not None:
            return self.apply(target_id, Input.REGISTERED, now)
        self._departed.pop(target_id, None)
        state, reason = self.policy.starting_state()
        self._store(TargetHealth(target_id, state, reason, now, registered_at=now))
        self.version += 1
        return self._tag([TargetRegistered(target_id, now, None, state, reason)])

    def deregister(self, target_id: str, now: float, *, idle: bool) -> list[TargetStateChanged]:
        """Start draining a target; ``idle`` (nothing in flight) lets it leave at once."""
        events = self.apply(target_id, Input.DEREGISTERED, now)
        if idle and target_id in self._records:
            events += self.apply(target_id, Input.IDLE, now)
        return events

    def record_check(
        self, target_id: str, result: Input, now: float, *, status: int | None = None
    ) -> list[TargetStateChanged]:
        """Apply one health-check outcome (one of the ``CHECK_*`` inputs); ``status`` is the
        HTTP status a ``CHECK_CODE_MISMATCH`` got."""
        if result not in _CHECKS:
            raise ValueError(f"{result} is not a health-check outcome")
        events = self.apply(target_id, result, now)
        record = self._records.get(target_id)
        if result is Input.CHECK_CODE_MISMATCH and record is not None:
            self._store(replace(record, failed_status=status))
        return events

    def target_idle(self, target_id: str, now: float) -> list[TargetStateChanged]:
        """The target's last request finished: a draining target leaves early."""
        return self.apply(target_id, Input.IDLE, now)

    def apply(self, target_id: str, input_: Input, now: float) -> list[TargetStateChanged]:
        """Apply any input to one target; unknown targets are ignored (no events)."""
        record = self._records.get(target_id)
        if record is None:
            return []
        new, events = step(record, input_, now, self.policy)
        if new is None or _selection_view(new) != _selection_view(record):
            self.version += 1
        if new is None:
            del self._records[target_id]
            self._deadlines.pop(target_id, None)
            deadline = record.drain_deadline
            if deadline is not None and now < deadline:  # left early
                self._departed[target_id] = record
        else:
            self._store(new)
        return self._tag(events)

    def _store(self, record: TargetHealth) -> None:
        """Keep a record, and its drain deadline in the index."""
        target_id = record.target_id
        self._records[target_id] = record
        deadline = record.drain_deadline
        if deadline is None:
            self._deadlines.pop(target_id, None)
        elif self._deadlines.get(target_id) != deadline:
            self._deadlines[target_id] = deadline
            heapq.heappush(self._deadline_heap, (deadline, target_id))
            if len(self._deadline_heap) > 2 * len(self._deadlines) + 64:
                # Targets re-registered while draining left stale entries: start afresh.
                self._reindex()

    def _reindex(self) -> None:
        self._deadline_heap = [(deadline, key) for key, deadline in self._deadlines.items()]
        heapq.heapify(self._deadline_heap)

    def _earliest(self) -> tuple[float, str] | None:
        """The heap's earliest entry that is still a record's deadline."""
        heap = self._deadline_heap
        while heap:
            deadline, target_id = heap[0]
            if self._deadlines.get(target_id) == deadline:
                return deadline, target_id
            heapq.heappop(heap)
        return None

    def _tag(self, events: list[TargetStateChanged]) -> list[TargetStateChanged]:
        if not self.name:
            return events
        return [replace(event, target_group=self.name) for event in events]

    def advance(self, now: float) -> list[TargetStateChanged]:
        """Let time pass: draining targets whose delay has ended leave (earliest first)."""
        events: list[TargetStateChanged] = []
        while (earliest := self._earliest()) is not None and earliest[0] <= now:
            heapq.heappop(self._deadline_heap)
            events += self.apply(earliest[1], Input.TICK, now)
        return events

    def shift_clock(self, delta: float) -> None:
        """Move every time in the table by ``delta``: the table was filled before the
        clock it is read with started (the app is built before trio runs, at time 0)."""

        def shifted(record: TargetHealth) -> TargetHealth:
            deadline = record.drain_deadline
            registered = record.registered_at
            return replace(
                record,
                since=record.since + delta,
                drain_deadline=None if deadline is None else deadline + delta,
                registered_at=None if registered is None else registered + delta,
            )

        self._records = {key: shifted(r) for key, r in self._records.items()}
        self._departed = {key: shifted(r) for key, r in self._departed.items()}
        self._deadlines = {key: deadline + delta for key, deadline in self._deadlines.items()}
        self._reindex()
        self.version += 1

    def departed(self, now: float) -> list[TargetHealth]:
        """Targets that left early, as the ``draining`` records they were, until the
        deadline their deregistration delay set; for display only."""
        for target_id, record in list(self._departed.items()):
            if record.drain_deadline is None or now >= record.drain_deadline:
                del self._departed[target_id]
        return list(self._departed.values())

    def next_deadline(self) -> float | None:
        """When :meth:`advance` next has work to do, or None (O(log n), amortised)."""
        earliest = self._earliest()
        return None if earliest is None else earliest[0]

    def draining_targets(self) -> list[str]:
        """The ids of the draining targets (those with a drain deadline), O(draining)."""
        return list(self._deadlines)

    def sync(self, target_ids: Iterable[str], now: float) -> list[TargetStateChanged]:
        """Make the registered set equal ``target_ids`` (config reload); survivors keep state.

        Targets that disappear start draining; the shell reports idleness afterwards.
        """
        wanted = dict.fromkeys(target_ids)  # ordered and de-duplicated
        events: list[TargetStateChanged] = []
        for record in self:
            if record.target_id not in wanted and record.state is not TargetState.DRAINING:
                events += self.apply(record.target_id, Input.DEREGISTERED, now)
        for target_id in wanted:
            # A no-op for registered targets, except that draining ones come back.
            events += self.register(target_id, now)
        return events

    def set_in_use(self, in_use: bool, now: float) -> list[TargetStateChanged]:
        """Whether any listener rule forwards to this group; unused targets are not checked."""
        return self.set_policy(replace(self.policy, in_use=in_use), now)

    def set_policy(self, policy: HealthPolicy, now: float) -> list[TargetStateChanged]:
        """Take new settings (reload); targets keep their state.

        New thresholds count from the next check. Turning checks on or off restarts the
        targets in service; a group that starts or stops serving rules moves its targets
        out of or into ``unused``.
        """
        old, self.policy = self.policy, policy
        events: list[TargetStateChanged] = []
        if policy.in_use != old.in_use:
            input_ = Input.IN_USE if policy.in_use else Input.NOT_IN_USE
            events += [e for r in self for e in self.apply(r.target_id, input_, now)]
        if policy.checks_enabled != old.checks_enabled:
            for record in self:
                if record.state not in (TargetState.DRAINING, TargetState.UNUSED):
                    new, moved = _fresh(record, Input.IN_USE, now, policy)
                    self._store(new or record)  # _fresh never removes
                    self.version += 1
                    events += self._tag(moved)
        return events

    def statistics(self) -> dict[TargetState, int]:
        """How many targets are in each state (every state present, zeros included)."""
        counts = dict.fromkeys(TargetState, 0)
        for record in self._records.values():
            counts[record.state] += 1
        return counts
