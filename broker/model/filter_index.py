"""Which of a topic's subscriptions want a message: an index over compiled filter policies.

A topic with 1,000 filtered subscriptions must not evaluate 1,000 policies per publish when a
few match (issue 4). Each policy branch is registered once, under the cheapest sound pre-check:

1. **exact anchor**: a key whose conditions are all plain literals (``"store": ["a", "b"]``).
   The branch can match only if the message has one of those values at that key, so it is
   filed under ``(path, typed value)`` in a hash table: the value as exact matching compares
   it (:func:`~broker.model.filter_match.typed`), so a number beyond AWS's numeric range is
   filed under its text (a ``NumberText``) and ``9007199254740993`` never shares a bucket with
   ``9007199254740992``. Among several such keys the one with the fewest literals is chosen,
   to keep buckets small.
2. **presence anchor**: otherwise, any key whose test fails when the key is absent (every
   condition except ``exists: false``). Filed under the path.
3. **scan**: a branch made only of ``exists: false`` keys is evaluated on every publish.

A publish looks up the message's own keys and values in those tables (a few dict lookups per
message key), then fully evaluates only the candidate branches it found. A presence-anchored
branch is evaluated even when it does not match, but a non-literal condition on a path holding
many values costs a lookup in summaries shared by every branch (a bisect, a set lookup), not a
pass over the values (:class:`~broker.model.filter_match.ManyValues`). The index never
changes the answer: a branch that is not a candidate fails its anchor test, so it cannot match
(``tests/broker/model/test_filter_index.py`` checks this against brute force with hypothesis).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from broker.model.filter_match import (
    Branch,
    KeyTest,
    TypedValue,
    View,
    attributes_view,
    body_view,
    path_prefixes,
)
from broker.model.filter_policy import SCOPES, FilterPolicy, Scope

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Selection(Generic[K]):
    """The outcome of one publish against the index.

    Attributes:
        matched: the subscriptions that get the message, in the order they were added.
        evaluations: how many policy branches were fully evaluated (the cost the index saves;
            a brute-force fan-out evaluates at least one per filtered subscription).
        filtered_out: how many filtered subscriptions did not match (for the topic metric).
    """

    matched: tuple[K, ...]
    evaluations: int
    filtered_out: int


@dataclass(slots=True)
class _ScopeTables(Generic[K]):
    """The three pre-check tables for one filter-policy scope."""

    exact: dict[str, dict[TypedValue, dict[K, list[Branch]]]] = field(default_factory=dict)
    presence: dict[str, dict[K, list[Branch]]] = field(default_factory=dict)
    scan: dict[K, list[Branch]] = field(default_factory=dict)
    size: int = 0  # registered branches, to skip building a view nobody reads
    # Branches reading each path; the message body is walked only along these paths.
    paths: dict[str, int] = field(default_factory=dict)
    _prefixes: frozenset[str] | None = None

    def count_paths(self, branch: Branch, change: int) -> None:
        for test in branch.tests:
            count = self.paths.get(test.path, 0) + change
            if count:
                self.paths[test.path] = count
            else:
                del self.paths[test.path]
        self._prefixes = None

    @property
    def prefixes(self) -> frozenset[str]:
        """What :func:`~broker.model.filter_match.body_view` builds (cached until a change)."""
        if self._prefixes is None:
            self._prefixes = path_prefixes(self.paths)
        return self._prefixes


class SubscriptionFilterIndex(Generic[K]):
    """The subscriptions of one topic, indexed by what their filter policies need.

    Keys are whatever the caller uses to name a subscription (an ARN, a row id). Adding a key
    again replaces its policy, which is how SetSubscriptionAttributes updates it.
    """

    def __init__(self) -> None:
        self._order: dict[K, int] = {}
        self._next = 0
        self._policies: dict[K, FilterPolicy | None] = {}
        self._unfiltered: dict[K, None] = {}  # insertion-ordered set
        self._tables: dict[Scope, _ScopeTables[K]] = {scope: _ScopeTables() for scope in SCOPES}
        # key -> the buckets it sits in, so removal does not search.
        self._homes: dict[K, list[dict[K, list[Branch]]]] = {}

    def __len__(self) -> int:
        return len(self._policies)

    def __contains__(self, key: object) -> bool:
        return key in self._policies

    def add(self, key: K, policy: FilterPolicy | None) -> None:
        """Register a subscription with its compiled policy (None: it wants every message).

        Args:
            key: the subscription's identifier.
            policy: its compiled filter policy, or None.
        """
        if key in self._policies:
            self.remove(key)
        self._order[key] = self._next
        self._next += 1
        self._policies[key] = policy
        homes: list[dict[K, list[Branch]]] = []
        if policy is None:
            self._unfiltered[key] = None
        else:
            tables = self._tables[policy.scope]
            for branch in policy.branches:
                for bucket in self._buckets_for(tables, branch):
                    bucket.setdefault(key, []).append(branch)
                    homes.append(bucket)
                tables.size += 1
                tables.count_paths(branch, 1)
        self._homes[key] = homes

    def remove(self, key: K) -> None:
        """Forget a subscription (Unsubscribe, DeleteTopic). Unknown keys are ignored."""
        policy = self._policies.pop(key, None)
        self._order.pop(key, None)
        self._unfiltered.pop(key, None)
        for bucket in self._homes.pop(key, []):
            bucket.pop(key, None)
        if policy is not None:
            tables = self._tables[policy.scope]
            tables.size -= len(policy.branches)
            for branch in policy.branches:
                tables.count_paths(branch, -1)
        # Empty buckets are left in place: they cost a dict lookup and keep removal O(branches).

    def _buckets_for(self, tables: _ScopeTables[K], branch: Branch) -> list[dict[K, list[Branch]]]:
        anchor = _exact_anchor(branch.tests)
        if anchor is not None:
            by_value = tables.exact.setdefault(anchor.path, {})
            return [by_value.setdefault(value, {}) for value in anchor.exact]
        required = next((test for test in branch.tests if test.requires_path), None)
        if required is not None:
            return [tables.presence.setdefault(required.path, {})]
        return [tables.scan]

    def match(
        self, attributes: Mapping[str, Mapping[str, object]] | None, body: str
    ) -> Selection[K]:
        """Select the subscriptions a published message goes to.

        Args:
            attributes: the message attributes as decoded from Publish (name -> DataType and
                StringValue/BinaryValue).
            body: the message text body-scope policies look at.

        Returns:
            The matching subscriptions and the work it took.
        """
        matched: set[K] = set(self._unfiltered)
        evaluations = 0
        for scope in SCOPES:
            tables = self._tables[scope]
            if tables.size == 0:
                continue
            view: View | None
            if scope == "MessageAttributes":
                view = attributes_view(attributes)
                if not view:
                    continue  # FilterPolicy.matches: a message without attributes matches nothing
            else:
                view = body_view(body, tables.prefixes)
                if view is None:
                    continue  # not an object, or no value in it: FilterPolicy.matches likewise
            for key, branches in _candidates(tables, view).items():
                if key in matched:
                    continue
                for branch in _unique(branches):
                    evaluations += 1
                    if branch.matches(view):
                        matched.add(key)
                        break
        ordered = tuple(sorted(matched, key=self._order.__getitem__))
        filtered = len(self._policies) - len(self._unfiltered)
        filtered_matches = len(ordered) - len(self._unfiltered)
        return Selection(ordered, evaluations, filtered - filtered_matches)


def _exact_anchor(tests: Iterable[KeyTest]) -> KeyTest | None:
    exact_tests = [test for test in tests if test.exact_only]
    if not exact_tests:
        return None
    return min(exact_tests, key=lambda test: (len(test.exact), test.path))


def _candidates(tables: _ScopeTables[K], view: View) -> dict[K, list[Branch]]:
    found: dict[K, list[Branch]] = {}

    def collect(bucket: Mapping[K, list[Branch]]) -> None:
        for key, branches in bucket.items():
            found.setdefault(key, []).extend(branches)

    # Walk whichever side is smaller: the index's paths or the message's keys.
    exact = tables.exact
    pairs = (
        ((path, view.get(path)) for path in exact)
        if len(exact) <= len(view)
        else ((path, values) for path, values in view.items() if path in exact)
    )
    for path, values in pairs:
        if values is None:
            continue
        by_value = exact[path]
        # Each distinct value once (in message order, so the work counted is the same every
        # time): a bucket collected per occurrence would cost its size times the length of an
        # array repeating one value.
        for typed_value in dict.fromkeys((type(value), value) for value in values):
            bucket = by_value.get(typed_value)
            if bucket:
                collect(bucket)
    presence = tables.presence
    paths = presence if len(presence) <= len(view) else [p for p in view if p in presence]
    for path in paths:
        if path in view:
            collect(presence[path])
    collect(tables.scan)
    return found


def _unique(branches: list[Branch]) -> list[Branch]:
    # The same branch can surface twice (two message values hit two of its literals).
    seen: set[int] = set()
    unique = []
    for branch in branches:
        if id(branch) not in seen:
            seen.add(id(branch))
            unique.append(branch)
    return unique
