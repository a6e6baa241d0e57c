"""Filter policies end to end: every operator, both scopes, through boto3 and real queues.

Each case subscribes a raw-delivery queue with the policy, publishes messages that must match
and messages that must not, and reads the queue back. Publish returns only once the deliveries
are durable and receivable, so the queue holds exactly the matches the moment it returns.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from tests.support.broker import BrokerThread
from tests.support.sns import queue_arn, receive_all, sns_client

_unique = itertools.count()


def s(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def n(value: str) -> dict[str, str]:
    return {"DataType": "Number", "StringValue": value}


def array(values: list[Any]) -> dict[str, str]:
    return {"DataType": "String.Array", "StringValue": json.dumps(values)}


# (case id, policy, [matching attribute maps], [non-matching attribute maps])
ATTRIBUTE_CASES = [
    ("exact-string", {"store": ["example_corp"]}, [{"store": s("example_corp")}],
     [{"store": s("Example_corp")}, {"other": s("example_corp")}]),
    ("exact-number", {"price": [100]}, [{"price": n("100")}, {"price": n("100.0")}],
     [{"price": n("101")}, {"price": s("100")}]),
    ("prefix", {"kind": [{"prefix": "ord"}]}, [{"kind": s("order-1")}], [{"kind": s("bill")}]),
    ("suffix", {"kind": [{"suffix": ".png"}]}, [{"kind": s("a.png")}], [{"kind": s("a.jpg")}]),
    ("equals-ignore-case", {"kind": [{"equals-ignore-case": "ORDER"}]},
     [{"kind": s("order")}, {"kind": s("OrDeR")}], [{"kind": s("orders")}]),
    ("anything-but-value", {"kind": [{"anything-but": "x"}]}, [{"kind": s("y")}],
     [{"kind": s("x")}, {"other": s("y")}]),
    ("anything-but-list", {"kind": [{"anything-but": ["x", "y"]}]}, [{"kind": s("z")}],
     [{"kind": s("y")}]),
    ("anything-but-prefix", {"kind": [{"anything-but": {"prefix": "int-"}}]},
     [{"kind": s("ext-1")}], [{"kind": s("int-1")}]),
    ("numeric-range", {"price": [{"numeric": [">", 0, "<=", 150]}]},
     [{"price": n("150")}, {"price": n("0.5")}], [{"price": n("151")}, {"price": n("0")}]),
    ("numeric-equals", {"price": [{"numeric": ["=", 3]}]}, [{"price": n("3")}],
     [{"price": n("4")}]),
    ("exists-true", {"kind": [{"exists": True}]}, [{"kind": s("any")}], [{"other": s("1")}]),
    ("exists-false", {"kind": [{"exists": False}]}, [{"other": s("1")}], [{"kind": s("1")}]),
    ("cidr", {"ip": [{"cidr": "10.0.0.0/24"}]}, [{"ip": s("10.0.0.7")}],
     [{"ip": s("10.1.0.1")}]),
    ("or", {"$or": [{"a": ["1"]}, {"b": ["2"]}]}, [{"b": s("2")}, {"a": s("1")}],
     [{"a": s("3")}]),
    ("and-across-keys", {"a": ["1"], "b": [{"prefix": "x"}]},
     [{"a": s("1"), "b": s("xy")}], [{"a": s("1"), "b": s("yx")}, {"a": s("1")}]),
    ("string-array", {"tags": ["red"]}, [{"tags": array(["blue", "red"])}],
     [{"tags": array(["blue"])}]),
]  # fmt: skip

# (case id, policy, [matching bodies], [non-matching bodies])
BODY_CASES = [
    ("nested", {"order": {"status": ["paid"]}}, [{"order": {"status": "paid"}}],
     [{"order": {"status": "open"}}, {"status": "paid"}]),
    ("arrays", {"items": {"sku": ["a"]}}, [{"items": [{"sku": "b"}, {"sku": "a"}]}],
     [{"items": [{"sku": "b"}]}]),
    ("dotted-key", {"a.b": ["c"]}, [{"a.b": "c"}, {"a": {"b": "c"}}], [{"a": {"b": "d"}}]),
    ("true-and-null", {"flag": [True], "none": [None]}, [{"flag": True, "none": None}],
     [{"flag": False, "none": None}, {"flag": "true", "none": None}]),
    ("numeric", {"n": [{"numeric": [">=", 10]}]}, [{"n": 10}, {"n": 11.5}], [{"n": 9}]),
    ("prefix", {"s": [{"prefix": "ab"}]}, [{"s": "abc"}], [{"s": "bab"}]),
    ("anything-but", {"s": [{"anything-but": ["x"]}]}, [{"s": "y"}], [{"s": "x"}]),
    ("exists-false", {"s": [{"exists": False}], "t": ["1"]}, [{"t": "1"}],
     [{"t": "1", "s": "x"}]),
    ("cidr", {"ip": [{"cidr": "fe80::/64"}]}, [{"ip": "fe80::1"}], [{"ip": "fe81::1"}]),
    ("or", {"$or": [{"a": [1]}, {"b": {"c": ["d"]}}]}, [{"b": {"c": "d"}}], [{"b": {"c": "e"}}]),
]  # fmt: skip


def _subscribed(broker: BrokerThread, policy: Any, scope: str) -> tuple[Any, str, str]:
    sns = sns_client(broker.endpoint)
    sqs = broker.client("json")
    unique = next(_unique)
    topic = sns.create_topic(Name=f"filters-{unique}")["TopicArn"]
    url = sqs.create_queue(QueueName=f"filters-{unique}")["QueueUrl"]
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=queue_arn(sqs, url),
        Attributes={
            "RawMessageDelivery": "true",
            "FilterPolicyScope": scope,
            "FilterPolicy": json.dumps(policy),
        },
    )
    return sns, topic, url


@pytest.mark.parametrize(
    ("policy", "matching", "other"),
    [case[1:] for case in ATTRIBUTE_CASES],
    ids=[case[0] for case in ATTRIBUTE_CASES],
)
def test_attribute_scope(
    shared_broker: BrokerThread, policy: Any, matching: list[Any], other: list[Any]
) -> None:
    sns, topic, url = _subscribed(shared_broker, policy, "MessageAttributes")
    for index, attributes in enumerate(matching):
        sns.publish(TopicArn=topic, Message=f"match-{index}", MessageAttributes=attributes)
    for index, attributes in enumerate(other):
        sns.publish(TopicArn=topic, Message=f"other-{index}", MessageAttributes=attributes)
    sqs = shared_broker.client("json")
    received = receive_all(sqs, url, len(matching), timeout=5)
    assert sorted(m["Body"] for m in received) == [f"match-{i}" for i in range(len(matching))]
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []


@pytest.mark.parametrize(
    ("policy", "matching", "other"),
    [case[1:] for case in BODY_CASES],
    ids=[case[0] for case in BODY_CASES],
)
def test_body_scope(
    shared_broker: BrokerThread, policy: Any, matching: list[Any], other: list[Any]
) -> None:
    sns, topic, url = _subscribed(shared_broker, policy, "MessageBody")
    for body in [*matching, *other, "not json", "[1, 2]"]:
        sns.publish(TopicArn=topic, Message=json.dumps(body) if not isinstance(body, str) else body)
    sqs = shared_broker.client("json")
    received = receive_all(sqs, url, len(matching), timeout=5)
    expected = sorted(json.dumps(body) for body in matching)
    assert sorted(m["Body"] for m in received) == expected
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []


def test_filtered_out_is_counted(shared_broker: BrokerThread) -> None:
    sns, topic, _ = _subscribed(shared_broker, {"a": ["1"]}, "MessageAttributes")
    sns.publish(TopicArn=topic, Message="m", MessageAttributes={"a": s("2")})
    name = topic.rsplit(":", 1)[1]
    family = shared_broker.metrics()["wharf_sns_notifications_filtered_out"]
    counts = {sample.labels["topic"]: sample.value for sample in family.samples}
    assert counts[name] == 1
