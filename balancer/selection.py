"""Target selection: which target, and which target group, gets the next request (pure).

ALB semantics (load-balancer-target-groups.md):

- Only healthy targets get requests (``unavailable`` ones too: their checks are off). When
  fewer are healthy than ``minimum_healthy_targets`` (count, or percent of the registered
  targets), the group *fails open*: every registered target that is not draining gets
  requests, unhealthy and initial ones included. Draining and unused targets never do.
- Algorithms: ``round_robin`` (smooth weighted round robin, as nginx does, so target weights
  apply; plain rotation when weights are equal), ``least_outstanding_requests`` (fewest
  requests in flight per unit of weight; ties rotate) and ``weighted_random``.
- Slow start: a target that became healthy ramps its weight linearly over
  ``slow_start_seconds``, but only while at least one healthy target is out of slow start
  (AWS: targets newly registered together, or an empty group's first targets, do not ramp;
  a target that recovers from unhealthy ramps again).
  Turning slow start on does not ramp the targets healthy then, and a new duration lets the
  ramps in progress go on over it and restarts none that had ended (:class:`SlowStartEpoch`).
- Stickiness overrides the algorithm while the sticky target is still eligible.

The selector keeps only counters (round-robin position, requests in flight); health comes in
with each call. Randomness is an argument (a ``random.Random`` or a float in [0, 1)), so a
seeded source makes every choice reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal, NamedTuple

from balancer.config import TargetGroup, WeightedTargetGroup
from balancer.health import TargetHealth, TargetState

Algorithm = Literal["round_robin", "least_outstanding_requests", "weighted_random"]
RandomSource = random.Random | float

# Health states that take requests normally, and those that take them when failing open.
ROUTABLE = frozenset({TargetState.HEALTHY, TargetState.UNAVAILABLE})
FAIL_OPEN = frozenset(
    {TargetState.INITIAL, TargetState.HEALTHY, TargetState.UNHEALTHY, TargetState.UNAVAILABLE}
)
# A target at the very start of slow start still gets a trickle, so it is never starved.
MIN_SLOW_START_SHARE = 0.01


class Candidate(NamedTuple):
    """A registered target as selection sees it."""

    target_id: str
    weight: int = 1
    state: TargetState = TargetState.HEALTHY
    healthy_since: float | None = None  # when it last became healthy (slow start)
    registered_at: float | None = None  # when it was registered (None: at the start)
    # Healthy again after being unhealthy since its registration (slow start): not new.
    recovered: bool = False

    @classmethod
    def from_health(cls, record: TargetHealth, weight: int = 1) -> Candidate:
        """A candidate from a health record and the target's configured weight."""
        healthy = record.state is TargetState.HEALTHY
        since = record.since if healthy else None
        recovered = healthy and record.was_healthy
        return cls(record.target_id, weight, record.state, since, record.registered_at, recovered)


class SlowStartEpoch(NamedTuple):
    """When a group's slow start was last turned on or given a new duration, and which
    targets were ramping at that moment (the runtime keeps one per group, across reloads).

    A target healthy since then or before keeps what it had at that moment: out of slow
    start, or (a new duration) in its ramp, which goes on over the new duration from when it
    began. AWS, "Edit target group attributes" (edit-target-group-attributes.md), Slow start
    mode, Considerations: "When you enable slow start for a target group, the healthy targets
    registered with the target group do not enter slow start mode." AWS says nothing of a
    changed duration: ending the ramps in progress would flood targets still warming up, and
    starting ramps again for targets that had finished theirs would take traffic from warm
    ones, so neither happens. Targets that become healthy later follow the usual rule.
    """

    since: float = -math.inf  # -inf: slow start has had its settings since before any target
    ramping: frozenset[str] = frozenset()  # target ids


ALWAYS = SlowStartEpoch()  # settings unchanged since before any target


class Choice(NamedTuple):
    """The chosen target; ``fail_open`` when unhealthy targets were eligible too."""

    target: Candidate
    fail_open: bool
    sticky: bool


class GroupChoice(NamedTuple):
    """The target group of a weighted forward; ``sticky`` when the AWSALBTG cookie chose."""

    name: str
    sticky: bool


def uniform(rand: RandomSource) -> float:
    """A float in [0, 1) from either kind of random source."""
    value = rand.random() if isinstance(rand, random.Random) else float(rand)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"a random value must be in [0, 1), not {value!r}")
    return value


def eligible(
    candidates: Sequence[Candidate], *, minimum_count: int = 1, minimum_percent: int = 0
) -> tuple[list[Candidate], bool]:
    """The targets that may take a new request, and whether the group failed open."""
    healthy = [c for c in candidates if c.state in ROUTABLE]
    registered = [c for c in candidates if c.state in FAIL_OPEN]
    too_few = len(healthy) < minimum_count or len(healthy) * 100 < minimum_percent * len(registered)
    if too_few and len(registered) > len(healthy):
        return registered, True
    return healthy, False


def slow_start_entries(
    pool: Sequence[Candidate], duration: float, epoch: SlowStartEpoch = ALWAYS
) -> tuple[float | None, ...]:
    """When each target entered slow start (its ``healthy_since``), or None if it did not.

    ALB's rule: a target enters slow start as it becomes healthy, and "newly registered
    targets enter slow start mode only when there is at least one healthy target that is not
    in slow start mode"; targets registered together (one registration, the config at start)
    do not enter it because of each other. So a newly registered target enters iff, when it
    became healthy, a target registered before it was healthy and out of slow start (never
    in it, or past its duration). That exemption is for new registrations only: "If a
    target in slow start mode becomes unhealthy, the target exits slow start mode. When the
    target becomes healthy, it enters slow start mode again" (edit-target-group-attributes.md,
    Slow start mode), so a ``recovered`` target enters iff a target healthy before it was out
    of slow start then, whenever it was registered (targets that all recover at once do not
    ramp because of each other). Worked out from the targets healthy now (one that has left
    since no longer counts), so a target's ramp does not depend on when its neighbours' ramps
    end.

    A target healthy since ``epoch.since`` or before is in slow start iff ``epoch.ramping``
    names it: slow start was turned on (none ramps) or re-timed then.
    """
    entries: list[float | None] = [None] * len(pool)
    if duration <= 0:
        return tuple(entries)
    order = sorted(
        (i for i, c in enumerate(pool) if c.state is TargetState.HEALTHY),
        key=lambda i: _healthy_since(pool[i]),
    )
    for position, i in enumerate(order):
        became = pool[i].healthy_since
        if became is None:
            continue  # healthy since before anything we know of: steady
        if became <= epoch.since:
            if pool[i].target_id in epoch.ramping:
                entries[i] = became
            continue
        if pool[i].recovered:
            earlier = [j for j in order[:position] if _healthy_since(pool[j]) < became]
        else:
            registered = _registered(pool[i])
            earlier = [j for j in order[:position] if _registered(pool[j]) < registered]
        for j in earlier:
            entry = entries[j]
            if entry is None or entry + duration <= became:
                entries[i] = became
                break
    return tuple(entries)


def _healthy_since(candidate: Candidate) -> float:
    since = candidate.healthy_since
    return -math.inf if since is None else since  # None: healthy since before we know


def _registered(candidate: Candidate) -> float:
    at = candidate.registered_at
    return -math.inf if at is None else at  # None: registered at the start, with the config


def slow_start_weights(
    pool: Sequence[Candidate],
    now: float,
    duration: float,
    entries: Sequence[float | None] | None = None,
) -> list[float]:
    """Each target's weight with the slow-start ramp applied (``entries`` from
    :func:`slow_start_entries`, computed here when not given)."""
    if duration <= 0:
        return [float(c.weight) for c in pool]
    if entries is None:
        entries = slow_start_entries(pool, duration)
    weights = []
    for c, entry in zip(pool, entries, strict=True):
        share = 1.0
        if entry is not None and now - entry < duration:
            share = max((now - entry) / duration, MIN_SLOW_START_SHARE)
        weights.append(c.weight * share)
    return weights


def weighted_pick(weights: Sequence[float], rand: RandomSource) -> int:
    """The index picked with probability proportional to its weight (all weights >= 0)."""
    total = sum(weights)
    if total <= 0:
        raise ValueError("weighted_pick needs a positive total weight")
    point = uniform(rand) * total
    running = 0.0
    last = 0
    for index, weight in enumerate(weights):
        if weight <= 0:
            continue
        running += weight
        last = index
        if point < running:
            return index
    return last  # float rounding left the point at the very end


class TargetSelector:
    """Chooses targets within one target group."""

    def __init__(
        self,
        algorithm: Algorithm = "round_robin",
        *,
        slow_start_seconds: float = 0.0,
        minimum_healthy_count: int = 1,
        minimum_healthy_percent: int = 0,
        outstanding: dict[str, int] | None = None,
    ) -> None:
        """Create a selector.

        Args:
            algorithm: how to pick among eligible targets.
            slow_start_seconds: the ramp of a newly healthy target (0: off).
            minimum_healthy_count: fail open below this many healthy targets.
            minimum_healthy_percent: or below this share of registered targets (0: off).
            outstanding: requests in flight per target id. Pass a dict that outlives the
                selector (the runtime keeps one per target group) so the counts survive a
                reload that builds a new selector; by default the selector keeps its own.
        """
        self.algorithm: Algorithm = algorithm
        self.slow_start_seconds = slow_start_seconds
        self.minimum_healthy_count = minimum_healthy_count
        self.minimum_healthy_percent = minimum_healthy_percent
        self._cursor = 0
        self._current: dict[str, float] = {}  # smooth weighted round robin
        self._outstanding: dict[str, int] = {} if outstanding is None else outstanding
        # The eligible pool (and, without slow start, its weights) of the last candidate
        # tuple and slow start epoch seen: the runtime hands the same tuple until the
        # group's health changes.
        self._memo_for: tuple[tuple[Candidate, ...], SlowStartEpoch] | None = None
        self._memo: tuple[
            list[Candidate], bool, tuple[float, ...] | None, tuple[float | None, ...]
        ] = ([], False, None, ())

    @classmethod
    def from_target_group(
        cls, group: TargetGroup, *, outstanding: dict[str, int] | None = None
    ) -> TargetSelector:
        """A selector with a configured group's algorithm, slow start and fail-open floor."""
        return cls(
            group.algorithm,
            slow_start_seconds=group.slow_start_seconds,
            minimum_healthy_count=group.minimum_healthy_targets.count,
            minimum_healthy_percent=group.minimum_healthy_targets.percent,
            outstanding=outstanding,
        )

    def choose(
        self,
        candidates: Sequence[Candidate],
        *,
        now: float,
        rand: RandomSource,
        sticky_target: str | None = None,
        slow_start_epoch: SlowStartEpoch = ALWAYS,
    ) -> Choice | None:
        """Pick the target for a new request.

        Args:
            candidates: the group's registered targets, in a stable order.
            now: the current time, on the clock ``healthy_since`` uses.
            rand: randomness for ``weighted_random`` (unused by the other algorithms).
            sticky_target: the target a valid stickiness cookie names, if any.
            slow_start_epoch: when the group's slow start was turned on or re-timed, on the
                same clock (the runtime's ``GroupLive`` keeps it).

        Returns:
            The choice, or None when no target may take the request (the shell answers 503).
        """
        memo = self._memo_for
        if memo is not None and candidates is memo[0] and slow_start_epoch is memo[1]:
            pool, fail_open, fixed, entries = self._memo
        else:
            pool, fail_open = eligible(
                candidates,
                minimum_count=self.minimum_healthy_count,
                minimum_percent=self.minimum_healthy_percent,
            )
            # Weights depend on the time only while slow start is on.
            slow = self.slow_start_seconds
            fixed = None if slow > 0 else tuple(float(c.weight) for c in pool)
            # Who entered slow start is decided from the whole group, not just the pool.
            entries = slow_start_entries(candidates, slow, slow_start_epoch) if slow > 0 else ()
            if entries:
                by_id = {c.target_id: e for c, e in zip(candidates, entries, strict=True)}
                entries = tuple(by_id.get(c.target_id) for c in pool)
            if type(candidates) is tuple:  # immutable: the same object, the same answer
                self._memo_for = (candidates, slow_start_epoch)
                self._memo = (pool, fail_open, fixed, entries)
        if not pool:
            return None
        if sticky_target is not None:
            for candidate in pool:
                if candidate.target_id == sticky_target:
                    return Choice(candidate, fail_open, sticky=True)
        weights = (
            slow_start_weights(pool, now, self.slow_start_seconds, entries)
            if fixed is None
            else fixed
        )
        if self.algorithm == "weighted_random":
            index = weighted_pick(weights, rand)
        elif self.algorithm == "least_outstanding_requests":
            index = self._least_outstanding(pool, weights)
        else:
            index = self._round_robin(pool, weights)
        return Choice(pool[index], fail_open, sticky=False)

    def _round_robin(self, pool: Sequence[Candidate], weights: Sequence[float]) -> int:
        if min(weights) == max(weights):
            index = self._cursor % len(pool)
            self._cursor += 1
            return index
        # Smooth weighted round robin: every target gains its weight, the richest is picked
        # and pays the total. Spreads picks evenly (a,a,b,a,a,b rather than a,a,a,a,b,b).
        if len(self._current) > 2 * len(pool):
            live = {c.target_id for c in pool}
            self._current = {k: v for k, v in self._current.items() if k in live}
        best, best_score = 0, float("-inf")
        for index, (candidate, weight) in enumerate(zip(pool, weights, strict=True)):
            score = self._current.get(candidate.target_id, 0.0) + weight
            self._current[candidate.target_id] = score
            if score > best_score:
                best, best_score = index, score
        self._current[pool[best].target_id] -= sum(weights)
        return best

    def _least_outstanding(self, pool: Sequence[Candidate], weights: Sequence[float]) -> int:
        start = self._cursor % len(pool)  # ties rotate rather than always hit the first
        self._cursor += 1
        best, best_load = start, float("inf")
        for offset in range(len(pool)):
            index = (start + offset) % len(pool)
            load = self._outstanding.get(pool[index].target_id, 0) / weights[index]
            if load < best_load:
                best, best_load = index, load
        return best

    def request_started(self, target_id: str) -> None:
        """A request was sent to the target."""
        self._outstanding[target_id] = self._outstanding.get(target_id, 0) + 1

    def request_finished(self, target_id: str) -> int:
        """A request to the target ended; returns how many are still in flight there."""
        left = max(self._outstanding.get(target_id, 0) - 1, 0)
        if left:
            self._outstanding[target_id] = left
        else:
            self._outstanding.pop(target_id, None)
        return left

    def outstanding(self, target_id: str) -> int:
        """Requests in flight to the target."""
        return self._outstanding.get(target_id, 0)

    def forget(self, target_id: str) -> None:
        """Drop the counters of a target that left the group."""
        self._current.pop(target_id, None)
        self._outstanding.pop(target_id, None)


def choose_group(
    groups: Sequence[WeightedTargetGroup],
    *,
    rand: RandomSource,
    sticky_group: str | None = None,
) -> GroupChoice:
    """Pick the target group of a weighted forward.

    A group named by a valid AWSALBTG cookie keeps the client while it is still part of the
    action, even at weight 0 (so a blue/green shift does not break sessions in progress);
    otherwise groups are drawn by weight.

    Raises:
        ValueError: no group has a positive weight (config load refuses such actions).
    """
    if sticky_group is not None and any(g.name == sticky_group for g in groups):
        return GroupChoice(sticky_group, sticky=True)
    index = weighted_pick([g.weight for g in groups], rand)
    return GroupChoice(groups[index].name, sticky=False)
