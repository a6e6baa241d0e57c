"""SNS deliveries and the subscribed queue's policy, through boto3 against a real broker.

SNS sends as the service principal sns.amazonaws.com with aws:SourceArn the topic's ARN: a
queue policy that denies it gets nothing (the subscription's dead-letter queue gets the
message, and the topic counts a failed delivery), while queues without such a Deny get it.
A Publish returns once every SQS delivery it makes is durable, so a queue that has nothing
right after it will never get that message.

Not here: a queue in another account than the topic. The broker serves one account, and
Subscribe refuses a queue outside it, so boto3 cannot set that case up; tests/broker/
test_fanout.py drives it through the publisher with a topic ARN of another account.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tests.support.broker import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    BrokerThread,
    broker_config,
    write_credentials,
)
from tests.support.sns import queue_arn, receive_all, sns_client

SNS_PRINCIPAL = "sns.amazonaws.com"


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def for_topic(effect: str, topic_arn: str, queue: str) -> dict[str, Any]:
    """AWS's usual statement for a topic's deliveries to a queue, with ``effect``."""
    return {
        "Effect": effect,
        "Principal": {"Service": SNS_PRINCIPAL},
        "Action": "sqs:SendMessage",
        "Resource": queue,
        "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
    }


class Setup:
    """A topic and queues of one test, deleted afterwards."""

    def __init__(self, broker: BrokerThread, stem: str) -> None:
        self.sns: Any = sns_client(broker.endpoint)
        self.sqs: Any = broker.client("json")
        self.stem = f"{stem}-{time.monotonic_ns()}"
        self.topic = self.sns.create_topic(Name=self.stem)["TopicArn"]
        self.urls: list[str] = []

    def queue(self, name: str, **attributes: str) -> tuple[str, str]:
        url = self.sqs.create_queue(QueueName=f"{self.stem}-{name}", Attributes=attributes)[
            "QueueUrl"
        ]
        self.urls.append(url)
        return url, queue_arn(self.sqs, url)

    def subscribe(self, arn: str, **attributes: str) -> None:
        self.sns.subscribe(
            TopicArn=self.topic,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"RawMessageDelivery": "true", **attributes},
        )

    def bodies(self, url: str, expected: int) -> list[str]:
        return sorted(m["Body"] for m in receive_all(self.sqs, url, expected, timeout=5))

    def waiting(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])

    def close(self) -> None:
        self.sns.delete_topic(TopicArn=self.topic)
        for url in self.urls:
            self.sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def setup(shared_broker: BrokerThread, request: pytest.FixtureRequest) -> Any:
    made = Setup(shared_broker, request.node.originalname.replace("_", "-")[:40])
    yield made
    made.close()


def failed_sqs_deliveries(broker: BrokerThread, topic_arn: str) -> float:
    family = broker.metrics()["wharf_sns_notifications_failed"]
    name = topic_arn.rsplit(":", 1)[1]
    (count,) = (
        float(s.value)
        for s in family.samples
        if s.labels["topic"] == name and s.labels["protocol"] == "sqs"
    )
    return count


def test_a_deny_for_the_topic_blocks_only_that_queue(
    setup: Setup, shared_broker: BrokerThread
) -> None:
    denied_url, denied_arn = setup.queue("denied")
    setup.sqs.set_queue_attributes(
        QueueUrl=denied_url,
        Attributes={"Policy": policy(for_topic("Deny", setup.topic, denied_arn))},
    )
    open_url, open_arn = setup.queue("open")
    # Denies another topic only, and refuses plain-HTTP clients: SNS is neither.
    other_url, other_arn = setup.queue("other")
    https_only = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "sqs:*",
        "Resource": other_arn,
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    setup.sqs.set_queue_attributes(
        QueueUrl=other_url,
        Attributes={"Policy": policy(for_topic("Deny", setup.topic + "-other", other_arn))},
    )
    for arn in (denied_arn, open_arn, other_arn):
        setup.subscribe(arn)
    setup.sns.publish(TopicArn=setup.topic, Message="first")
    assert setup.bodies(open_url, 1) == ["first"]
    assert setup.bodies(other_url, 1) == ["first"]
    assert setup.waiting(denied_url) == 0
    assert failed_sqs_deliveries(shared_broker, setup.topic) == 1
    # Once the Deny is gone, the next message gets through.
    setup.sqs.set_queue_attributes(QueueUrl=denied_url, Attributes={"Policy": policy(https_only)})
    setup.sns.publish(TopicArn=setup.topic, Message="second")
    assert setup.bodies(denied_url, 1) == ["second"]
    assert failed_sqs_deliveries(shared_broker, setup.topic) == 1


def test_a_queue_only_sns_may_send_to_gets_the_topics_messages(setup: Setup) -> None:
    # The usual Allow for the topic, and a Deny for every sender that is not SNS: only a
    # Service principal understood as such lets the delivery through.
    url, arn = setup.queue("sns-only")
    sns_only = {
        "Effect": "Deny",
        "NotPrincipal": {"Service": SNS_PRINCIPAL},
        "Action": "sqs:SendMessage",
        "Resource": arn,
    }
    setup.sqs.set_queue_attributes(
        QueueUrl=url, Attributes={"Policy": policy(for_topic("Allow", setup.topic, arn), sns_only)}
    )
    setup.subscribe(arn)
    setup.sns.publish(TopicArn=setup.topic, Message="from the topic")
    assert setup.bodies(url, 1) == ["from the topic"]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        setup.sqs.send_message(QueueUrl=url, MessageBody="from a client")
    assert refused.value.response["Error"]["Code"] in ("AccessDenied", "AccessDeniedException")


def test_a_blocked_delivery_lands_in_the_subscriptions_dead_letter_queue(
    setup: Setup, shared_broker: BrokerThread
) -> None:
    dlq_url, dlq_arn = setup.queue("dlq")
    url, arn = setup.queue("denied")
    deny_every_topic = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "sqs:SendMessage",
        "Resource": arn,
        "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:*:*"}},
    }
    setup.sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(deny_every_topic)})
    setup.subscribe(arn, RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn}))
    for text in ("one", "two"):
        setup.sns.publish(
            TopicArn=setup.topic,
            Message=text,
            MessageAttributes={"kind": {"DataType": "String", "StringValue": "order"}},
        )
    dead = receive_all(setup.sqs, dlq_url, 2, timeout=5)
    assert sorted(m["Body"] for m in dead) == ["one", "two"]
    # A raw delivery's dead letter keeps the published attributes.
    assert {m["MessageAttributes"]["kind"]["StringValue"] for m in dead} == {"order"}
    assert setup.waiting(url) == 0
    assert failed_sqs_deliveries(shared_broker, setup.topic) == 2
    # A direct SendMessage is no SNS delivery: the Deny's condition is false for it.
    setup.sqs.send_message(QueueUrl=url, MessageBody="direct")
    assert setup.bodies(url, 1) == ["direct"]


def test_another_accounts_subscription_reaches_a_queue_only_through_its_policy(
    tmp_path: Path,
) -> None:
    """A partner the topic policy lets Subscribe, whom the queue's policy refuses SendMessage,
    must not get the topic's messages, nor its dead letters, into the owner's queues by
    subscribing them. The queue's explicit Allow for the topic lets them in, as on AWS."""
    partner_key = (
        "AKIAPARTNER000000001",
        "partner-secret-access-key",
        "arn:aws:iam::111111111111:user/p",
    )
    auth = write_credentials(tmp_path, [(ACCESS_KEY_ID, SECRET_ACCESS_KEY, ""), partner_key])
    with BrokerThread(broker_config(tmp_path / "data", auth=auth)) as broker:
        owner_sns, sqs = sns_client(broker.endpoint), broker.client("json")
        partner_sns = sns_client(
            broker.endpoint, access_key_id=partner_key[0], secret_access_key=partner_key[1]
        )
        topic = owner_sns.create_topic(Name="shared")["TopicArn"]
        owner_sns.add_permission(
            TopicArn=topic, Label="p", AWSAccountId=["111111111111"], ActionName=["Subscribe"]
        )
        urls = {
            name: sqs.create_queue(QueueName=name)["QueueUrl"]
            for name in ("private", "dead", "opened")
        }
        arns = {name: queue_arn(sqs, url) for name, url in urls.items()}
        sqs.set_queue_attributes(
            QueueUrl=urls["opened"],
            Attributes={"Policy": policy(for_topic("Allow", topic, arns["opened"]))},
        )
        redrive = json.dumps({"deadLetterTargetArn": arns["dead"]})
        for name in ("private", "opened"):
            partner_sns.subscribe(
                TopicArn=topic,
                Protocol="sqs",
                Endpoint=arns[name],
                Attributes={"RawMessageDelivery": "true", "RedrivePolicy": redrive},
            )
        owner_sns.publish(TopicArn=topic, Message="for partners")
        assert [m["Body"] for m in receive_all(sqs, urls["opened"], 1, timeout=5)] == [
            "for partners"
        ]
        for name in ("private", "dead"):  # the publish is durable: nothing more will come
            assert "Messages" not in sqs.receive_message(QueueUrl=urls[name])
