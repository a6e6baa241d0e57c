from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from balancer.config import MinimumHealthyTargets, TargetGroup, WeightedTargetGroup
from balancer.health import (
    HealthPolicy,
    HealthTable,
    Input,
    TargetBecameHealthy,
    TargetHealth,
    TargetState,
)
from balancer.selection import (
    Candidate,
    Choice,
    GroupChoice,
    SlowStartEpoch,
    TargetSelector,
    choose_group,
    eligible,
    slow_start_entries,
    slow_start_weights,
    uniform,
    weighted_pick,
)

H, U, D = TargetState.HEALTHY, TargetState.UNHEALTHY, TargetState.DRAINING
INIT = TargetState.INITIAL


def targets(*states: TargetState, weights: tuple[int, ...] = ()) -> list[Candidate]:
    return [
        Candidate(f"t{i}", weights[i] if weights else 1, state) for i, state in enumerate(states)
    ]


def picks(selector: TargetSelector, pool: list[Candidate], n: int, seed: int = 0) -> list[str]:
    rand = random.Random(seed)
    found = []
    for _ in range(n):
        choice = selector.choose(pool, now=0.0, rand=rand)
        assert choice is not None
        found.append(choice.target.target_id)
    return found


# Eligibility and fail-open ---------------------------------------------------------------------


def test_only_healthy_and_unavailable_targets_are_eligible():
    pool = targets(H, U, INIT, D, TargetState.UNAVAILABLE, TargetState.UNUSED)
    chosen, fail_open = eligible(pool)
    assert [c.target_id for c in chosen] == ["t0", "t4"]
    assert not fail_open


def test_no_healthy_target_fails_open_to_all_but_draining_and_unused():
    pool = targets(U, INIT, D, TargetState.UNUSED)
    chosen, fail_open = eligible(pool)
    assert [c.target_id for c in chosen] == ["t0", "t1"]
    assert fail_open


def test_minimum_healthy_count_and_percent():
    pool = targets(H, U, U, U)
    assert eligible(pool, minimum_count=1)[1] is False
    assert eligible(pool, minimum_count=2)[1] is True
    assert eligible(pool, minimum_percent=25)[1] is False
    assert eligible(pool, minimum_percent=26)[1] is True


def test_failing_open_with_nothing_extra_to_add_is_not_reported():
    assert eligible(targets(H), minimum_count=3) == (targets(H), False)
    assert eligible(targets(D)) == ([], False)


def test_no_eligible_target_means_no_choice():
    selector = TargetSelector()
    assert selector.choose([], now=0.0, rand=0.5) is None
    assert selector.choose(targets(D, D), now=0.0, rand=0.5) is None


def test_choice_reports_fail_open():
    choice = TargetSelector().choose(targets(U), now=0.0, rand=0.5)
    assert choice == Choice(Candidate("t0", 1, U), fail_open=True, sticky=False)


def test_selector_from_a_target_group():
    group = TargetGroup(
        name="g",
        slow_start_seconds=60,
        minimum_healthy_targets=MinimumHealthyTargets(count=2, percent=50),
    )
    selector = TargetSelector.from_target_group(group)
    assert (selector.algorithm, selector.slow_start_seconds) == ("round_robin", 60)
    weighted_random = TargetGroup(name="g", algorithm="weighted_random")
    assert TargetSelector.from_target_group(weighted_random).algorithm == "weighted_random"
    assert (selector.minimum_healthy_count, selector.minimum_healthy_percent) == (2, 50)


def test_candidate_from_a_health_record():
    healthy = TargetHealth("a", H, None, 12.0)
    assert Candidate.from_health(healthy, 3) == Candidate("a", 3, H, 12.0)
    assert Candidate.from_health(TargetHealth("b", U, None, 5.0)).healthy_since is None


# Algorithms ------------------------------------------------------------------------------------


def test_round_robin_rotates_and_skips_unhealthy_targets():
    selector = TargetSelector("round_robin")
    assert picks(selector, targets(H, U, H), 4) == ["t0", "t2", "t0", "t2"]


def test_round_robin_honours_target_weights_smoothly():
    selector = TargetSelector("round_robin")
    assert picks(selector, targets(H, H, weights=(3, 1)), 8) == ["t0", "t0", "t1", "t0"] * 2


def test_least_outstanding_requests_picks_the_least_busy():
    selector = TargetSelector("least_outstanding_requests")
    pool = targets(H, H, H)
    for target, busy in (("t0", 2), ("t1", 1), ("t2", 3)):
        for _ in range(busy):
            selector.request_started(target)
    assert picks(selector, pool, 1) == ["t1"]
    assert selector.request_finished("t0") == 1
    assert selector.request_finished("t0") == 0
    assert selector.request_finished("t0") == 0  # never negative
    assert selector.outstanding("t0") == 0
    assert picks(selector, pool, 1) == ["t0"]
    selector.forget("t2")
    assert selector.outstanding("t2") == 0


def test_least_outstanding_requests_rotates_between_ties():
    selector = TargetSelector("least_outstanding_requests")
    assert picks(selector, targets(H, H, H), 3) == ["t0", "t1", "t2"]


def test_weighted_random_is_reproducible():
    selector = TargetSelector("weighted_random")
    pool = targets(H, H, H, weights=(1, 2, 3))
    assert picks(selector, pool, 20, seed=7) == picks(selector, pool, 20, seed=7)
    assert selector.choose(pool, now=0.0, rand=0.0).target.target_id == "t0"  # type: ignore[union-attr]
    assert selector.choose(pool, now=0.0, rand=0.99).target.target_id == "t2"  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [1.0, -0.1, math.nan])
def test_random_values_must_lie_in_the_unit_interval(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        uniform(bad)


def test_weighted_pick_skips_zero_weights_and_needs_a_positive_total():
    assert weighted_pick([0, 1, 0], 0.0) == 1
    assert weighted_pick([1, 0], 0.999999) == 0
    with pytest.raises(ValueError, match="positive total"):
        weighted_pick([0, 0], 0.5)


# Slow start and stickiness ---------------------------------------------------------------------


def test_slow_start_ramps_a_newly_healthy_target_linearly():
    new = Candidate("new", 1, H, healthy_since=100.0, registered_at=90.0)
    pool = [Candidate("old", 1, H, None), new]
    assert slow_start_weights(pool, 100.0, 60) == [1.0, 0.01]  # a trickle, never nothing
    assert slow_start_weights(pool, 130.0, 60) == [1.0, 0.5]
    assert slow_start_weights(pool, 160.0, 60) == [1.0, 1.0]
    assert slow_start_weights(pool, 130.0, 0) == [1.0, 1.0]


def test_targets_that_start_together_do_not_ramp():
    pool = [Candidate("a", 2, H, healthy_since=100.0), Candidate("b", 1, H, healthy_since=100.0)]
    assert slow_start_weights(pool, 110.0, 60) == [2.0, 1.0]


def test_slow_start_follows_albs_rule_for_who_enters_it():
    # The first targets (registered together, at the start) never enter slow start; a target
    # registered later does once one of them is healthy and out of slow start; its ramp
    # depends on its own time only (a hunt saw a full share, then a drop when the first
    # ones' windows ended).
    a = Candidate("a", 1, H, healthy_since=0.0, registered_at=0.0)
    b = Candidate("b", 1, H, healthy_since=0.5, registered_at=0.0)
    c = Candidate("c", 1, H, healthy_since=15.0, registered_at=15.0)
    assert slow_start_entries([a, b, c], 30) == (None, None, 15.0)
    assert slow_start_weights([a, b, c], 15.0, 30) == [1.0, 1.0, 0.01]
    assert slow_start_weights([a, b, c], 30.0, 30) == [1.0, 1.0, 0.5]
    assert slow_start_weights([a, b, c], 45.0, 30) == [1.0, 1.0, 1.0]
    d = Candidate("d", 1, H, healthy_since=20.0, registered_at=16.0)
    assert slow_start_entries([a, b, c, d], 30) == (None, None, 15.0, 20.0)
    # Two registered by one operation do not put each other in slow start.
    e = Candidate("e", 1, H, healthy_since=100.0, registered_at=90.0)
    f = Candidate("f", 1, H, healthy_since=101.0, registered_at=90.0)
    assert slow_start_entries([a, e, f], 30) == (None, 100.0, 101.0)
    assert slow_start_entries([e, f], 30) == (None, None)


def test_a_target_that_recovers_enters_slow_start_again_however_it_was_registered():
    # ALB: "If a target in slow start mode becomes unhealthy, the target exits slow start
    # mode. When the target becomes healthy, it enters slow start mode again." The exemption
    # of targets registered together is for new registrations only.
    a = Candidate("a", 1, H, healthy_since=1.0)
    b = Candidate("b", 1, H, healthy_since=100.0, recovered=True)
    assert slow_start_entries([a, b], 300) == (None, 100.0)
    assert slow_start_weights([a, b], 250.0, 300, slow_start_entries([a, b], 300)) == [1.0, 0.5]
    # Registered before the steady target, and recovering with another at the same instant:
    # both ramp, because a target healthy before them is out of slow start.
    c = Candidate("c", 1, H, healthy_since=100.0, registered_at=50.0, recovered=True)
    early = Candidate("early", 1, H, healthy_since=100.0, registered_at=-10.0, recovered=True)
    a_later = a._replace(registered_at=20.0)
    assert slow_start_entries([a_later, early, c], 300) == (None, 100.0, 100.0)
    # Targets that all recover at once have nothing out of slow start: none ramps.
    assert slow_start_entries([b, b._replace(target_id="b2")], 300) == (None, None)
    # Not recovered (a first healthy state): registered together, no ramp, as before.
    assert slow_start_entries([a, b._replace(recovered=False)], 300) == (None, None)


def test_a_recovered_candidate_comes_from_a_healthy_unhealthy_healthy_record():
    health = HealthTable(HealthPolicy(healthy_threshold=2, unhealthy_threshold=2))
    health.register("a", 0.0)
    health.record_check("a", Input.CHECK_PASSED, 1.0)
    assert not Candidate.from_health(health.get("a")).recovered  # type: ignore[arg-type]
    for now in (2.0, 3.0):
        health.record_check("a", Input.CHECK_FAILED, now)
    assert not Candidate.from_health(health.get("a")).recovered  # type: ignore[arg-type]
    for now in (4.0, 5.0):
        health.record_check("a", Input.CHECK_PASSED, now)
    assert Candidate.from_health(health.get("a")) == Candidate("a", 1, H, 5.0, 0.0, True)
    health.deregister("a", 6.0, idle=False)
    health.register("a", 7.0)  # registered again: a new registration
    health.record_check("a", Input.CHECK_PASSED, 8.0)
    assert Candidate.from_health(health.get("a")) == Candidate("a", 1, H, 8.0, 7.0, False)
    # A group back in use starts its targets over together, as at the start: no recovery.
    health.set_in_use(False, 9.0)
    health.set_in_use(True, 10.0)
    health.record_check("a", Input.CHECK_PASSED, 11.0)
    assert not Candidate.from_health(health.get("a")).recovered  # type: ignore[arg-type]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["b", "c", "d"]),
            st.sampled_from(["pass", "fail", "register again"]),
        ),
        max_size=60,
    )
)
@example([("b", "pass"), ("b", "fail"), ("b", "fail"), ("b", "pass"), ("b", "pass")])
@example([("c", "register again"), ("c", "pass"), ("d", "pass")])
def test_targets_ramp_when_they_recover_or_are_registered_again_not_at_the_start(ops):
    # A fake clock drives a real health table: "a", "b", "c" and "d" are the file's targets
    # (registered together at 0); "a" is healthy from t=1 on and never fails, so it is out
    # of slow start throughout. Each other target ramps iff its present healthy state is not
    # its first since it was registered (a recovery) or it was registered again since.
    duration = 900.0
    health = HealthTable(HealthPolicy(healthy_threshold=2, unhealthy_threshold=2))
    for target in "abcd":
        health.register(target, 0.0)
    health.record_check("a", Input.CHECK_PASSED, 1.0)
    spells = dict.fromkeys("bcd", 0)  # healthy states entered since its registration
    again = dict.fromkeys("bcd", False)
    now = 1.0
    for target, op in ops:
        now += 1.0
        if op == "register again":
            health.deregister(target, now, idle=True)
            health.register(target, now)
            spells[target], again[target] = 0, True
            continue
        result = Input.CHECK_PASSED if op == "pass" else Input.CHECK_FAILED
        events = health.record_check(target, result, now)
        spells[target] += sum(isinstance(e, TargetBecameHealthy) for e in events)
    pool = [Candidate.from_health(record) for record in health]
    entries = slow_start_entries(pool, duration)
    for candidate, entry in zip(pool, entries, strict=True):
        if candidate.state is not H:
            continue
        target = candidate.target_id
        ramps = target != "a" and (spells[target] >= 2 or again[target])
        assert entry == (candidate.healthy_since if ramps else None), (target, spells, again)


@given(
    st.lists(
        st.tuples(st.floats(0, 100), st.sampled_from([0.0, 10.0, 20.0])), min_size=1, max_size=6
    ),
    st.floats(1, 60),
    st.floats(0, 200),
)
def test_a_slow_start_share_only_grows_with_time(times, duration, now):
    pool = [
        Candidate(f"t{i}", 1, H, healthy_since=max(healthy, registered), registered_at=registered)
        for i, (healthy, registered) in enumerate(times)
    ]
    entries = slow_start_entries(pool, duration)
    earlier = slow_start_weights(pool, now, duration, entries)
    later = slow_start_weights(pool, now + 1.0, duration, entries)
    assert all(b >= a for a, b in zip(earlier, later, strict=True))
    assert all(0 < w <= 1 for w in earlier)
    assert any(entry is None for entry in entries)  # somebody is always out of slow start


@given(
    st.lists(
        st.tuples(st.floats(0, 100), st.sampled_from([0.0, 10.0, 20.0]), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    st.floats(1, 900),
    st.floats(0, 100),
)
def test_targets_healthy_at_the_epoch_ramp_only_if_it_says_so(times, duration, since):
    pool = [
        Candidate(f"t{i}", 1, H, healthy_since=max(healthy, registered), registered_at=registered)
        for i, (healthy, registered, _) in enumerate(times)
    ]
    ramping = frozenset(f"t{i}" for i, (_, _, ramps) in enumerate(times) if ramps)
    entries = slow_start_entries(pool, duration, SlowStartEpoch(since, ramping))
    for candidate, entry in zip(pool, entries, strict=True):
        assert candidate.healthy_since is not None
        if candidate.healthy_since <= since:
            ramps = candidate.target_id in ramping
            assert entry == (candidate.healthy_since if ramps else None)
        else:
            assert entry in (None, candidate.healthy_since)


def test_slow_start_shapes_the_choice():
    selector = TargetSelector("weighted_random", slow_start_seconds=100)
    pool = [Candidate("old", 1, H), Candidate("new", 1, H, healthy_since=0.0, registered_at=0.0)]
    rand = random.Random(1)
    counts = Counter(
        selector.choose(pool, now=10.0, rand=rand).target.target_id  # type: ignore[union-attr]
        for _ in range(2000)
    )
    assert 100 < counts["new"] < 260  # expected share 0.1 / 1.1 of 2000, about 182


def test_targets_healthy_when_slow_start_was_turned_on_do_not_ramp():
    # AWS: "When you enable slow start for a target group, the healthy targets registered
    # with the target group do not enter slow start mode." b was registered after a and
    # would ramp had slow start been on all along.
    a = Candidate("a", 1, H, healthy_since=1.0, registered_at=0.0)
    b = Candidate("b", 1, H, healthy_since=11.0, registered_at=10.0)
    assert slow_start_entries([a, b], 900) == (None, 11.0)
    turned_on = SlowStartEpoch(since=20.0)
    assert slow_start_entries([a, b], 900, turned_on) == (None, None)
    # A target healthy after that follows the usual rule.
    c = Candidate("c", 1, H, healthy_since=31.0, registered_at=30.0)
    assert slow_start_entries([a, b, c], 900, turned_on) == (None, None, 31.0)
    # A new duration: who was ramping then goes on ramping, from when it began.
    retimed = SlowStartEpoch(since=40.0, ramping=frozenset({"c"}))
    d = Candidate("d", 1, H, healthy_since=41.0, registered_at=40.0)
    entries = slow_start_entries([a, b, c, d], 60, retimed)
    assert entries == (None, None, 31.0, 41.0)
    assert slow_start_weights([a, b, c, d], 61.0, 60, entries) == [1.0, 1.0, 0.5, 20 / 60]


def test_the_choice_follows_the_slow_start_epoch_given():
    selector = TargetSelector(slow_start_seconds=900)
    pool = (
        Candidate("a", 1, H, healthy_since=1.0, registered_at=0.0),
        Candidate("b", 1, H, healthy_since=11.0, registered_at=10.0),
    )

    def counts(epoch: SlowStartEpoch) -> Counter[str]:
        found: Counter[str] = Counter()
        for _ in range(100):
            choice = selector.choose(pool, now=20.0, rand=0.5, slow_start_epoch=epoch)
            assert choice is not None
            found[choice.target.target_id] += 1
        return found

    assert counts(SlowStartEpoch())["b"] == 1  # 0.01 of a share: b ramps
    assert counts(SlowStartEpoch(since=15.0)) == {"a": 50, "b": 50}  # the same tuple, not memo
    assert counts(SlowStartEpoch())["b"] == 1


def test_a_sticky_target_is_kept_while_eligible():
    selector = TargetSelector()
    pool = targets(H, H, U, D)
    assert selector.choose(pool, now=0.0, rand=0.5, sticky_target="t1") == Choice(
        pool[1], fail_open=False, sticky=True
    )
    for gone in ("t2", "t3", "nope"):  # unhealthy, draining, deregistered: pick afresh
        choice = selector.choose(pool, now=0.0, rand=0.5, sticky_target=gone)
        assert choice is not None
        assert not choice.sticky
        assert choice.target.target_id in ("t0", "t1")


def test_a_sticky_unhealthy_target_is_kept_when_failing_open():
    choice = TargetSelector().choose(targets(U, U), now=0.0, rand=0.5, sticky_target="t1")
    assert choice == Choice(Candidate("t1", 1, U), fail_open=True, sticky=True)


def test_group_choice_by_weight_and_by_cookie():
    groups = [
        WeightedTargetGroup(name="blue", weight=0),
        WeightedTargetGroup(name="green", weight=5),
    ]
    assert choose_group(groups, rand=0.3) == GroupChoice("green", sticky=False)
    assert choose_group(groups, rand=0.3, sticky_group="blue") == GroupChoice("blue", sticky=True)
    assert choose_group(groups, rand=0.3, sticky_group="gone") == GroupChoice("green", sticky=False)


# Properties ------------------------------------------------------------------------------------

weight_lists = st.lists(st.integers(1, 20), min_size=1, max_size=6)


@given(weight_lists, st.integers(0, 2**32))
def test_weighted_random_proportions_are_within_statistical_bounds(weights, seed):
    draws = 3000
    selector = TargetSelector("weighted_random")
    pool = targets(*[H] * len(weights), weights=tuple(weights))
    counts = Counter(picks(selector, pool, draws, seed))
    total = sum(weights)
    for i, weight in enumerate(weights):
        p = weight / total
        sigma = math.sqrt(draws * p * (1 - p))
        # Six standard deviations: a false alarm is a one-in-a-few-hundred-million event.
        assert abs(counts[f"t{i}"] - draws * p) <= 6 * sigma + 1


@given(weight_lists, st.integers(0, 2**32))
def test_group_choice_proportions_are_within_statistical_bounds(weights, seed):
    draws = 3000
    groups = [WeightedTargetGroup(name=f"g{i}", weight=w) for i, w in enumerate(weights)]
    rand = random.Random(seed)
    counts = Counter(choose_group(groups, rand=rand).name for _ in range(draws))
    total = sum(weights)
    for i, weight in enumerate(weights):
        p = weight / total
        assert abs(counts[f"g{i}"] - draws * p) <= 6 * math.sqrt(draws * p * (1 - p)) + 1


@given(weight_lists)
def test_smooth_round_robin_gives_each_target_its_weight_per_cycle(weights):
    selector = TargetSelector("round_robin")
    pool = targets(*[H] * len(weights), weights=tuple(weights))
    counts = Counter(picks(selector, pool, sum(weights) * 3))
    assert [counts[f"t{i}"] for i in range(len(weights))] == [3 * w for w in weights]


@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(1, 5)), min_size=1, max_size=8),
    st.integers(0, 10),
)
def test_least_outstanding_requests_picks_a_minimum(loads, rotation):
    selector = TargetSelector("least_outstanding_requests")
    selector._cursor = rotation  # any tie-breaking start must still give a minimum
    pool = [Candidate(f"t{i}", weight) for i, (_, weight) in enumerate(loads)]
    for i, (busy, _) in enumerate(loads):
        for _ in range(busy):
            selector.request_started(f"t{i}")
    choice = selector.choose(pool, now=0.0, rand=0.5)
    assert choice is not None
    ratio = {f"t{i}": busy / weight for i, (busy, weight) in enumerate(loads)}
    assert ratio[choice.target.target_id] == min(ratio.values())


@given(
    st.lists(st.sampled_from(TargetState), max_size=8),
    st.sampled_from(["round_robin", "least_outstanding_requests", "weighted_random"]),
    st.integers(1, 4),
    st.integers(0, 100),
    st.floats(0, 0.999),
)
def test_a_choice_is_always_eligible(states, algorithm, count, percent, rand):
    selector = TargetSelector(
        algorithm, minimum_healthy_count=count, minimum_healthy_percent=percent
    )
    pool = targets(*states)
    choice = selector.choose(pool, now=0.0, rand=rand)
    allowed, fail_open = eligible(pool, minimum_count=count, minimum_percent=percent)
    if not allowed:
        assert choice is None
        return
    assert choice is not None
    assert choice.target in allowed
    assert choice.fail_open is fail_open
    assert choice.target.state not in (TargetState.DRAINING, TargetState.UNUSED)
    if not fail_open:
        assert choice.target.state in (TargetState.HEALTHY, TargetState.UNAVAILABLE)
