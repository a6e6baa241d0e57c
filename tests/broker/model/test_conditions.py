"""IAM condition blocks: examples from IAM's documented rules, and properties over them."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.conditions import (
    TIME_KEYS,
    ConditionError,
    check,
    holds,
    keys_read,
    request_context,
)

NOW_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
ALICE = "arn:aws:iam::000000000000:user/team/alice"
TOPIC = "arn:aws:sns:us-east-1:111122223333:orders"


def context(**extra: Any) -> dict[str, tuple[str, ...]]:
    base = request_context(
        now_ms=NOW_MS,
        secure=True,
        source_ip="192.0.2.7",
        principal_arn=ALICE,
        principal_account="000000000000",
        source_arn=TOPIC,
        source_account="111122223333",
    )
    base.update({k.lower(): tuple(v) if isinstance(v, list) else (v,) for k, v in extra.items()})
    return base


# ---------------------------------------------------------------------- examples


def test_the_request_context_keys():
    keys = context()
    assert keys["aws:securetransport"] == ("true",)
    assert keys["aws:currenttime"] == ("2023-11-14T22:13:20Z",)
    assert keys["aws:epochtime"] == ("1700000000",)
    assert keys["aws:username"] == ("alice",)
    anonymous = request_context(
        now_ms=NOW_MS, secure=False, source_ip=None, principal_arn=None, principal_account=None
    )
    assert set(anonymous) == {"aws:securetransport", "aws:currenttime", "aws:epochtime"}


def test_a_service_request_carries_its_source_keys_and_no_principal_keys():
    # SNS delivering to a queue: the topic's ARN and account, over HTTPS, at a time.
    keys = request_context(
        now_ms=NOW_MS,
        secure=True,
        source_ip=None,
        principal_arn=None,
        principal_account=None,
        source_arn=TOPIC,
        source_account="111122223333",
    )
    assert set(keys) == {
        "aws:securetransport",
        "aws:currenttime",
        "aws:epochtime",
        "aws:sourcearn",
        "aws:sourceaccount",
    }
    assert holds({"ArnEquals": {"aws:SourceArn": TOPIC}}, keys)
    assert holds({"StringEquals": {"aws:SourceAccount": "111122223333"}}, keys)
    assert holds({"Null": {"aws:PrincipalArn": "true"}}, keys)


def test_the_keys_a_block_reads():
    block = {
        "ArnLike": {"aws:SourceArn": "arn:*", "AWS:SourceAccount": "1"},
        "DateGreaterThan": {"aws:CurrentTime": "2024-01-01T00:00:00Z"},
    }
    assert keys_read(block) == {"aws:sourcearn", "aws:sourceaccount", "aws:currenttime"}
    assert keys_read(block) & TIME_KEYS == {"aws:currenttime"}
    assert keys_read("not a block") == frozenset()
    assert keys_read({"StringEquals": "not keys"}) == frozenset()


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"Bool": {"aws:SecureTransport": "true"}}, True),
        ({"Bool": {"aws:SecureTransport": False}}, False),
        ({"StringEquals": {"aws:PrincipalAccount": ["1", "000000000000"]}}, True),
        ({"StringEquals": {"AWS:PRINCIPALACCOUNT": "000000000000"}}, True),  # keys: any case
        ({"StringEquals": {"aws:username": "ALICE"}}, False),
        ({"StringEqualsIgnoreCase": {"aws:username": "ALICE"}}, True),
        ({"StringNotEqualsIgnoreCase": {"aws:username": "ALICE"}}, False),
        ({"StringLike": {"aws:PrincipalArn": "arn:aws:iam::*:user/team/*"}}, True),
        ({"StringNotLike": {"aws:PrincipalArn": "*:role/*"}}, True),
        ({"ArnEquals": {"aws:SourceArn": TOPIC}}, True),
        ({"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:111122223333:*"}}, True),
        ({"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:111122223333"}}, False),  # 5 parts
        ({"ArnNotEquals": {"aws:SourceArn": TOPIC}}, False),
        ({"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}}, True),
        ({"IpAddress": {"aws:SourceIp": "::1/128"}}, False),
        ({"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.0.2.7"]}}, False),
        ({"NumericLessThan": {"aws:EpochTime": 1700000001}}, True),
        ({"NumericGreaterThanEquals": {"aws:EpochTime": "1700000000"}}, True),
        ({"NumericNotEquals": {"aws:EpochTime": "1700000000"}}, False),
        ({"DateGreaterThan": {"aws:CurrentTime": "2023-01-01T00:00:00Z"}}, True),
        ({"DateLessThan": {"aws:CurrentTime": "2023-11-14"}}, False),
        ({"DateEquals": {"aws:EpochTime": "2023-11-14T22:13:20Z"}}, True),
        ({"Null": {"aws:SourceVpc": "true"}}, True),
        ({"Null": {"aws:SourceArn": "true"}}, False),
        ({"StringEquals": {"aws:SourceVpc": "vpc-1"}}, False),  # absent: false
        # Absent: a key matches nothing, so a negated operator holds (IAM's "Condition
        # operators", Important): a Deny-unless guard denies requests without the key.
        ({"StringNotEquals": {"aws:SourceVpc": "vpc-1"}}, True),
        ({"NotIpAddress": {"aws:SourceVpce": "10.0.0.0/8"}}, True),
        ({"StringEqualsIfExists": {"aws:SourceVpc": "vpc-1"}}, True),
        ({"ForAllValues:StringEquals": {"aws:SourceVpc": "vpc-1"}}, True),  # empty set
        ({"ForAnyValue:StringEquals": {"aws:SourceVpc": "vpc-1"}}, False),
        # Operators and keys are ANDed.
        ({"Bool": {"aws:SecureTransport": "true"}, "StringEquals": {"aws:username": "x"}}, False),
        ({"StringEquals": {"aws:username": "alice", "aws:SourceAccount": "9"}}, False),
    ],
)
def test_examples(block, expected):
    check(block)
    assert holds(block, context()) is expected


def test_multi_valued_keys():
    tags = context(**{"aws:TagKeys": ["env", "team"]})
    assert holds({"ForAllValues:StringEquals": {"aws:TagKeys": ["env", "team", "x"]}}, tags)
    assert not holds({"ForAllValues:StringEquals": {"aws:TagKeys": ["env"]}}, tags)
    assert holds({"ForAnyValue:StringEquals": {"aws:TagKeys": ["env"]}}, tags)
    assert not holds({"ForAnyValue:StringLike": {"aws:TagKeys": ["x*"]}}, tags)


@pytest.mark.parametrize(
    "block",
    [
        {"StringSoundsLike": {"k": "v"}},
        {"NullIfExists": {"k": "true"}},
        {"ForAnyValue:Null": {"k": "true"}},
        {"Bool": {"k": "maybe"}},
        {"NumericEquals": {"k": "one"}},
        {"DateEquals": {"k": "yesterday"}},
        {"IpAddress": {"k": "300.0.0.1"}},
        {"StringEquals": {"k": [["nested"]]}},
        {"StringEquals": {"k": []}},
        {"StringEquals": "v"},
        "StringEquals",
    ],
)
def test_check_refuses(block):
    with pytest.raises(ConditionError):
        check(block)


# ---------------------------------------------------------------------- properties

values = st.text(alphabet="ab*?:", max_size=6)
keys = st.sampled_from(["k", "aws:username", "aws:SourceArn"])
contexts = st.dictionaries(
    st.sampled_from(["k", "aws:username", "aws:sourcearn"]),
    st.lists(st.text(alphabet="ab:", max_size=5), max_size=3).map(tuple),
)
patterns = st.lists(values, min_size=1, max_size=3)
string_operators = st.sampled_from(
    [
        ("StringEquals", "StringNotEquals"),
        ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"),
        ("StringLike", "StringNotLike"),
        ("ArnLike", "ArnNotLike"),
        ("ArnEquals", "ArnNotEquals"),
    ]
)


@given(pair=string_operators, key=keys, listed=patterns, value=st.text(alphabet="ab:", max_size=5))
def test_negated_operators_are_the_negation_for_a_present_single_value(pair, key, listed, value):
    positive, negative = pair
    request = {key.lower(): (value,)}
    assert holds({negative: {key: listed}}, request) is not holds(
        {positive: {key: listed}}, request
    )


NEGATED = frozenset(
    {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotLike", "ArnNotEquals"}
)


@given(pair=string_operators, key=keys, listed=patterns, request=contexts)
def test_if_exists_on_an_absent_key_is_true_and_otherwise_changes_nothing(
    pair, key, listed, request
):
    for operator in pair:
        plain = holds({operator: {key: listed}}, request)
        if_exists = holds({operator + "IfExists": {key: listed}}, request)
        if request.get(key.lower()):
            assert if_exists is plain
        else:
            assert if_exists is True
            assert plain is (operator in NEGATED)  # "the right key is not present": true


@given(pair=string_operators, key=keys, listed=patterns)
def test_for_all_values_of_nothing_is_true_and_for_any_value_is_false(pair, key, listed):
    for operator in pair:
        for request in ({}, {key.lower(): ()}):
            assert holds({f"ForAllValues:{operator}": {key: listed}}, request) is True
            assert holds({f"ForAnyValue:{operator}": {key: listed}}, request) is False


@given(key=keys, listed=patterns, request=contexts)
def test_string_like_agrees_with_fnmatch(key, listed, request):
    # fnmatch also reads [...] as a class; the generated patterns never contain brackets.
    present = request.get(key.lower())
    expected = bool(present) and any(
        fnmatch.fnmatchcase(v, p) for v in present or () for p in listed
    )
    assert holds({"StringLike": {key: listed}}, request) is expected


@given(
    first=st.tuples(string_operators, keys, patterns),
    second=st.tuples(string_operators, keys, patterns),
    request=contexts,
)
def test_a_block_is_the_conjunction_of_its_conditions(first, second, request):
    (op1, _), key1, listed1 = first
    (_, op2), key2, listed2 = second
    one = holds({op1: {key1: listed1}}, request)
    two = holds({op2: {key2: listed2}}, request)
    block = {op1: {key1: listed1}, op2: {key2: listed2}} if op1 != op2 else None
    if block is not None:
        assert holds(block, request) is (one and two)


@given(key=keys, listed=st.lists(st.sampled_from(["true", "false"]), min_size=1), request=contexts)
def test_null_asks_whether_the_key_is_absent(key, listed, request):
    absent = not request.get(key.lower())
    expected = ("true" in listed and absent) or ("false" in listed and not absent)
    assert holds({"Null": {key: listed}}, request) is expected


@given(block=st.dictionaries(st.text(max_size=12), st.dictionaries(keys, patterns), max_size=3))
def test_check_and_holds_agree_on_what_is_readable(block):
    try:
        check(block)
    except ConditionError:
        return
    holds(block, {})  # whatever check accepts, holds can evaluate


@given(
    first=st.tuples(string_operators, keys, patterns),
    second=st.tuples(string_operators, keys, patterns),
    request=contexts,
)
def test_only_the_keys_a_block_reads_decide_it(first, second, request):
    # What SNS's compiled queue policies rely on: keys a block does not read (the time, for
    # most) cannot change its answer.
    (op1, _), key1, listed1 = first
    (_, op2), key2, listed2 = second
    block = {op1: {key1: listed1}, op2: {key2: listed2}}
    read = keys_read(block)
    narrowed = {key: value for key, value in request.items() if key in read}
    assert holds(block, narrowed) is holds(block, request)
