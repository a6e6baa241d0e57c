import json
import tracemalloc
from collections import Counter
from dataclasses import replace
from typing import cast

from hypothesis import assume, given
from hypothesis import strategies as st

from broker.model.filter_index import SubscriptionFilterIndex
from broker.model.filter_match import (
    Branch,
    KeyTest,
    ManyValues,
    Predicate,
    Scalar,
    attributes_view,
    body_view,
    path_prefixes,
)
from broker.model.filter_policy import FilterPolicy, Scope, parse_filter_policy
from broker.model.sns_errors import SnsError
from tests.support.sns_filters import (
    KEYS,
    NESTED,
    attributes_near,
    bodies,
    bodies_near,
    message_attributes,
    policies,
)


def compiled(policy: dict, scope: Scope = "MessageAttributes") -> FilterPolicy:
    result = parse_filter_policy(json.dumps(policy), scope, in_attributes_map=False)
    assert result is not None
    return result


def attrs(**values: str) -> dict:
    return {name: {"DataType": "String", "StringValue": value} for name, value in values.items()}


def brute_force(subscriptions, attributes, body):
    """What a fan-out without an index computes: every policy, one by one."""
    views = {"MessageAttributes": attributes_view(attributes), "MessageBody": body_view(body)}
    return tuple(
        key
        for key, policy in subscriptions
        if policy is None or policy.matches(views[policy.scope])
    )


def test_one_thousand_exact_policies_cost_one_evaluation():
    index: SubscriptionFilterIndex[str] = SubscriptionFilterIndex()
    for i in range(1_000):
        index.add(f"sub-{i}", compiled({"customer": [f"c{i}"], "kind": ["order", "refund"]}))
    selection = index.match(attrs(customer="c7", kind="order"), "")
    assert selection.matched == ("sub-7",)
    assert selection.evaluations == 1
    assert selection.filtered_out == 999
    assert index.match(attrs(customer="nobody", kind="order"), "").evaluations == 0
    assert index.match({}, "").evaluations == 0


def test_a_mixed_topic_of_one_thousand_subscriptions_with_few_matches():
    # 700 exact-anchored policies over 50 event types, 200 prefix-only policies (presence
    # anchor on "region"), 50 body-scope policies, 50 exists:false-only policies (scanned).
    index: SubscriptionFilterIndex[int] = SubscriptionFilterIndex()
    subscriptions: list[tuple[int, FilterPolicy | None]] = []
    for i in range(1_000):
        if i < 700:
            policy = compiled({"event": [f"e{i % 50}"], "amount": [{"numeric": [">", i]}]})
        elif i < 900:
            policy = compiled({"region": [{"prefix": f"eu-{i}"}]})
        elif i < 950:
            policy = compiled({"detail": {"event": [f"e{i}"]}}, "MessageBody")
        else:
            policy = compiled({f"missing-{i}": [{"exists": False}]})
        index.add(i, policy)
        subscriptions.append((i, policy))
    attributes = {
        "event": {"DataType": "String", "StringValue": "e3"},
        "amount": {"DataType": "Number", "StringValue": "500"},
    }
    body = json.dumps({"detail": {"event": "e903"}})
    selection = index.match(attributes, body)
    assert selection.matched == brute_force(subscriptions, attributes, body)
    # 14 policies have event e3 (i = 3, 53, ... 653), the 10 with i < 500 match; the body
    # policy of 903 matches; the 50 exists:false policies all match. Evaluated: 14 + 1 + 50.
    assert len(selection.matched) == 10 + 1 + 50
    assert selection.evaluations == 14 + 1 + 50
    assert selection.filtered_out == 1_000 - 61


def test_presence_anchors_skip_policies_whose_key_is_absent():
    index: SubscriptionFilterIndex[str] = SubscriptionFilterIndex()
    index.add("prefix", compiled({"region": [{"prefix": "eu-"}]}))
    index.add("anything-but", compiled({"region": [{"anything-but": "us-east-1"}]}))
    assert index.match(attrs(other="x"), "").evaluations == 0
    selection = index.match(attrs(region="eu-west-1"), "")
    assert selection.matched == ("prefix", "anything-but")
    assert selection.evaluations == 2


def test_unfiltered_subscriptions_always_match_and_order_is_insertion_order():
    index: SubscriptionFilterIndex[str] = SubscriptionFilterIndex()
    index.add("b", None)
    index.add("a", compiled({"k": ["v"]}))
    index.add("c", None)
    assert index.match(attrs(k="v"), "").matched == ("b", "a", "c")
    assert index.match(attrs(k="w"), "").matched == ("b", "c")
    assert len(index) == 3
    assert "a" in index


def test_remove_and_replace():
    index: SubscriptionFilterIndex[str] = SubscriptionFilterIndex()
    index.add("s", compiled({"k": ["v"]}))
    index.add("s", compiled({"k": ["w"]}))  # SetSubscriptionAttributes replaces the policy
    assert index.match(attrs(k="v"), "").matched == ()
    assert index.match(attrs(k="w"), "").matched == ("s",)
    index.remove("s")
    index.remove("never-added")
    assert index.match(attrs(k="w"), "").matched == ()
    assert len(index) == 0


def test_ids_beyond_2_to_the_53_are_filed_under_their_own_text():
    # Floats make 12345678901234567 and 12345678901234568 one key; each id's text is its own.
    index: SubscriptionFilterIndex[str] = SubscriptionFilterIndex()
    for name, scope in (("attr", "MessageAttributes"), ("body", "MessageBody")):
        for last in "78":
            index.add(f"{name}-{last}", compiled({"id": [int("1234567890123456" + last)]}, scope))
    for last in "78":
        number = {"id": {"DataType": "Number", "StringValue": "1234567890123456" + last}}
        selection = index.match(number, '{"id": 1234567890123456' + last + "}")
        assert selection.matched == (f"attr-{last}", f"body-{last}")
        assert selection.evaluations == 2
    spelt_otherwise = {"id": {"DataType": "Number", "StringValue": "1.2345678901234567E16"}}
    assert index.match(spelt_otherwise, '{"id": 1.2345678901234567e16}').matched == ()


def test_a_body_that_is_not_json_costs_nothing():
    index: SubscriptionFilterIndex[str] = SubscriptionFilterIndex()
    index.add("s", compiled({"k": [{"exists": False}]}, "MessageBody"))
    selection = index.match({}, "not json")
    assert selection == type(selection)((), 0, 1)


subscription_lists = st.lists(
    st.one_of(
        st.none(),
        policies(body=False).map(lambda p: (p, "MessageAttributes")),
        policies(body=True).map(lambda p: (p, "MessageBody")),
    ),
    max_size=12,
)


@given(entries=subscription_lists, data=st.data())
def test_the_index_never_changes_the_answer(entries, data):
    # Messages are built near some subscription's policy, so that matches are common.
    by_scope = {
        scope: [p for e in entries if e and e[1] == scope for p in [e[0]]]
        for scope in ("MessageAttributes", "MessageBody")
    }
    near_attributes = [attributes_near(p) for p in by_scope["MessageAttributes"]]
    near_bodies = [bodies_near(p) for p in by_scope["MessageBody"]]
    attributes = data.draw(st.one_of(message_attributes, *near_attributes))
    body = data.draw(st.one_of(bodies(), *near_bodies))
    subscriptions: list[tuple[int, FilterPolicy | None]] = []
    for number, entry in enumerate(entries):
        if entry is None:
            subscriptions.append((number, None))
            continue
        policy, scope = entry
        try:
            subscriptions.append((number, compiled(policy, scope)))
        except SnsError:
            assume(False)
    index: SubscriptionFilterIndex[int] = SubscriptionFilterIndex()
    for key, policy in subscriptions:
        index.add(key, policy)
    # Remove some subscriptions again: removal must not leave stale entries behind.
    removed = (
        data.draw(st.sets(st.sampled_from([k for k, _ in subscriptions])))
        if subscriptions
        else set()
    )
    for key in removed:
        index.remove(key)
    remaining = [(key, policy) for key, policy in subscriptions if key not in removed]
    selection = index.match(attributes, body)
    assert selection.matched == brute_force(remaining, attributes, body)
    filtered = sum(1 for _, policy in remaining if policy is not None)
    assert selection.evaluations <= sum(
        len(policy.branches) for _, policy in remaining if policy is not None
    )
    assert selection.filtered_out == filtered - sum(
        1 for key in selection.matched if dict(remaining)[key] is not None
    )


def test_the_body_is_walked_only_along_the_paths_policies_read():
    """A long key above many values used to cost a path string of that length per value:
    ~100 MB for one 56 KB body. Now the paths no policy reads are never built."""
    index: SubscriptionFilterIndex[str] = SubscriptionFilterIndex()
    index.add("kind", compiled({"kind": ["order"]}, "MessageBody"))
    index.add("absent", compiled({"detail": {"k": [{"exists": False}]}}, "MessageBody"))
    long_key = "k" * 32_000
    body = json.dumps({"kind": "order", long_key: {str(i): 0 for i in range(3_000)}})
    tracemalloc.start()
    try:
        selection = index.match({}, body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert selection.matched == ("kind", "absent")
    assert peak < 8 * len(body)  # the parsed document, not 3,000 copies of the key
    assert body_view(body, path_prefixes({"kind", "detail.k"})) == {"kind": ("order",)}


def test_a_body_whose_values_no_policy_reads_still_meets_exists_false():
    index: SubscriptionFilterIndex[str] = SubscriptionFilterIndex()
    index.add("s", compiled({"k": [{"exists": False}]}, "MessageBody"))
    assert index.match({}, '{"other": 1}').matched == ("s",)
    # No value anywhere: as a message without attributes, it matches no policy.
    assert index.match({}, '{"other": {"deeper": []}}').matched == ()
    assert index.match({}, "{}").matched == ()


@given(body=bodies(), paths=st.sets(st.sampled_from((*KEYS, "d", f"{NESTED}.a", f"{NESTED}.b"))))
def test_a_pruned_body_view_is_the_full_view_restricted_to_the_paths(body, paths):
    full = body_view(body)
    pruned = body_view(body, path_prefixes(paths))
    if full is None:
        assert pruned is None
    else:
        assert pruned == {path: values for path, values in full.items() if path in paths}


class _Counted:
    """A predicate that counts what it is asked: once per value, or once per value set."""

    BUDGET = 1_000  # per-value calls before giving up (the old loop made 24 million)

    def __init__(self, inner: Predicate, counts: Counter[str]) -> None:
        self.inner = inner
        self.counts = counts

    def __call__(self, value: Scalar) -> bool:
        self.counts["per value"] += 1
        if self.counts["per value"] > self.BUDGET:
            raise AssertionError("a predicate call per array element")
        return self.inner(value)

    def any_in(self, values: ManyValues) -> bool:
        self.counts["any in"] += 1
        return self.inner.any_in(values)


def _counted(policy: FilterPolicy, counts: Counter[str]) -> FilterPolicy:
    def wrap(test: KeyTest) -> KeyTest:
        wrapped = tuple(_Counted(predicate, counts) for predicate in test.predicates)
        return replace(test, predicates=cast("tuple[Predicate, ...]", wrapped))

    branches = tuple(Branch(tuple(map(wrap, branch.tests))) for branch in policy.branches)
    return replace(policy, branches=branches)


def test_a_long_array_costs_each_condition_one_question_not_one_per_element():
    """200 subscriptions with a prefix and a numeric condition on a path, one message with
    60,000 numbers there: the conditions used to scan every element (24 million predicate
    calls, 6.5 s on the event loop). Each now asks the path's summaries once."""
    counts: Counter[str] = Counter()
    index: SubscriptionFilterIndex[int] = SubscriptionFilterIndex()
    for i in range(200):
        policy = {"a": [{"prefix": f"zz{i}"}, {"numeric": [">", 999_999_999]}]}
        index.add(i, _counted(compiled(policy, "MessageBody"), counts))
    numbers = list(range(60_000))
    selection = index.match({}, json.dumps({"a": numbers}))
    assert selection.matched == ()
    assert selection.evaluations == 200
    assert counts == {"any in": 400}
    counts.clear()
    selection = index.match({}, json.dumps({"a": [*numbers, 10**9]}))
    assert selection.matched == tuple(range(200))
    assert counts == {"any in": 400}


def test_an_array_repeating_a_literal_collects_its_bucket_once():
    """200 subscriptions filed under one literal, one message repeating it 60,000 times: the
    bucket was collected once per element (12 million entries, ~100 MB and seconds)."""
    index: SubscriptionFilterIndex[int] = SubscriptionFilterIndex()
    for i in range(200):
        index.add(i, compiled({"a": ["x"], "b": [f"y{i}"]}, "MessageBody"))
    body = json.dumps({"a": ["x"] * 60_000})
    tracemalloc.start()
    try:
        selection = index.match({}, body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert selection.matched == ()
    assert selection.evaluations == 200
    assert peak < 40 * len(body)  # the document and its view, not 200 copies of the array
