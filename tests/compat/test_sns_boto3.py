"""boto3 against a real wharf-broker: every SNS action, fan-out, filters, raw and FIFO delivery.

SNS speaks only the query protocol; botocore's SNS model is used as shipped. Queues are read
back through boto3's SQS client, so each test checks what a real consumer would see.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections.abc import Iterator
from typing import Any

import botocore.exceptions
import pytest

from tests.support.broker import (
    ACCESS_KEY_ID,
    ACCOUNT_ID,
    REGION,
    SECRET_ACCESS_KEY,
    BrokerThread,
    broker_config,
    write_credentials,
)
from tests.support.sns import (
    check_signature,
    fetch,
    queue_arn,
    receive_all,
    sns_client,
)

_names = itertools.count()


@pytest.fixture
def sns(shared_broker: BrokerThread) -> Any:
    return sns_client(shared_broker.endpoint)


@pytest.fixture
def sqs_json(shared_broker: BrokerThread) -> Any:
    return shared_broker.client("json")


class Names:
    def __init__(self, stem: str) -> None:
        self.stem = stem

    def __call__(self, suffix: str = "") -> str:
        return f"{self.stem}-{next(_names)}{suffix}"


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Names:
    return Names("".join(c if c.isalnum() else "-" for c in request.node.originalname)[:60])


@pytest.fixture
def queue(sqs_json: Any, name: Names) -> Iterator[Any]:
    """``queue(fifo=False, **attributes)`` -> (url, arn)."""
    made: list[str] = []

    def make(fifo: bool = False, **attributes: str) -> tuple[str, str]:
        attrs = dict(attributes)
        if fifo:
            attrs["FifoQueue"] = "true"
        url = sqs_json.create_queue(QueueName=name(".fifo" if fifo else ""), Attributes=attrs)[
            "QueueUrl"
        ]
        made.append(url)
        return url, queue_arn(sqs_json, url)

    yield make
    for url in made:
        sqs_json.delete_queue(QueueUrl=url)


def code_of(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def message_of(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Message"])


def status_of(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> int:
    return int(excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"])


# ---------------------------------------------------------------------- topics


def test_create_topic_is_idempotent_and_checks_attributes(sns: Any, name: Names) -> None:
    topic_name = name()
    arn = sns.create_topic(Name=topic_name, Attributes={"DisplayName": "d"})["TopicArn"]
    assert arn == f"arn:aws:sns:us-east-1:{ACCOUNT_ID}:{topic_name}"
    assert sns.create_topic(Name=topic_name, Attributes={"DisplayName": "d"})["TopicArn"] == arn
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.create_topic(Name=topic_name, Attributes={"DisplayName": "other"})
    assert code_of(info) == "InvalidParameter"
    assert message_of(info) == (
        "Invalid parameter: Attributes Reason: Topic already exists with different attributes"
    )
    sns.delete_topic(TopicArn=arn)
    sns.delete_topic(TopicArn=arn)  # idempotent


@pytest.mark.parametrize(
    ("topic_name", "attributes"),
    [
        ("bad name", {}),
        ("x" * 257, {}),
        ("plain.fifo", {}),
        ("nofifo", {"FifoTopic": "true"}),
        ("", {}),  # AWS's answer to a name too short (LocalStack's AWS-validated snapshot)
    ],
)
def test_invalid_topic_names_are_refused(sns: Any, topic_name: str, attributes: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.create_topic(Name=topic_name, Attributes=attributes)
    assert code_of(info) == "InvalidParameter"
    assert message_of(info) == "Invalid parameter: Topic Name"


def test_list_topics_pages_by_100(shared_broker: BrokerThread, tmp_path: Any) -> None:
    with BrokerThread(broker_config(tmp_path / "data")) as broker:
        client = sns_client(broker.endpoint)
        arns = {client.create_topic(Name=f"t{i:03d}")["TopicArn"] for i in range(150)}
        first = client.list_topics()
        assert len(first["Topics"]) == 100
        second = client.list_topics(NextToken=first["NextToken"])
        assert "NextToken" not in second
        listed = {t["TopicArn"] for t in first["Topics"] + second["Topics"]}
        assert listed == arns
        paginated = client.get_paginator("list_topics").paginate()
        assert sum(len(page["Topics"]) for page in paginated) == 150
        # A token the broker did not issue for this listing resumes nowhere: it is refused.
        token = first["NextToken"]
        bare_key = base64.urlsafe_b64encode(min(arns).encode()).decode()
        tampered = token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")
        for forged in (bare_key, "eg==", tampered):
            with pytest.raises(botocore.exceptions.ClientError) as info:
                client.list_topics(NextToken=forged)
            assert (code_of(info), message_of(info)) == (
                "InvalidParameter",
                "Invalid parameter: NextToken",
            )
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.list_subscriptions(NextToken=token)
        assert message_of(info) == "Invalid parameter: NextToken"


def test_topic_attributes(sns: Any, name: Names) -> None:
    arn = sns.create_topic(Name=name())["TopicArn"]
    attributes = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
    assert attributes["TopicArn"] == arn
    assert attributes["Owner"] == ACCOUNT_ID
    assert attributes["SubscriptionsConfirmed"] == "0"
    assert json.loads(attributes["EffectiveDeliveryPolicy"])["http"]["defaultHealthyRetryPolicy"]
    sns.set_topic_attributes(TopicArn=arn, AttributeName="DisplayName", AttributeValue="Hi")
    sns.set_topic_attributes(
        TopicArn=arn, AttributeName="MaximumMessageSize", AttributeValue="2048"
    )
    attributes = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
    assert attributes["DisplayName"] == "Hi"
    assert attributes["MaximumMessageSize"] == "2048"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.set_topic_attributes(TopicArn=arn, AttributeName="Nope", AttributeValue="x")
    assert message_of(info) == "Invalid parameter: AttributeName"


def test_delivery_policies_out_of_range_are_refused_everywhere(sns: Any, name: Names) -> None:
    # 10**400 per second was accepted, and the first delivery with it crashed the broker.
    huge = {"maxReceivesPerSecond": 10**400}
    topic_policy = json.dumps({"http": {"defaultThrottlePolicy": huge}})
    own_policy = json.dumps({"throttlePolicy": huge})
    arn = sns.create_topic(Name=name())["TopicArn"]
    endpoint = "http://127.0.0.1:9/never-called"
    subscription = sns.subscribe(
        TopicArn=arn, Protocol="http", Endpoint=endpoint, ReturnSubscriptionArn=True
    )["SubscriptionArn"]
    calls = {
        "CreateTopic": lambda: sns.create_topic(
            Name=name(), Attributes={"DeliveryPolicy": topic_policy}
        ),
        "SetTopicAttributes": lambda: sns.set_topic_attributes(
            TopicArn=arn, AttributeName="DeliveryPolicy", AttributeValue=topic_policy
        ),
        "Subscribe": lambda: sns.subscribe(
            TopicArn=arn,
            Protocol="http",
            Endpoint=endpoint + "/2",
            Attributes={"DeliveryPolicy": own_policy},
        ),
        "SetSubscriptionAttributes": lambda: sns.set_subscription_attributes(
            SubscriptionArn=subscription, AttributeName="DeliveryPolicy", AttributeValue=own_policy
        ),
    }
    for action, call in calls.items():
        with pytest.raises(botocore.exceptions.ClientError) as info:
            call()
        assert code_of(info) == "InvalidParameter", action
        assert "maxReceivesPerSecond must be less than or equal to 1000000" in message_of(info)


def test_a_retry_policy_filling_the_hour_exactly_is_refused(sns: Any, name: Names) -> None:
    # Accepted before: the message went to the dead-letter queue without its one retry.
    arn = sns.create_topic(Name=name())["TopicArn"]
    hour = {"numRetries": 1, "minDelayTarget": 3600, "maxDelayTarget": 3600}
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.set_topic_attributes(
            TopicArn=arn,
            AttributeName="DeliveryPolicy",
            AttributeValue=json.dumps({"http": {"defaultHealthyRetryPolicy": hour}}),
        )
    assert code_of(info) == "InvalidParameter"
    assert "Total policy retry time must be less than 3600 seconds" in message_of(info)
    almost = {"numRetries": 1, "minDelayTarget": 3599, "maxDelayTarget": 3599}
    sns.set_topic_attributes(
        TopicArn=arn,
        AttributeName="DeliveryPolicy",
        AttributeValue=json.dumps({"http": {"defaultHealthyRetryPolicy": almost}}),
    )


def test_header_content_types_no_request_can_carry_are_refused(sns: Any, name: Names) -> None:
    # Accepted before, each made every later delivery fail before a byte was sent.
    arn = sns.create_topic(Name=name())["TopicArn"]
    subscription = sns.subscribe(
        TopicArn=arn,
        Protocol="http",
        Endpoint="http://127.0.0.1:9/never-called",
        ReturnSubscriptionArn=True,
    )["SubscriptionArn"]
    for bad in ("text/plain; charset=\u00e9", "text/plain; a\rb", "text/plain; a=" + "b" * 300):
        own = json.dumps({"requestPolicy": {"headerContentType": bad}})
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.set_subscription_attributes(
                SubscriptionArn=subscription, AttributeName="DeliveryPolicy", AttributeValue=own
            )
        assert code_of(info) == "InvalidParameter", bad
        assert "requestPolicy.headerContentType must be" in message_of(info)
        topic = json.dumps({"http": {"defaultRequestPolicy": {"headerContentType": bad}}})
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.set_topic_attributes(
                TopicArn=arn, AttributeName="DeliveryPolicy", AttributeValue=topic
            )
        assert code_of(info) == "InvalidParameter", bad
    fine = json.dumps({"requestPolicy": {"headerContentType": "application/json; charset=UTF-8"}})
    sns.set_subscription_attributes(
        SubscriptionArn=subscription, AttributeName="DeliveryPolicy", AttributeValue=fine
    )


def test_unknown_topics_and_subscriptions(sns: Any) -> None:
    missing = f"arn:aws:sns:us-east-1:{ACCOUNT_ID}:does-not-exist"
    for call in (
        lambda: sns.get_topic_attributes(TopicArn=missing),
        lambda: sns.publish(TopicArn=missing, Message="m"),
        lambda: sns.list_subscriptions_by_topic(TopicArn=missing),
        lambda: sns.get_subscription_attributes(SubscriptionArn=f"{missing}:abc-123"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            call()
        assert code_of(info) == "NotFound"
        assert status_of(info) == 404
    with pytest.raises(sns.exceptions.NotFoundException):
        sns.get_topic_attributes(TopicArn=missing)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.get_topic_attributes(TopicArn="not-an-arn")
    assert message_of(info) == (
        "Invalid parameter: TopicArn Reason: An ARN must have at least 6 elements, not 1"
    )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(TopicArn="arn:aws:sns:us-east-1:topic", Message="m")
    assert (code_of(info), message_of(info)) == (
        "InvalidParameter",
        "Invalid parameter: TopicArn Reason: An ARN must have at least 6 elements, not 5",
    )
    # A topic's ARN where a subscription's belongs: AWS names the id it lacks (LocalStack's
    # AWS-validated snapshot, invalid-unsubscribe-arn-3).
    for call in (
        lambda: sns.unsubscribe(SubscriptionArn=missing),
        lambda: sns.get_subscription_attributes(SubscriptionArn=missing),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            call()
        assert (code_of(info), message_of(info)) == (
            "InvalidParameter",
            "Invalid parameter: SubscriptionId",
        )


def test_tags(sns: Any, name: Names) -> None:
    arn = sns.create_topic(Name=name(), Tags=[{"Key": "team", "Value": "a"}])["TopicArn"]
    sns.tag_resource(ResourceArn=arn, Tags=[{"Key": "env", "Value": "prod"}])
    tags = sns.list_tags_for_resource(ResourceArn=arn)["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("env", "prod"), ("team", "a")]
    sns.untag_resource(ResourceArn=arn, TagKeys=["team"])
    assert sns.list_tags_for_resource(ResourceArn=arn)["Tags"] == [{"Key": "env", "Value": "prod"}]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.tag_resource(ResourceArn=arn + "x", Tags=[{"Key": "a", "Value": "b"}])
    assert code_of(info) == "ResourceNotFound"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.tag_resource(ResourceArn=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)])
    assert code_of(info) == "TagLimitExceeded"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.tag_resource(ResourceArn=arn, Tags=[{"Key": "aws:owner", "Value": "me"}])
    assert code_of(info) == "InvalidParameter"
    # UntagResource's keys follow TagResource's rules (found by a report-only hunt).
    for keys, reason in (
        (["k" * 129], "tag keys must be 1-128 characters"),
        (["env", "aws:owner"], "the aws: prefix is reserved for AWS use"),
        ([], "no value for required parameter"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.untag_resource(ResourceArn=arn, TagKeys=keys)
        assert (code_of(info), message_of(info)) == (
            "InvalidParameter",
            f"Invalid parameter: TagKeys Reason: {reason}",
        )
    assert sns.list_tags_for_resource(ResourceArn=arn)["Tags"] == [{"Key": "env", "Value": "prod"}]


def test_add_and_remove_permission(sns: Any, name: Names) -> None:
    arn = sns.create_topic(Name=name())["TopicArn"]
    sns.add_permission(
        TopicArn=arn, Label="share", AWSAccountId=["111122223333"], ActionName=["Publish"]
    )
    policy = json.loads(sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"])
    statement = next(s for s in policy["Statement"] if s["Sid"] == "share")
    assert statement["Action"] == "SNS:Publish"
    assert statement["Principal"] == {"AWS": "arn:aws:iam::111122223333:root"}
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.add_permission(
            TopicArn=arn, Label="share", AWSAccountId=["111122223333"], ActionName=["Publish"]
        )
    assert message_of(info) == "Invalid parameter: Statement already exists"
    sns.remove_permission(TopicArn=arn, Label="share")
    policy = json.loads(sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"])
    assert all(s["Sid"] != "share" for s in policy["Statement"])


@pytest.mark.parametrize(
    ("label", "account"),
    [("share", "abc"), ("share", ""), ("share", "*"), ("share", "arn:aws:iam::111122223333:root"),
     ("has space", "111122223333"), ("x" * 81, "111122223333")],
)  # fmt: skip
def test_add_permission_refuses_what_is_no_account_or_label(
    sns: Any, name: Names, label: str, account: str
) -> None:
    arn = sns.create_topic(Name=name())["TopicArn"]
    before = sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.add_permission(
            TopicArn=arn, Label=label, AWSAccountId=[account], ActionName=["Publish"]
        )
    assert code_of(info) == "InvalidParameter"
    assert sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"] == before


@pytest.mark.parametrize(
    "policy",
    [
        '{"Statement":"x"}', '{"Statement":[5]}', "{}", '{"Statement":NaN}',
        '{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"SNS:Publish"}]}',
        '{"Statement":[{"Effect":"Allow","Principal":5,"Action":"SNS:Publish"}]}',
        '{"Statement":[{"Effect":"Allow","Principal":"*","Action":5}]}',
        '{"Statement":[{"Effect":"Allow","Principal":"*","Action":"SNS:Publish","Resource":5}]}',
        '{"Statement":[{"Effect":"Deny","NotPrincipal":5,"Action":"SNS:Publish"}]}',
    ],
)  # fmt: skip
def test_set_topic_attributes_refuses_malformed_policies(
    sns: Any, name: Names, policy: str
) -> None:
    # A stored malformed Deny would quietly deny nothing: AWS refuses such a policy.
    arn = sns.create_topic(Name=name())["TopicArn"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.set_topic_attributes(TopicArn=arn, AttributeName="Policy", AttributeValue=policy)
    assert code_of(info) == "InvalidParameter"
    assert message_of(info).startswith("Invalid parameter: Policy")


def test_structured_messages_are_strict_json(sns: Any, name: Names) -> None:
    arn = sns.create_topic(Name=name())["TopicArn"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(TopicArn=arn, MessageStructure="json", Message='{"default":"x","a":NaN}')
    assert code_of(info) == "InvalidParameter"


@pytest.mark.parametrize(
    ("call", "action"),
    [
        (lambda c: c.create_platform_application(Name="a", Platform="GCM", Attributes={}),
         "CreatePlatformApplication"),
        (lambda c: c.list_phone_numbers_opted_out(), "ListPhoneNumbersOptedOut"),
        (lambda c: c.get_sms_attributes(), "GetSMSAttributes"),
        (lambda c: c.get_data_protection_policy(ResourceArn="arn:aws:sns:us-east-1:1:x"),
         "GetDataProtectionPolicy"),
    ],
)  # fmt: skip
def test_out_of_scope_actions_say_so(sns: Any, call: Any, action: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call(sns)
    assert code_of(info) == "InvalidAction"
    assert f"{action} is out of scope for Wharf" in message_of(info)


def test_out_of_scope_protocols_and_sms_say_so(sns: Any, name: Names) -> None:
    arn = sns.create_topic(Name=name())["TopicArn"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.subscribe(TopicArn=arn, Protocol="email", Endpoint="a@example.com")
    assert "out of scope for Wharf" in message_of(info)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.subscribe(TopicArn=arn, Protocol="carrier-pigeon", Endpoint="x")
    assert message_of(info) == (
        "Invalid parameter: Amazon SNS does not support this protocol string: carrier-pigeon"
    )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(PhoneNumber="+15555550100", Message="hi")
    assert "SMS is out of scope" in message_of(info)


# ---------------------------------------------------------------------- subscriptions


def test_subscribe_is_confirmed_at_once_and_idempotent(sns: Any, queue: Any, name: Names) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    _, arn = queue()
    first = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)["SubscriptionArn"]
    assert first.startswith(topic + ":")
    assert sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)["SubscriptionArn"] == first
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
        )
    assert message_of(info) == (
        "Invalid parameter: Attributes Reason: Subscription already exists with different "
        "attributes"
    )
    attributes = sns.get_subscription_attributes(SubscriptionArn=first)["Attributes"]
    assert attributes["PendingConfirmation"] == "false"
    assert attributes["Endpoint"] == arn
    by_topic = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert by_topic == [
        {
            "SubscriptionArn": first,
            "Owner": ACCOUNT_ID,
            "Protocol": "sqs",
            "Endpoint": arn,
            "TopicArn": topic,
        }
    ]
    assert first in {s["SubscriptionArn"] for s in sns.list_subscriptions()["Subscriptions"]}
    assert sns.get_topic_attributes(TopicArn=topic)["Attributes"]["SubscriptionsConfirmed"] == "1"
    sns.unsubscribe(SubscriptionArn=first)
    sns.unsubscribe(SubscriptionArn=first)  # idempotent
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
    with pytest.raises(sns.exceptions.NotFoundException):
        sns.get_subscription_attributes(SubscriptionArn=first)


def test_subscribe_validates_endpoints(sns: Any, name: Names) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    cases = [
        ("sqs", "not-an-arn", "Invalid parameter: SQS endpoint ARN"),
        ("http", "https://example.com/",
         "Invalid parameter: Endpoint must match the specified protocol"),
        *(("http", unreachable,
           "Invalid parameter: Endpoint Reason: not a URL deliveries can reach (a host, and a "
           "port from 1 to 65535)")
          for unreachable in ("http://127.0.0.1:99999/", "http://127.0.0.1:0/", "http://:80/",
                              "http://host:port/", "http://[::1]junk:8080/", "http://[v1.x]/")),
        ("sqs", f"arn:aws:sqs:us-east-1:{ACCOUNT_ID}:q.fifo",
         "Invalid parameter: Invalid parameter: Endpoint Reason: FIFO SQS Queues can not be "
         "subscribed to standard SNS topics"),
    ]  # fmt: skip
    for protocol, endpoint, message in cases:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.subscribe(TopicArn=topic, Protocol=protocol, Endpoint=endpoint)
        assert code_of(info) == "InvalidParameter"
        assert message_of(info) == message


def test_subscription_attributes(sns: Any, queue: Any, name: Names) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    _, arn = queue()
    _, dlq = queue()
    sub = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)["SubscriptionArn"]
    settings = {
        "RawMessageDelivery": "true",
        "FilterPolicy": json.dumps({"a": ["b"]}),
        "FilterPolicyScope": "MessageBody",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq}),
    }
    for key, value in settings.items():
        sns.set_subscription_attributes(
            SubscriptionArn=sub, AttributeName=key, AttributeValue=value
        )
    attributes = sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]
    for key, value in settings.items():
        assert attributes[key] == value
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.set_subscription_attributes(
            SubscriptionArn=sub, AttributeName="FilterPolicy", AttributeValue='{"a": "b"}'
        )
    assert code_of(info) == "InvalidParameter"
    assert message_of(info).startswith("Invalid parameter: FilterPolicy:")


def test_subscription_principal_names_who_subscribed_also_after_a_restart(
    tmp_path: Any,
) -> None:
    """SubscriptionPrincipal is "a publicly available Amazon SNS subscription property that can
    be retrieved from the GetSubscriptionAttributes API" (SNS guide, message data protection):
    the principal that called Subscribe (found by a report-only hunt)."""
    alice = ("AKIAALICE00000000001", "alice-secret-access-key", f"arn:aws:iam::{ACCOUNT_ID}:user/a")
    keys = [(ACCESS_KEY_ID, SECRET_ACCESS_KEY, ""), alice]
    config = broker_config(tmp_path / "data", auth=write_credentials(tmp_path, keys))
    with BrokerThread(config) as broker:
        root = sns_client(broker.endpoint)
        topic = root.create_topic(Name="principals")["TopicArn"]
        by_root = root.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:q1"
        )["SubscriptionArn"]
        by_alice = sns_client(broker.endpoint, access_key_id=alice[0], secret_access_key=alice[1])
        by_alice_arn = by_alice.subscribe(
            TopicArn=topic,
            Protocol="http",
            Endpoint="http://127.0.0.1:9/hook",
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]
    expected = {by_root: f"arn:aws:iam::{ACCOUNT_ID}:root", by_alice_arn: alice[2]}
    with BrokerThread(config) as broker:
        root = sns_client(broker.endpoint)
        for arn, principal in expected.items():
            attributes = root.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
            assert attributes["SubscriptionPrincipal"] == principal


def test_replay_policy_and_subscription_role_arn_are_checked(
    sns: Any, queue: Any, name: Names
) -> None:
    standard = sns.create_topic(Name=name())["TopicArn"]
    fifo = sns.create_topic(Name=name(".fifo"), Attributes={"FifoTopic": "true"})["TopicArn"]
    _, arn = queue()
    _, fifo_arn = queue(fifo=True)
    sub = sns.subscribe(TopicArn=standard, Protocol="sqs", Endpoint=arn)["SubscriptionArn"]
    replay = json.dumps({"PointType": "Timestamp", "StartingPoint": "2026-12-01T00:00:00Z"})
    refused = [
        ("ReplayPolicy", replay, "only subscriptions to FIFO topics replay messages"),
        (
            "SubscriptionRoleArn",
            "not an arn",
            "must be an IAM role ARN, arn:aws:iam::<account>:role/<name>",
        ),
    ]
    for attribute, value, reason in refused:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.set_subscription_attributes(
                SubscriptionArn=sub, AttributeName=attribute, AttributeValue=value
            )
        assert (code_of(info), message_of(info)) == (
            "InvalidParameter",
            f"Invalid parameter: {attribute}: {reason}",
        )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.subscribe(
            TopicArn=fifo,
            Protocol="sqs",
            Endpoint=fifo_arn,
            Attributes={"ReplayPolicy": "garbage"},
        )
    assert message_of(info) == (
        "Invalid parameter: Attributes Reason: ReplayPolicy: failed to parse JSON."
    )
    role = f"arn:aws:iam::{ACCOUNT_ID}:role/sns-delivery"
    fifo_sub = sns.subscribe(
        TopicArn=fifo,
        Protocol="sqs",
        Endpoint=fifo_arn,
        Attributes={"ReplayPolicy": replay, "SubscriptionRoleArn": role},
    )["SubscriptionArn"]
    attributes = sns.get_subscription_attributes(SubscriptionArn=fifo_sub)["Attributes"]
    assert (attributes["ReplayPolicy"], attributes["SubscriptionRoleArn"]) == (replay, role)
    assert "ReplayPolicy" not in sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]


def test_invalid_filter_policies_on_subscribe(sns: Any, queue: Any, name: Names) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    _, arn = queue()
    bad = [
        {"a": "not-a-list"},
        {"a": [{"numeric": [">", "x"]}]},
        {"a": [{"unknown-operator": 1}]},
        {f"k{i}": ["v"] for i in range(6)},
    ]
    for policy in bad:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.subscribe(
                TopicArn=topic,
                Protocol="sqs",
                Endpoint=arn,
                Attributes={"FilterPolicy": json.dumps(policy)},
            )
        assert code_of(info) == "InvalidParameter"
        assert message_of(info).startswith("Invalid parameter: Attributes Reason: FilterPolicy:")


# ---------------------------------------------------------------------- publishing


def test_fan_out_to_several_queues(sns: Any, sqs_json: Any, queue: Any, name: Names) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    queues = [queue() for _ in range(4)]
    for _, arn in queues:
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    published = {
        sns.publish(TopicArn=topic, Message=f"m{i}", Subject="s")["MessageId"] for i in range(5)
    }
    certificate = None
    for url, _ in queues:
        messages = receive_all(sqs_json, url, 5)
        envelopes = [json.loads(m["Body"]) for m in messages]
        assert {e["MessageId"] for e in envelopes} == published
        for envelope in envelopes:
            assert envelope["Type"] == "Notification"
            assert envelope["TopicArn"] == topic
            assert envelope["Subject"] == "s"
            assert "MessageAttributes" not in envelope
            certificate = certificate or fetch(envelope["SigningCertURL"])
            check_signature(envelope, certificate)


def test_publish_batch(sns: Any, sqs_json: Any, queue: Any, name: Names) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    url, arn = queue()
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
    )
    result = sns.publish_batch(
        TopicArn=topic,
        PublishBatchRequestEntries=[
            {"Id": "one", "Message": "1"},
            {"Id": "two", "Message": "2",
             "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "2"}}},
        ],
    )  # fmt: skip
    assert [s["Id"] for s in result["Successful"]] == ["one", "two"]
    assert result["Failed"] == []
    assert sorted(m["Body"] for m in receive_all(sqs_json, url, 2)) == ["1", "2"]


def _queued(sqs_json: Any, url: str) -> int:
    attributes = sqs_json.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


_VALID = {"Id": "valid", "Message": "valid-batch"}


@pytest.mark.parametrize(
    ("entries", "code", "message"),
    [
        # LocalStack's AWS-validated snapshot (test_empty_or_wrong_message_attributes,
        # "batch-exception"): the first bad entry's error, for the whole request.
        ([{"Id": "1", "Message": "test-batch",
           "MessageAttributes": {"attr1": {"DataType": "String", "StringValue": ""}}},
          {"Id": "2", "Message": "test-batch",
           "MessageAttributes": {"attr1": {"DataType": "String", "BinaryValue": b"123"}}},
          _VALID],
         "ParameterValueInvalid",
         "The message attribute 'attr1' must contain non-empty message attribute value for "
         "message attribute type 'String'."),
        ([_VALID, {"Id": "2", "Message": "m",
                   "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "x"}}}],
         "ParameterValueInvalid", "Could not cast message attribute 'n' value to number."),
        # test_publish_batch_exceptions, "no-default-key-json".
        ([_VALID, {"Id": "2", "Message": json.dumps({"sqs": "test sqs"}),
                   "MessageStructure": "json"}],
         "InvalidParameter",
         "Invalid parameter: Message Structure - No default entry in JSON message body"),
        ([_VALID, {"Id": "2", "Message": ""}], "InvalidParameter",
         "Invalid parameter: Empty message"),
    ],
    ids=["attributes", "number", "json-without-default", "empty-message"],
)  # fmt: skip
def test_a_bad_entry_refuses_the_whole_batch(
    sns: Any, sqs_json: Any, queue: Any, name: Names, entries: Any, code: str, message: str
) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    url, arn = queue()
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert (code_of(info), message_of(info)) == (code, message)
    # A publish's copies are in the queue before its 200, so after this one's the queue
    # holds exactly what was delivered: this copy alone, none of the refused batch's.
    sns.publish(TopicArn=topic, Message="after")
    assert _queued(sqs_json, url) == 1


def test_a_fifo_entry_without_deduplication_id_refuses_the_whole_batch(
    sns: Any, sqs_json: Any, queue: Any, name: Names
) -> None:
    # test_publish_batch_exceptions, "no-dedup-id": a ClientError for the whole call.
    topic = sns.create_topic(Name=name(".fifo"), Attributes={"FifoTopic": "true"})["TopicArn"]
    url, arn = queue(fifo=True)
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish_batch(
            TopicArn=topic,
            PublishBatchRequestEntries=[
                {"Id": "1", "Message": "m1", "MessageGroupId": "g", "MessageDeduplicationId": "1"},
                {"Id": "2", "Message": "m2", "MessageGroupId": "g"},
            ],
        )
    assert code_of(info) == "InvalidParameter"
    assert message_of(info) == (
        "Invalid parameter: The topic should either have ContentBasedDeduplication enabled or "
        "MessageDeduplicationId provided explicitly"
    )
    sns.publish(TopicArn=topic, Message="after", MessageGroupId="g", MessageDeduplicationId="a")
    assert _queued(sqs_json, url) == 1


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ([], "EmptyBatchRequest"),
        ([{"Id": f"i{i}", "Message": "m"} for i in range(11)], "TooManyEntriesInBatchRequest"),
        ([{"Id": "a", "Message": "m"}, {"Id": "a", "Message": "n"}], "BatchEntryIdsNotDistinct"),
        ([{"Id": "bad id!", "Message": "m"}], "InvalidBatchEntryId"),
        ([{"Id": f"i{i}", "Message": "x" * 100_000} for i in range(3)], "BatchRequestTooLong"),
    ],
)
def test_bad_batches(sns: Any, name: Names, entries: Any, code: str) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
    assert code_of(info) == code


def test_message_size_limits(sns: Any, name: Names) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    sns.publish(TopicArn=topic, Message="x" * 262_144)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(TopicArn=topic, Message="x" * 262_145)
    assert message_of(info) == "Invalid parameter: Message too long"
    sns.set_topic_attributes(
        TopicArn=topic, AttributeName="MaximumMessageSize", AttributeValue="1048576"
    )
    sns.publish(TopicArn=topic, Message="x" * 1_000_000)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(TopicArn=topic, Message="")
    assert message_of(info) == "Invalid parameter: Empty message"


def test_topics_above_256_kib_take_100_sqs_subscriptions_at_most(sns: Any, name: Names) -> None:
    # large-message-payloads: above 256 KiB, at most 100 subscriptions, SQS/Lambda/Firehose.
    big = sns.create_topic(Name=name(), Attributes={"MaximumMessageSize": "1048576"})["TopicArn"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.subscribe(TopicArn=big, Protocol="https", Endpoint="https://example.com/hook")
    assert code_of(info) == "InvalidParameter"
    assert "sqs, lambda and firehose subscriptions only" in message_of(info)
    stem = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name()}"
    for index in range(100):
        sns.subscribe(TopicArn=big, Protocol="sqs", Endpoint=f"{stem}-{index}")
    sns.subscribe(TopicArn=big, Protocol="sqs", Endpoint=f"{stem}-0")  # the same one: fine
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.subscribe(TopicArn=big, Protocol="sqs", Endpoint=f"{stem}-100")
    assert code_of(info) == "InvalidParameter"
    assert "at most 100 subscriptions" in message_of(info)

    hooked = sns.create_topic(Name=name())["TopicArn"]
    sns.subscribe(TopicArn=hooked, Protocol="http", Endpoint="http://example.com/hook")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.set_topic_attributes(
            TopicArn=hooked, AttributeName="MaximumMessageSize", AttributeValue="262145"
        )
    assert code_of(info) == "InvalidParameter"
    sns.set_topic_attributes(
        TopicArn=hooked, AttributeName="MaximumMessageSize", AttributeValue="262144"
    )
    attributes = sns.get_topic_attributes(TopicArn=hooked)["Attributes"]
    assert attributes["MaximumMessageSize"] == "262144"


def test_raw_delivery_turns_attributes_into_sqs_attributes(
    sns: Any, sqs_json: Any, queue: Any, name: Names
) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    url, arn = queue()
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
    )
    sns.publish(
        TopicArn=topic,
        Message="raw body",
        MessageAttributes={
            "s": {"DataType": "String", "StringValue": "v"},
            "n": {"DataType": "Number", "StringValue": "42"},
            "b": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
            "a": {"DataType": "String.Array", "StringValue": '["x", 1]'},
        },
    )
    (message,) = receive_all(sqs_json, url, 1)
    assert message["Body"] == "raw body"
    attributes = message["MessageAttributes"]
    assert attributes["s"] == {"DataType": "String", "StringValue": "v"}
    assert attributes["n"] == {"DataType": "Number", "StringValue": "42"}
    assert attributes["b"] == {"DataType": "Binary", "BinaryValue": b"\x00\x01"}
    assert attributes["a"] == {"DataType": "String.Array", "StringValue": '["x", 1]'}


def _topic_with_enveloped_and_raw_queues(sns: Any, queue: Any, name: Names) -> tuple[str, str, str]:
    """A new topic, and the URLs of two queues subscribed to it: one gets envelopes, one
    raw messages."""
    topic = sns.create_topic(Name=name())["TopicArn"]
    (enveloped, enveloped_arn), (raw, raw_arn) = queue(), queue()
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=enveloped_arn)
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=raw_arn, Attributes={"RawMessageDelivery": "true"}
    )
    return topic, enveloped, raw


def test_a_binary_attribute_with_a_string_value_too_delivers_its_binary(
    sns: Any, sqs_json: Any, queue: Any, name: Names
) -> None:
    """Publish checks the field the type names; the copies used to carry the StringValue
    (enveloped) or be dropped after the 200 (raw: SQS refused the Binary attribute)."""
    topic, enveloped, raw = _topic_with_enveloped_and_raw_queues(sns, queue, name)
    both = {"DataType": "Binary", "BinaryValue": b"\x01\x02", "StringValue": "text"}
    sns.publish(TopicArn=topic, Message="m", MessageAttributes={"b": both})
    (copy,) = receive_all(sqs_json, enveloped, 1)
    attributes = json.loads(copy["Body"])["MessageAttributes"]
    assert attributes["b"] == {"Type": "Binary", "Value": "AQI="}
    (copy,) = receive_all(sqs_json, raw, 1)
    assert copy["MessageAttributes"]["b"] == {"DataType": "Binary", "BinaryValue": b"\x01\x02"}


@pytest.mark.parametrize("data_type", ["String.  prefixed.", "Number. x", "Binary.\tb"])
def test_custom_types_reach_raw_and_enveloped_copies_intact(
    sns: Any, sqs_json: Any, queue: Any, name: Names, data_type: str
) -> None:
    # Anything after the dot, leading spaces too: AWS accepts "String.  prefixed."
    # (LocalStack's AWS-validated test_message_attributes_prefixes), and so does SQS.
    topic, enveloped, raw = _topic_with_enveloped_and_raw_queues(sns, queue, name)
    binary = data_type.startswith("Binary")
    attribute = {
        "DataType": data_type,
        "BinaryValue" if binary else "StringValue": b"1" if binary else "1",
    }
    sns.publish(TopicArn=topic, Message="m", MessageAttributes={"attr1": attribute})
    (copy,) = receive_all(sqs_json, enveloped, 1)
    envelope = json.loads(copy["Body"])
    value = base64.b64encode(b"1").decode() if binary else "1"
    assert envelope["MessageAttributes"] == {"attr1": {"Type": data_type, "Value": value}}
    (raw_copy,) = receive_all(sqs_json, raw, 1)
    assert raw_copy["MessageAttributes"] == {"attr1": attribute}


@pytest.mark.parametrize("text", ["a\ufffeb", "nul\x00and\x01", "\uffff"])
def test_characters_sqs_cannot_store_never_lose_a_copy(
    sns: Any, sqs_json: Any, queue: Any, name: Names, text: str
) -> None:
    # Publish said 200, so every subscribed queue gets its copy: an envelope carries such
    # characters as JSON escapes (the reader gets them back), a raw copy gets U+FFFD in
    # their place (SendMessage would refuse them; what AWS does then is undocumented).
    topic, enveloped, raw = _topic_with_enveloped_and_raw_queues(sns, queue, name)
    attributes = {"s": {"DataType": "String", "StringValue": f"v{text}"}}
    subject = f"s{text}" if "\x00" not in text else "control characters are refused here"
    sns.publish(TopicArn=topic, Message=text, Subject=subject, MessageAttributes=attributes)
    (copy,) = receive_all(sqs_json, enveloped, 1)
    envelope = json.loads(copy["Body"])
    assert (envelope["Message"], envelope["Subject"]) == (text, subject)
    assert envelope["MessageAttributes"]["s"]["Value"] == f"v{text}"
    (raw_copy,) = receive_all(sqs_json, raw, 1)
    replaced = "".join(c if c.isprintable() and c not in "\ufffe\uffff" else "\ufffd" for c in text)
    assert raw_copy["Body"] == replaced
    assert raw_copy["MessageAttributes"]["s"]["StringValue"] == f"v{replaced}"


def test_sms_and_mobile_push_settings_are_published_and_kept_from_raw_queue_copies(
    sns: Any, sqs_json: Any, queue: Any, name: Names
) -> None:
    """AWS's per-message SMS and push settings may go with a Publish to a topic; the envelope
    carries them as any attribute, a raw queue copy leaves them out (SQS refuses AWS. names)."""
    topic, enveloped, raw = _topic_with_enveloped_and_raw_queues(sns, queue, name)
    settings = {
        "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"},
        "AWS.SNS.MOBILE.APNS.TTL": {"DataType": "String", "StringValue": "60"},
    }
    own = {"kind": {"DataType": "String", "StringValue": "otp"}}
    sns.publish(TopicArn=topic, Message="m", MessageAttributes={**settings, **own})
    (copy,) = receive_all(sqs_json, enveloped, 1)
    assert json.loads(copy["Body"])["MessageAttributes"] == {
        "AWS.SNS.SMS.SMSType": {"Type": "String", "Value": "Transactional"},
        "AWS.SNS.MOBILE.APNS.TTL": {"Type": "String", "Value": "60"},
        "kind": {"Type": "String", "Value": "otp"},
    }
    (raw_copy,) = receive_all(sqs_json, raw, 1)
    assert raw_copy["MessageAttributes"] == own
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(
            TopicArn=topic,
            Message="m",
            MessageAttributes={"AWS.mine": {"DataType": "String", "StringValue": "v"}},
        )
    assert code_of(info) == "ParameterValueInvalid"


def test_envelope_carries_attributes_binary_in_base64(
    sns: Any, sqs_json: Any, queue: Any, name: Names
) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    url, arn = queue()
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    sns.publish(
        TopicArn=topic,
        Message="m",
        MessageAttributes={"b": {"DataType": "Binary", "BinaryValue": b"\xff"}},
    )
    (message,) = receive_all(sqs_json, url, 1)
    envelope = json.loads(message["Body"])
    assert envelope["MessageAttributes"] == {
        "b": {"Type": "Binary", "Value": base64.b64encode(b"\xff").decode()}
    }
    assert "MessageAttributes" not in message  # not raw: attributes travel in the envelope


def test_message_structure_json_gives_each_protocol_its_text(
    sns: Any, sqs_json: Any, queue: Any, name: Names
) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    url, arn = queue()
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    sns.publish(
        TopicArn=topic,
        MessageStructure="json",
        Message=json.dumps({"default": "for everyone", "sqs": "for queues", "http": "web"}),
    )
    (message,) = receive_all(sqs_json, url, 1)
    assert json.loads(message["Body"])["Message"] == "for queues"
    # An empty entry is the protocol's text too: "the empty string, "", is allowed".
    sns.publish(
        TopicArn=topic, MessageStructure="json", Message=json.dumps({"default": "d", "sqs": ""})
    )
    (message,) = receive_all(sqs_json, url, 1)
    assert json.loads(message["Body"])["Message"] == ""
    for bad, reason in (
        ("not json", "JSON message body failed to parse"),
        ('{"sqs": "x"}', "No default entry in JSON message body"),
        # "Duplicate keys are not allowed" (Publish): no silent choice of one of them.
        ('{"default": "d", "sqs": "first", "sqs": "second"}', "JSON message body failed to parse"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.publish(TopicArn=topic, MessageStructure="json", Message=bad)
        assert message_of(info) == f"Invalid parameter: Message Structure - {reason}"


def test_invalid_message_attributes(sns: Any, name: Names) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    cases = [
        ({"n": {"DataType": "Number", "StringValue": "abc"}},
         "Could not cast message attribute 'n' value to number."),
        ({"x": {"DataType": "Weird", "StringValue": "1"}},
         "The message attribute 'x' has an invalid message attribute type, the set of supported "
         "type prefixes is Binary, Number, and String."),
        ({".dot": {"DataType": "String", "StringValue": "1"}},
         "Invalid message attribute name starting with character '.' was found."),
    ]  # fmt: skip
    for attributes, message in cases:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.publish(TopicArn=topic, Message="m", MessageAttributes=attributes)
        assert code_of(info) == "ParameterValueInvalid"
        assert message_of(info) == message


# ---------------------------------------------------------------------- FIFO


def test_fifo_topic_to_fifo_queues_keeps_group_order_and_deduplicates(
    sns: Any, sqs_json: Any, queue: Any, name: Names
) -> None:
    topic = sns.create_topic(
        Name=name(".fifo"),
        Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "true"},
    )["TopicArn"]
    queues = [queue(fifo=True), queue(fifo=True)]
    for _, arn in queues:
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    sequence_numbers = []
    for i in range(20):
        result = sns.publish(TopicArn=topic, Message=f"m{i:02d}", MessageGroupId=f"g{i % 2}")
        sequence_numbers.append(int(result["SequenceNumber"]))
    assert sequence_numbers == sorted(sequence_numbers)
    duplicate = sns.publish(TopicArn=topic, Message="m00", MessageGroupId="g0")
    assert int(duplicate["SequenceNumber"]) == sequence_numbers[0]  # the original's answer
    explicit = sns.publish(
        TopicArn=topic, Message="m00", MessageGroupId="g0", MessageDeduplicationId="other"
    )
    assert int(explicit["SequenceNumber"]) > sequence_numbers[-1]
    for url, _ in queues:
        messages = receive_all(sqs_json, url, 21)
        assert len(messages) == 21
        for group in ("g0", "g1"):
            in_group = [m for m in messages if m["Attributes"]["MessageGroupId"] == group]
            bodies = [json.loads(m["Body"])["Message"] for m in in_group]
            expected = [f"m{i:02d}" for i in range(20) if i % 2 == int(group[1])]
            assert bodies[: len(expected)] == expected
        envelope = json.loads(messages[0]["Body"])
        assert "SequenceNumber" in envelope
        assert "Signature" not in envelope
        content_id = hashlib.sha256(b"m00").hexdigest()
        assert messages[0]["Attributes"]["MessageDeduplicationId"] == content_id


def test_fifo_publish_rules(sns: Any, name: Names) -> None:
    fifo = sns.create_topic(Name=name(".fifo"), Attributes={"FifoTopic": "true"})["TopicArn"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(TopicArn=fifo, Message="m")
    assert message_of(info) == (
        "Invalid parameter: The MessageGroupId parameter is required for FIFO topics"
    )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(TopicArn=fifo, Message="m", MessageGroupId="g")
    assert "ContentBasedDeduplication" in message_of(info)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish_batch(TopicArn=fifo, PublishBatchRequestEntries=[{"Id": "a", "Message": "m"}])
    assert code_of(info) == "InvalidParameter"
    standard = sns.create_topic(Name=name())["TopicArn"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(TopicArn=standard, Message="m", MessageDeduplicationId="d")
    assert message_of(info).startswith("Invalid parameter: MessageDeduplicationId")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.subscribe(TopicArn=fifo, Protocol="https", Endpoint="https://example.com/")
    assert code_of(info) == "InvalidParameter"


@pytest.mark.parametrize(
    ("before", "after"), [("Topic", "MessageGroup"), ("MessageGroup", "Topic")]
)
def test_a_fifo_throughput_scope_change_keeps_the_deduplication_ids(
    sns: Any, sqs_json: Any, queue: Any, name: Names, before: str, after: str
) -> None:
    """The same group and MessageDeduplicationId within 5 minutes stays a duplicate however
    the scope changed in between: answered with the original and delivered to nobody."""
    topic = sns.create_topic(
        Name=name(".fifo"), Attributes={"FifoTopic": "true", "FifoThroughputScope": before}
    )["TopicArn"]
    url, arn = queue()  # a standard queue: no deduplication of its own
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    first = sns.publish(
        TopicArn=topic, Message="first", MessageGroupId="g", MessageDeduplicationId="X"
    )
    sns.set_topic_attributes(
        TopicArn=topic, AttributeName="FifoThroughputScope", AttributeValue=after
    )
    again = sns.publish(
        TopicArn=topic, Message="again", MessageGroupId="g", MessageDeduplicationId="X"
    )
    assert (again["MessageId"], again["SequenceNumber"]) == (
        first["MessageId"],
        first["SequenceNumber"],
    )
    assert _queued(sqs_json, url) == 1  # copies are queued before the publish's 200
    assert [json.loads(m["Body"])["Message"] for m in receive_all(sqs_json, url, 1)] == ["first"]


def test_a_standard_topic_subscription_refuses_a_fifo_dead_letter_queue(
    sns: Any, queue: Any, name: Names
) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    _, arn = queue()
    _, fifo_dlq = queue(fifo=True)
    subscription = sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=arn, ReturnSubscriptionArn=True
    )["SubscriptionArn"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.set_subscription_attributes(
            SubscriptionArn=subscription,
            AttributeName="RedrivePolicy",
            AttributeValue=json.dumps({"deadLetterTargetArn": fifo_dlq}),
        )
    assert code_of(info) == "InvalidParameter"
    assert "standard queue as DLQ" in message_of(info)


def test_a_dead_letter_queue_the_broker_cannot_reach_is_refused(
    sns: Any, queue: Any, name: Names
) -> None:
    """Another region's or account's queue: accepted, it would swallow the failed deliveries."""
    topic = sns.create_topic(Name=name())["TopicArn"]
    _, arn = queue()
    _, _, _, region, account, _ = arn.split(":")
    elsewhere = f"arn:aws:sqs:{'eu-west-3' if region != 'eu-west-3' else 'us-east-1'}:{account}:dlq"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": elsewhere})},
        )
    assert code_of(info) == "InvalidParameter"
    assert message_of(info) == (
        "Invalid parameter: Attributes Reason: RedrivePolicy: the dead-letter queue must be in "
        f"the topic's account and region ({account}, {region})"
    )
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []


def test_undeliverable_sqs_messages_go_to_the_dead_letter_queue(
    sns: Any, sqs_json: Any, queue: Any, name: Names
) -> None:
    topic = sns.create_topic(Name=name())["TopicArn"]
    url, arn = queue(MaximumMessageSize="1024")
    dlq_url, dlq_arn = queue()
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={
            "RawMessageDelivery": "true",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn}),
        },
    )
    sns.publish(TopicArn=topic, Message="small")
    sns.publish(TopicArn=topic, Message="y" * 2000)  # too large for the queue
    assert [m["Body"] for m in receive_all(sqs_json, url, 1)] == ["small"]
    assert [m["Body"] for m in receive_all(sqs_json, dlq_url, 1)] == ["y" * 2000]


def test_an_unsigned_unsubscribe_of_a_queue_leaves_it_a_confirmation_that_restores(
    sns: Any, sqs_json: Any, queue: Any, name: Names
) -> None:
    """Anyone who read an envelope can follow its UnsubscribeURL. As on AWS, the queue then
    gets a final UnsubscribeConfirmation whose SubscribeURL restores the subscription; the
    owner's own signed Unsubscribe leaves nothing (found by a report-only hunt)."""
    topic = sns.create_topic(Name=name())["TopicArn"]
    url, arn = queue()
    subscription = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)["SubscriptionArn"]
    sns.publish(TopicArn=topic, Message="before")
    (message,) = receive_all(sqs_json, url, 1)
    sqs_json.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    fetch(json.loads(message["Body"])["UnsubscribeURL"])  # unsigned, like a browser's GET
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
    (goodbye,) = receive_all(sqs_json, url, 1)
    sqs_json.delete_message(QueueUrl=url, ReceiptHandle=goodbye["ReceiptHandle"])
    envelope = json.loads(goodbye["Body"])
    assert envelope["Type"] == "UnsubscribeConfirmation"
    check_signature(envelope, fetch(envelope["SigningCertURL"]))
    fetch(envelope["SubscribeURL"])
    (restored,) = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert restored["SubscriptionArn"] == subscription
    sns.publish(TopicArn=topic, Message="after")
    (message,) = receive_all(sqs_json, url, 1)
    assert json.loads(message["Body"])["Message"] == "after"
    sqs_json.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    sns.unsubscribe(SubscriptionArn=subscription)  # the owner's, signed: no message
    assert "Messages" not in sqs_json.receive_message(QueueUrl=url, WaitTimeSeconds=1)
