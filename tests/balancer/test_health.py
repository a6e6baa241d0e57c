from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.config import HealthCheck, TargetGroup
from balancer.health import (
    HealthPolicy,
    HealthTable,
    Input,
    Matcher,
    Reason,
    TargetBecameHealthy,
    TargetBecameInitial,
    TargetBecameUnavailable,
    TargetBecameUnhealthy,
    TargetBecameUnused,
    TargetDeregistered,
    TargetHealth,
    TargetRegistered,
    TargetStartedDraining,
    TargetState,
    TargetStateChanged,
    classify_response,
    parse_matcher,
    step,
)

CHECKS = [
    Input.CHECK_PASSED,
    Input.CHECK_TIMED_OUT,
    Input.CHECK_CODE_MISMATCH,
    Input.CHECK_FAILED,
    Input.CHECK_INTERNAL_ERROR,
]
POLICY = HealthPolicy(healthy_threshold=3, unhealthy_threshold=2, deregistration_delay=300)


def table(policy: HealthPolicy = POLICY, *targets: str, now: float = 0.0) -> HealthTable:
    health = HealthTable(policy)
    for target in targets or ("a",):
        health.register(target, now)
    return health


def state(health: HealthTable, target: str = "a") -> TargetState | None:
    record = health.get(target)
    return None if record is None else record.state


# Matchers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("200", [200], [201, 199, 404]),
        ("200,202", [200, 202], [201, 203]),
        ("200-299", [200, 250, 299], [199, 300]),
        ("200, 301-302 ,404", [200, 301, 302, 404], [300, 303, 403]),
        ("499", [499], [498]),
    ],
)
def test_matcher_codes_lists_and_ranges(text, inside, outside):
    matcher = parse_matcher(text)
    assert all(code in matcher for code in inside)
    assert not any(code in matcher for code in outside)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not a code"),
        ("ok", "is not a code"),
        ("200,", "is not a code"),
        ("200-", "is not a code"),
        ("-200", "is not a code"),
        ("299-200", "reversed"),
        ("199", "within 200-499"),
        ("200-500", "within 200-499"),
        ("2" * 300, "longer than"),
        ("２００", "is not a code"),  # fullwidth digits: AWS takes ASCII codes only
        ("200-２９９", "is not a code"),
        ("²00", "is not a code"),  # a superscript: int() refused it with its own message
        ("٢٠٠", "is not a code"),
    ],
)
def test_bad_matchers_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_matcher(text)


def test_matcher_ignores_non_integers():
    assert "200" not in parse_matcher("200")


def test_classify_response():
    matcher = parse_matcher("200-299")
    assert classify_response(204, matcher) is Input.CHECK_PASSED
    assert classify_response(302, matcher) is Input.CHECK_CODE_MISMATCH


@given(st.lists(st.tuples(st.integers(200, 499), st.integers(0, 50)), min_size=1, max_size=8))
def test_matcher_membership_equals_the_listed_codes(ranges):
    parts = [(lo, min(lo + width, 499)) for lo, width in ranges]
    text = ",".join(f"{lo}-{hi}" if hi != lo else str(lo) for lo, hi in parts)
    expected = {code for lo, hi in parts for code in range(lo, hi + 1)}
    matcher = parse_matcher(text)
    assert {code for code in range(100, 600) if code in matcher} == expected
    assert matcher == Matcher(tuple(parts))


# Policy ----------------------------------------------------------------------------------------


def test_policy_from_target_group():
    group = TargetGroup(
        name="web",
        deregistration_delay_seconds=12,
        health_check=HealthCheck(healthy_threshold=4, unhealthy_threshold=3, enabled=False),
    )
    assert HealthPolicy.from_target_group(group) == HealthPolicy(4, 3, 12.0, False)
    assert not HealthPolicy.from_target_group(group, in_use=False).in_use
    assert HealthPolicy() == HealthPolicy.from_target_group(TargetGroup(name="x"))  # AWS defaults


# Checks ----------------------------------------------------------------------------------------


def test_a_new_target_is_initial_and_one_passing_check_makes_it_healthy():
    health = HealthTable(POLICY)
    assert health.register("a", 1.0) == [
        TargetRegistered("a", 1.0, None, TargetState.INITIAL, Reason.INITIAL_HEALTH_CHECKING)
    ]
    events = health.record_check("a", Input.CHECK_PASSED, 2.0)
    assert events == [TargetBecameHealthy("a", 2.0, TargetState.INITIAL, TargetState.HEALTHY, None)]
    # It keeps the time it was registered (slow start tells registrations apart by it).
    assert health.get("a") == TargetHealth("a", TargetState.HEALTHY, None, 2.0, registered_at=1.0)


def test_registering_twice_changes_nothing():
    health = table()
    assert health.register("a", 5.0) == []
    assert health.get("a") == TargetHealth(
        "a", TargetState.INITIAL, Reason.INITIAL_HEALTH_CHECKING, 0.0, registered_at=0.0
    )


def test_an_initial_target_becomes_unhealthy_after_the_unhealthy_threshold():
    health = table()
    assert health.record_check("a", Input.CHECK_FAILED, 1.0) == []
    [event] = health.record_check("a", Input.CHECK_FAILED, 2.0)
    assert isinstance(event, TargetBecameUnhealthy)
    assert (event.previous, event.reason) == (TargetState.INITIAL, Reason.FAILED_HEALTH_CHECKS)


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (Input.CHECK_TIMED_OUT, Reason.TIMEOUT),
        (Input.CHECK_CODE_MISMATCH, Reason.RESPONSE_CODE_MISMATCH),
        (Input.CHECK_FAILED, Reason.FAILED_HEALTH_CHECKS),
        (Input.CHECK_INTERNAL_ERROR, Reason.INTERNAL_ERROR),
    ],
)
def test_healthy_target_needs_consecutive_failures_and_reports_why(failure, reason):
    health = table()
    health.record_check("a", Input.CHECK_PASSED, 0.0)
    assert health.record_check("a", failure, 1.0) == []
    assert health.record_check("a", Input.CHECK_PASSED, 2.0) == []  # resets the count
    assert health.record_check("a", failure, 3.0) == []
    [event] = health.record_check("a", failure, 4.0)
    assert event == TargetBecameUnhealthy(
        "a", 4.0, TargetState.HEALTHY, TargetState.UNHEALTHY, reason
    )


def test_unhealthy_target_needs_the_healthy_threshold_and_keeps_the_latest_reason():
    health = table()
    for now in (1.0, 2.0):
        health.record_check("a", Input.CHECK_TIMED_OUT, now)
    assert health.record_check("a", Input.CHECK_CODE_MISMATCH, 3.0) == []
    record = health.get("a")
    assert record is not None
    assert record.reason is Reason.RESPONSE_CODE_MISMATCH
    assert record.since == 2.0  # a new cause is not a new state
    health.record_check("a", Input.CHECK_PASSED, 4.0)
    health.record_check("a", Input.CHECK_FAILED, 5.0)  # interrupts the streak
    assert health.record_check("a", Input.CHECK_PASSED, 6.0) == []
    assert health.record_check("a", Input.CHECK_PASSED, 7.0) == []
    [event] = health.record_check("a", Input.CHECK_PASSED, 8.0)
    assert isinstance(event, TargetBecameHealthy)


def test_record_check_only_takes_check_outcomes():
    with pytest.raises(ValueError, match="not a health-check outcome"):
        table().record_check("a", Input.IDLE, 0.0)


def test_unknown_targets_are_ignored():
    health = table()
    assert health.record_check("zz", Input.CHECK_PASSED, 0.0) == []
    assert health.deregister("zz", 0.0, idle=True) == []


# Draining --------------------------------------------------------------------------------------


def test_deregistered_target_drains_until_the_delay_ends():
    health = table()
    health.record_check("a", Input.CHECK_PASSED, 0.0)
    [event] = health.deregister("a", 10.0, idle=False)
    assert event == TargetStartedDraining(
        "a", 10.0, TargetState.HEALTHY, TargetState.DRAINING, Reason.DEREGISTRATION_IN_PROGRESS
    )
    assert health.next_deadline() == 310.0
    assert health.record_check("a", Input.CHECK_FAILED, 20.0) == []  # checks are ignored
    assert health.record_check("a", Input.CHECK_FAILED, 21.0) == []
    assert health.advance(309.9) == []
    assert state(health) is TargetState.DRAINING
    [gone] = health.advance(310.0)
    assert gone == TargetDeregistered(
        "a", 310.0, TargetState.DRAINING, TargetState.UNUSED, Reason.NOT_REGISTERED, early=False
    )
    assert health.get("a") is None
    assert health.next_deadline() is None


def test_draining_ends_early_when_the_target_goes_idle():
    health = table()
    health.deregister("a", 10.0, idle=False)
    [gone] = health.target_idle("a", 42.0)
    assert isinstance(gone, TargetDeregistered)
    assert gone.early
    assert len(health) == 0


def test_a_target_that_left_early_is_shown_draining_until_its_deadline():
    # ALB: "the status of the target will be displayed as draining until the deregistration
    # delay elapses" -- for display only; the table itself no longer holds it.
    health = table(POLICY, "a", "b")
    health.deregister("a", 10.0, idle=False)
    health.target_idle("a", 42.0)
    assert health.get("a") is None
    [shown] = health.departed(100.0)
    assert (shown.target_id, shown.state, shown.since) == ("a", TargetState.DRAINING, 10.0)
    assert shown.reason is Reason.DEREGISTRATION_IN_PROGRESS
    assert health.departed(309.9) == [shown]
    assert health.departed(310.0) == []  # 10 + the 300 s delay
    # Registered again before its deadline: a new target, not a departed one.
    health.deregister("b", 10.0, idle=True)
    health.register("b", 20.0)
    assert health.departed(21.0) == []
    assert state(health, "b") is TargetState.INITIAL


def test_the_clock_can_be_moved_under_the_table():
    health = table(POLICY, "a", "b", now=0.0)
    health.deregister("b", 5.0, idle=False)
    health.shift_clock(1000.0)
    assert [r.since for r in health] == [1000.0, 1005.0]
    assert health.next_deadline() == 1305.0
    assert health.advance(1304.0) == []
    assert [type(e) for e in health.advance(1305.0)] == [TargetDeregistered]


def test_a_code_mismatch_keeps_the_status_it_got():
    health = table()
    health.record_check("a", Input.CHECK_CODE_MISMATCH, 1.0, status=404)
    health.record_check("a", Input.CHECK_CODE_MISMATCH, 2.0, status=503)
    record = health.get("a")
    assert record is not None
    assert (record.state, record.reason) == (TargetState.UNHEALTHY, Reason.RESPONSE_CODE_MISMATCH)
    assert record.failed_status == 503


def test_an_idle_target_leaves_at_once():
    health = table()
    events = health.deregister("a", 10.0, idle=True)
    assert [type(e) for e in events] == [TargetStartedDraining, TargetDeregistered]
    assert len(health) == 0


def test_no_deregistration_delay_means_no_draining():
    health = table(HealthPolicy(deregistration_delay=0))
    [gone] = health.deregister("a", 10.0, idle=False)
    assert isinstance(gone, TargetDeregistered)
    assert not gone.early


def test_registering_a_draining_target_again_restarts_its_checks():
    health = table()
    health.deregister("a", 1.0, idle=False)
    [event] = health.register("a", 2.0)
    assert event == TargetBecameInitial(
        "a", 2.0, TargetState.DRAINING, TargetState.INITIAL, Reason.INITIAL_HEALTH_CHECKING
    )
    assert health.next_deadline() is None


def test_registering_a_draining_target_again_is_a_new_registration():
    # Slow start tells registrations apart by registered_at; ALB ramps a target registered
    # again, whether it still drained or had left.
    health = table()
    health.deregister("a", 1.0, idle=False)
    health.register("a", 2.0)
    record = health.get("a")
    assert record is not None
    assert record.registered_at == 2.0


# Unused, unavailable, reload ---------------------------------------------------------------------


def test_targets_of_an_unused_group_are_unused_and_unchecked():
    health = HealthTable(HealthPolicy(in_use=False))
    [event] = health.register("a", 0.0)
    assert (event.state, event.reason) == (TargetState.UNUSED, Reason.NOT_IN_USE)
    assert health.record_check("a", Input.CHECK_PASSED, 1.0) == []
    [event] = health.set_in_use(True, 2.0)
    assert isinstance(event, TargetBecameInitial)
    [event] = health.set_in_use(False, 3.0)
    assert isinstance(event, TargetBecameUnused)
    [draining, gone] = health.deregister("a", 4.0, idle=True)  # nothing in flight
    assert isinstance(draining, TargetStartedDraining)
    assert gone == TargetDeregistered(
        "a", 4.0, TargetState.DRAINING, TargetState.UNUSED, Reason.NOT_REGISTERED, early=True
    )


def test_a_deregistered_unused_target_drains_what_it_still_has_in_flight():
    # A reload that stops forwarding to a group leaves the requests it routed there running;
    # deregistering its targets then must not cut them before the deregistration delay.
    health = table()
    health.set_in_use(False, 1.0)
    [event] = health.deregister("a", 2.0, idle=False)
    assert isinstance(event, TargetStartedDraining)
    assert event.previous is TargetState.UNUSED
    assert health.next_deadline() == 302.0
    assert health.advance(301.0) == []
    [gone] = health.advance(302.0)
    assert isinstance(gone, TargetDeregistered)
    assert not gone.early


def test_a_draining_target_registered_again_in_an_unused_group_is_unused():
    # Found by the fake-clock property below: it used to restart checks instead.
    health = table()
    health.deregister("a", 1.0, idle=False)
    health.set_in_use(False, 2.0)
    [event] = health.register("a", 3.0)
    assert (event.previous, event.state) == (TargetState.DRAINING, TargetState.UNUSED)


def test_a_reload_can_bring_a_group_into_use_with_checks_off():
    health = HealthTable(HealthPolicy(in_use=False))
    health.register("a", 0.0)
    [event] = health.set_policy(HealthPolicy(in_use=True, checks_enabled=False), 1.0)
    assert isinstance(event, TargetBecameUnavailable)
    assert event.previous is TargetState.UNUSED


def test_disabled_checks_make_targets_unavailable_but_routable():
    health = table(HealthPolicy(checks_enabled=False))
    assert state(health) is TargetState.UNAVAILABLE
    assert health.get("a").reason is Reason.HEALTH_CHECK_DISABLED  # type: ignore[union-attr]
    assert health.record_check("a", Input.CHECK_FAILED, 1.0) == []
    assert health.record_check("a", Input.CHECK_FAILED, 2.0) == []
    [event] = health.set_policy(HealthPolicy(checks_enabled=True), 3.0)
    assert isinstance(event, TargetBecameInitial)
    [event] = health.set_policy(HealthPolicy(checks_enabled=False), 4.0)
    assert isinstance(event, TargetBecameUnavailable)


def test_new_thresholds_keep_states():
    health = table(POLICY, "a", "b")
    health.record_check("a", Input.CHECK_PASSED, 1.0)
    assert health.set_policy(HealthPolicy(healthy_threshold=9), 2.0) == []
    assert health.policy.healthy_threshold == 9
    assert (state(health, "a"), state(health, "b")) == (TargetState.HEALTHY, TargetState.INITIAL)


def test_sync_keeps_survivors_drains_leavers_and_adds_newcomers():
    health = table(POLICY, "a", "b")
    health.record_check("a", Input.CHECK_PASSED, 1.0)
    events = health.sync(["a", "c", "c"], 2.0)
    assert [(type(e), e.target_id) for e in events] == [
        (TargetStartedDraining, "b"),
        (TargetRegistered, "c"),
    ]
    assert state(health, "a") is TargetState.HEALTHY
    assert health.sync(["a", "b", "c"], 3.0)[0].state is TargetState.INITIAL  # b came back


def test_statistics_count_every_state():
    health = table(POLICY, "a", "b", "c")
    health.record_check("a", Input.CHECK_PASSED, 1.0)
    health.deregister("c", 1.0, idle=False)
    counts = health.statistics()
    assert set(counts) == set(TargetState)
    assert counts[TargetState.HEALTHY] == counts[TargetState.INITIAL] == 1
    assert counts[TargetState.DRAINING] == 1
    assert counts[TargetState.UNHEALTHY] == 0
    assert [r.target_id for r in health] == ["a", "b", "c"]


# Properties ------------------------------------------------------------------------------------


@st.composite
def records(draw: st.DrawFn) -> TargetHealth:
    """Any record the table can hold: only draining ones carry a deadline."""
    state = draw(st.sampled_from(TargetState))
    since = draw(st.floats(0, 1000))
    deadline = since + draw(st.floats(0, 1000)) if state is TargetState.DRAINING else None
    return TargetHealth(
        "t",
        state,
        draw(st.none() | st.sampled_from(Reason)),
        since,
        passes=draw(st.integers(0, 10)),
        failures=draw(st.integers(0, 10)),
        drain_deadline=deadline,
    )


policies = st.builds(
    HealthPolicy,
    healthy_threshold=st.integers(2, 10),
    unhealthy_threshold=st.integers(2, 10),
    deregistration_delay=st.sampled_from([0.0, 1.0, 300.0]),
    checks_enabled=st.booleans(),
    in_use=st.booleans(),
)


@given(records(), st.sampled_from(Input), st.floats(0, 3000), policies)
def test_every_state_and_input_leads_to_a_valid_state(record, input_, now, policy):
    new, events = step(record, input_, now, policy)
    assert all(e.at == now for e in events)
    if new is None:  # left the table: the last event says so
        assert isinstance(events[-1], TargetDeregistered)
        return
    assert new.state in TargetState
    assert new.target_id == record.target_id
    if new.state is record.state:
        assert events == []
    else:
        [event] = events
        assert (event.previous, event.state, event.reason) == (record.state, new.state, new.reason)
        assert new.since == now
    assert (new.drain_deadline is not None) == (new.state is TargetState.DRAINING)
    if record.state is TargetState.DRAINING and input_ in CHECKS:
        assert new == record  # draining targets ignore checks


operations = st.lists(
    st.tuples(
        st.sampled_from(["check", "deregister", "register", "idle", "advance", "use"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(CHECKS),
        st.floats(0, 400),  # time step
        st.booleans(),
    ),
    max_size=40,
)


@given(policies, operations)
def test_a_table_driven_by_a_fake_clock_stays_consistent(policy, ops):
    health = HealthTable(policy)
    now = 0.0
    for op, target, result, delay, flag in ops:
        now += delay
        if op == "check":
            events = health.record_check(target, result, now)
        elif op == "deregister":
            events = health.deregister(target, now, idle=flag)
        elif op == "register":
            events = health.register(target, now)
        elif op == "idle":
            events = health.target_idle(target, now)
        elif op == "use":
            events = health.set_in_use(flag, now)
        else:
            events = health.advance(now)
        for event in events:  # events describe real changes (or a departure)
            assert event.previous != event.state or isinstance(event, TargetDeregistered)
        for record in health:
            assert record.since <= now
            if record.state is TargetState.DRAINING:
                assert record.drain_deadline is not None
                assert record.drain_deadline > record.since or policy.deregistration_delay == 0
            if not health.policy.in_use:
                assert record.state in (TargetState.UNUSED, TargetState.DRAINING)
            elif not policy.checks_enabled:
                assert record.state in (TargetState.UNAVAILABLE, TargetState.DRAINING)
        deadline = health.next_deadline()
        assert deadline is None or any(r.drain_deadline == deadline for r in health)


@given(policies, operations)
def test_registered_at_is_the_last_registration_that_was_not_a_no_op(policy, ops):
    health = HealthTable(policy)
    now = 0.0
    expected: dict[str, float] = {}
    for op, target, result, delay, flag in ops:
        now += delay
        before = health.get(target)
        if op == "check":
            health.record_check(target, result, now)
        elif op == "deregister":
            health.deregister(target, now, idle=flag)
        elif op == "register":
            health.register(target, now)
            if before is None or before.state is TargetState.DRAINING:
                expected[target] = now  # new, back after leaving, or back while draining
        elif op == "idle":
            health.target_idle(target, now)
        elif op == "use":
            health.set_in_use(flag, now)
        else:
            health.advance(now)
        for record in health:
            assert record.registered_at == expected[record.target_id]


@given(st.integers(2, 10), st.lists(st.sampled_from(CHECKS), max_size=30))
def test_the_last_threshold_checks_decide_a_checked_target(threshold, results):
    policy = HealthPolicy(healthy_threshold=threshold, unhealthy_threshold=threshold)
    health = table(policy)
    for now, result in enumerate(results):
        health.record_check("a", result, float(now))
    tail = results[-threshold:]
    if len(tail) == threshold and all(r is not Input.CHECK_PASSED for r in tail):
        assert state(health) is TargetState.UNHEALTHY
    if results and results[-threshold:] == [Input.CHECK_PASSED] * threshold:
        assert state(health) is TargetState.HEALTHY


def test_a_named_table_stamps_its_group_on_every_event():
    table = HealthTable(HealthPolicy(deregistration_delay=10), name="web")
    events = table.register("a:1", 0.0)
    events += table.record_check("a:1", Input.CHECK_PASSED, 1.0)
    events += table.set_policy(HealthPolicy(deregistration_delay=10, checks_enabled=False), 2.0)
    events += table.deregister("a:1", 3.0, idle=True)
    assert len(events) == 5
    assert {e.target_group for e in events} == {"web"}
    assert HealthTable(HealthPolicy()).register("a:1", 0.0)[0].target_group == ""


# The draining index: the shell's clock reads it at every wake, so it must not walk the table.

index_operations = st.lists(
    st.tuples(
        st.sampled_from(["check", "deregister", "register", "idle", "advance", "use", "shift"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from(CHECKS),
        st.floats(0, 200),  # time step (or the shift)
        st.booleans(),
    ),
    max_size=60,
)


def apply_operation(
    health: HealthTable, op: str, target: str, result: Input, now: float, flag: bool
) -> list[TargetStateChanged]:
    """One drawn operation of ``index_operations`` on the table (``shift`` is the caller's:
    it moves the clock, not a target); the events it produced."""
    if op == "check":
        return health.record_check(target, result, now, status=404)
    if op == "deregister":
        return health.deregister(target, now, idle=flag)
    if op == "register":
        return health.register(target, now)
    if op == "idle":
        return health.target_idle(target, now)
    if op == "use":
        return health.set_in_use(flag, now)
    if op == "advance":
        return health.advance(now)
    return []


@given(policies, index_operations)
def test_the_draining_index_agrees_with_the_records(policy, ops):
    """next_deadline, draining_targets and advance, from the index, say what a walk of every
    record says; ``advance`` takes the targets whose deadline has come, earliest first."""
    health = HealthTable(policy)
    now = 0.0
    for op, target, result, delay, flag in ops:
        now += delay
        if op == "shift":  # the clock moved under the table: its times move with it
            health.shift_clock(delay)
        due = sorted(
            (r.drain_deadline, r.target_id)
            for r in health
            if r.drain_deadline is not None and r.drain_deadline <= now
        )
        events = apply_operation(health, op, target, result, now, flag)
        if op == "advance":
            assert [e.target_id for e in events] == [target_id for _, target_id in due]
            assert all(isinstance(e, TargetDeregistered) and not e.early for e in events)
        draining = {r.target_id: r.drain_deadline for r in health if r.drain_deadline is not None}
        assert sorted(health.draining_targets()) == sorted(draining)
        assert draining.keys() == {r.target_id for r in health if r.state is TargetState.DRAINING}
        assert health.next_deadline() == min(draining.values(), default=None)


class WalkCounter(dict[str, TargetHealth]):
    """A record dict that counts every walk over it (keys, values or items)."""

    walks = 0

    def __iter__(self):
        WalkCounter.walks += 1
        return super().__iter__()

    def values(self):
        WalkCounter.walks += 1
        return super().values()

    def items(self):
        WalkCounter.walks += 1
        return super().items()


def test_the_clock_reads_of_a_large_table_do_not_walk_its_records(monkeypatch):
    """The issue: next_deadline and advance walked every record at each wake of the shell's
    clock (every deregistration, every second while a target drains)."""
    health = HealthTable(HealthPolicy(deregistration_delay=30))
    for i in range(10_000):
        health.register(f"t{i}", 0.0)
    health.deregister("t5", 1.0, idle=False)
    health.deregister("t7", 2.0, idle=False)
    monkeypatch.setattr(WalkCounter, "walks", 0)
    health._records = WalkCounter(health._records)  # how it is stored is the point here
    assert health.next_deadline() == 31.0
    assert sorted(health.draining_targets()) == ["t5", "t7"]
    assert health.advance(30.0) == []
    [gone] = health.advance(31.5)
    assert gone.target_id == "t5"
    assert health.next_deadline() == 32.0
    assert WalkCounter.walks == 0
    assert len(health) == 9_999


def test_a_target_that_keeps_coming_back_does_not_grow_the_index():
    """Deregistered and registered again, over and over, while draining: the stale heap
    entries are dropped, so the index stays the size of the draining set."""
    health = HealthTable(HealthPolicy(deregistration_delay=1000))
    health.register("a", 0.0)
    for i in range(1000):
        health.deregister("a", float(i), idle=False)
        health.register("a", float(i) + 0.5)
    assert health.next_deadline() is None
    assert len(health._deadline_heap) <= 65  # the compaction bound, nothing draining
    health.deregister("a", 2000.0, idle=False)
    assert health.next_deadline() == 3000.0


def selection_views(health: HealthTable) -> dict[str, tuple[object, ...]]:
    """What target selection reads of each record (Candidate.from_health)."""
    return {r.target_id: (r.state, r.since, r.registered_at) for r in health}


@given(policies, index_operations)
def test_the_version_moves_whenever_what_selection_reads_changes(policy, ops):
    """The runtime caches each group's candidates by the table's version: an unchanged
    version must mean unchanged candidates, whatever happened in between."""
    health = HealthTable(policy)
    now = 0.0
    for op, target, result, delay, flag in ops:
        now += delay
        before, version = selection_views(health), health.version
        if op == "shift":
            health.shift_clock(delay)
        apply_operation(health, op, target, result, now, flag)
        if health.version == version:
            assert selection_views(health) == before


def test_a_passing_check_of_a_healthy_target_leaves_the_version_alone():
    # With thousands of targets, every passing check would otherwise rebuild the group's
    # candidate list on the next request.
    health = table(POLICY, "a")
    health.record_check("a", Input.CHECK_PASSED, 1.0)
    assert state(health) is TargetState.HEALTHY
    version = health.version
    for n in range(5):
        health.record_check("a", Input.CHECK_PASSED, 2.0 + n)
    assert health.version == version
    health.record_check("a", Input.CHECK_TIMED_OUT, 10.0)  # counts a failure, state unchanged
    assert health.version == version
    health.record_check("a", Input.CHECK_TIMED_OUT, 11.0)  # the threshold: unhealthy
    assert state(health) is TargetState.UNHEALTHY
    assert health.version != version
