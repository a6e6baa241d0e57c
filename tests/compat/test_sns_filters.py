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
from botocore.exceptions import ClientError

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
    # subscription-filter-policy-constraints: quotes and backslashes double-escaped.
    ("double-escaped", {"q": ['say \\"hi\\"', "a\\\\b"]},
     [{"q": s('say "hi"')}, {"q": s("a\\b")}, {"q": array(['say "hi"'])}],
     [{"q": s('say \\"hi\\"')}, {"q": s("a\\\\b")}]),
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
    ("suffix", {"f": {"name": [{"suffix": ".png"}]}}, [{"f": {"name": "a.png"}}],
     [{"f": {"name": "a.png.bak"}}, {"name": "a.png"}]),
    ("equals-ignore-case", {"tier": [{"equals-ignore-case": "gold"}]},
     [{"tier": "GOLD"}, {"tier": ["x", "Gold"]}], [{"tier": "golden"}]),
    ("exists-true", {"coupon": [{"exists": True}]}, [{"coupon": "c1"}, {"coupon": 0}],
     [{"coupon": None, "x": 1}, {"coupon": "", "x": 1}, {"x": 1}, {"x": {"coupon": "c1"}}]),
    ("anything-but-value", {"tier": [{"anything-but": "gold"}]}, [{"tier": "Gold"}],
     [{"tier": "gold"}, {"x": "silver"}]),
    ("anything-but-number", {"price": [{"anything-but": 0}]}, [{"price": 1}, {"price": 0.1}],
     [{"price": 0}, {"price": 0.0}]),
    ("anything-but-prefix", {"src": [{"anything-but": {"prefix": "int-"}}]},
     [{"src": "ext-1"}, {"src": "INT-1"}], [{"src": "int-1"}, {"x": "ext-1"}]),
    ("numeric-equals", {"price": [{"numeric": ["=", 301.5]}]}, [{"price": 301.5}],
     [{"price": 301.51}, {"price": "301.5"}]),
    ("numeric-range", {"price": [{"numeric": [">", 0, "<=", 150]}]},
     [{"price": 150}, {"price": 0.5}], [{"price": 0}, {"price": 150.5}, {"price": True}]),
    ("numeric-precision", {"price": [{"numeric": [">", 100]}]}, [{"price": 100.00001}],
     [{"price": 100.000009}, {"price": 2000000000}]),
    ("cidr-ipv4", {"ip": [{"cidr": "10.0.0.0/24"}]}, [{"ip": "10.0.0.255"}],
     [{"ip": "10.0.1.0"}, {"ip": 10}]),
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


# One topic, one queue per body-scope operator: every message goes to exactly the queues
# whose policy it satisfies (worked out by hand from the AWS Developer Guide, not by the
# broker's matcher), through the topic's filter index and one fan-out per publish.
BODY_QUEUES = {
    "suffix": {"kind": [{"suffix": ".png"}]},
    "equals-ignore-case": {"tier": [{"equals-ignore-case": "gold"}]},
    "exists-true": {"coupon": [{"exists": True}]},
    "anything-but-value": {"tier": [{"anything-but": "gold"}]},
    "anything-but-number": {"price": [{"anything-but": 0}]},
    "anything-but-prefix": {"src": [{"anything-but": {"prefix": "int-"}}]},
    "numeric-equals": {"price": [{"numeric": ["=", 3]}]},
    "numeric-range": {"price": [{"numeric": [">", 0, "<=", 150]}]},
    "cidr": {"ip": [{"cidr": "10.0.0.0/24"}]},
}
BODY_MESSAGES = {
    "A": '{"id": "A", "kind": "a.png", "tier": "GOLD", "price": 150, "ip": "10.0.0.7", '
    '"src": "ext-1", "coupon": "c1"}',
    "B": '{"id": "B", "kind": "a.jpg", "tier": "gold", "price": 0, "ip": "10.1.0.1", '
    '"src": "int-1"}',
    "C": '{"id": "C", "kind": "x.png.bak", "tier": "silver", "price": 3, "ip": "10.0.0.255", '
    '"src": "INT-2", "coupon": null}',
    "D": '{"id": "D", "order": {"kind": "b.png", "price": 3, "tier": "gold"}}',
    "E": '{"id": "E", "tier": ["x", "Gold"], "kind": ["a.txt", "b.png"], "price": 7}',
    "F": '{"id": "F", "price": 3e0, "ip": "10.0.0.0"}',
    "G": "not json",
    "H": '[{"id": "H", "price": 3}]',
}
BODY_EXPECTED = {
    "suffix": {"A", "E"},
    "equals-ignore-case": {"A", "B", "E"},
    "exists-true": {"A"},
    "anything-but-value": {"A", "C", "E"},
    "anything-but-number": {"A", "C", "E", "F"},
    "anything-but-prefix": {"A", "C"},
    "numeric-equals": {"C", "F"},
    "numeric-range": {"A", "C", "E", "F"},
    "cidr": {"A", "C", "F"},
}


def test_body_scope_operators_route_each_message_to_exactly_its_queues(
    shared_broker: BrokerThread,
) -> None:
    sns = sns_client(shared_broker.endpoint)
    sqs = shared_broker.client("json")
    unique = next(_unique)
    topic = sns.create_topic(Name=f"body-routes-{unique}")["TopicArn"]
    urls = {}
    for name, policy in BODY_QUEUES.items():
        url = sqs.create_queue(QueueName=f"body-routes-{unique}-{name}")["QueueUrl"]
        sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=queue_arn(sqs, url),
            Attributes={
                "RawMessageDelivery": "true",
                "FilterPolicyScope": "MessageBody",
                "FilterPolicy": json.dumps(policy),
            },
        )
        urls[name] = url
    for body in BODY_MESSAGES.values():
        sns.publish(TopicArn=topic, Message=body)
    got = {}
    for name, url in urls.items():
        received = receive_all(sqs, url, len(BODY_EXPECTED[name]), timeout=5)
        got[name] = {json.loads(m["Body"])["id"] for m in received}
        assert len(received) == len(got[name])  # each message once
        assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []
    assert got == BODY_EXPECTED


@pytest.mark.parametrize("scope", ["MessageBody", "MessageAttributes"])
def test_ids_beyond_2_to_the_53_route_by_their_exact_digits(
    shared_broker: BrokerThread, scope: str
) -> None:
    # 12345678901234567 and 12345678901234568 are one float: numbers beyond AWS's -10^9 ..
    # 10^9 match a literal only by their text, so each id reaches only its own queue.
    sns = sns_client(shared_broker.endpoint)
    sqs = shared_broker.client("json")
    unique = next(_unique)
    topic = sns.create_topic(Name=f"big-ids-{unique}")["TopicArn"]
    ids = {"7": "12345678901234567", "8": "12345678901234568"}
    urls = {}
    for last, digits in ids.items():
        url = sqs.create_queue(QueueName=f"big-ids-{unique}-{last}")["QueueUrl"]
        sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=queue_arn(sqs, url),
            Attributes={
                "RawMessageDelivery": "true",
                "FilterPolicyScope": scope,
                "FilterPolicy": f'{{"id": [{digits}]}}',
            },
        )
        urls[last] = url
    # The same number spelt another way is another text: it reaches neither queue.
    for digits in [*ids.values(), "1.2345678901234567E16"]:
        sns.publish(
            TopicArn=topic,
            Message=f'{{"id": {digits}}}',
            MessageAttributes={"id": n(digits)},
        )
    for last, url in urls.items():
        received = receive_all(sqs, url, 1, timeout=5)
        assert [m["Body"] for m in received] == [f'{{"id": {ids[last]}}}']
        assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []


def test_numeric_operands_beyond_one_billion_are_refused(shared_broker: BrokerThread) -> None:
    sns = sns_client(shared_broker.endpoint)
    sqs = shared_broker.client("json")
    unique = next(_unique)
    topic = sns.create_topic(Name=f"filters-range-{unique}")["TopicArn"]
    endpoint = queue_arn(sqs, sqs.create_queue(QueueName=f"filters-range-{unique}")["QueueUrl"])
    beyond = json.dumps({"price": [{"numeric": [">", 0, "<", 1_000_000_001]}]})
    reason = "FilterPolicy: Value must be between -1.0E9 and 1.0E9, inclusive"
    with pytest.raises(ClientError) as caught:
        sns.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=endpoint, Attributes={"FilterPolicy": beyond}
        )
    error = caught.value.response["Error"]
    assert error["Code"] == "InvalidParameter"
    assert error["Message"] == f"Invalid parameter: Attributes Reason: {reason}"
    arn = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=endpoint)["SubscriptionArn"]
    with pytest.raises(ClientError) as caught:
        sns.set_subscription_attributes(
            SubscriptionArn=arn, AttributeName="FilterPolicy", AttributeValue=beyond
        )
    error = caught.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("InvalidParameter", f"Invalid parameter: {reason}")
    # At the edge it is accepted.
    edge = json.dumps({"price": [{"numeric": [">=", -1_000_000_000, "<=", 1_000_000_000]}]})
    sns.set_subscription_attributes(
        SubscriptionArn=arn, AttributeName="FilterPolicy", AttributeValue=edge
    )


def test_filtered_out_is_counted(shared_broker: BrokerThread) -> None:
    sns, topic, _ = _subscribed(shared_broker, {"a": ["1"]}, "MessageAttributes")
    sns.publish(TopicArn=topic, Message="m", MessageAttributes={"a": s("2")})
    name = topic.rsplit(":", 1)[1]
    family = shared_broker.metrics()["wharf_sns_notifications_filtered_out"]
    counts = {sample.labels["topic"]: sample.value for sample in family.samples}
    assert counts[name] == 1
