"""The AWS CLI (v1, from the venv) against a real broker: SNS as people type it.

Topics, subscriptions and publishes go through ``aws sns``; the subscribed queues are read
back through ``aws sqs``, so every step is what an operator at a shell would see. Commands
run with nothing from the machine's ~/.aws (tests/support/aws_cli.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.aws_cli import aws, aws_json, refused
from tests.support.broker import (
    ACCESS_KEY_ID,
    ACCOUNT_ID,
    BrokerThread,
    broker_config,
    write_credentials,
)
from tests.support.sns import check_signature, fetch

pytestmark = pytest.mark.slow


def sns(endpoint: str, *args: str) -> Any:
    return aws_json(endpoint, "sns", *args)


def sqs(endpoint: str, *args: str) -> Any:
    return aws_json(endpoint, "sqs", *args)


def new_queue(endpoint: str, name: str, *attributes: str) -> tuple[str, str]:
    """Create a queue with the CLI; its URL and ARN."""
    url = sqs(endpoint, "create-queue", "--queue-name", name, *attributes)["QueueUrl"]
    arn = sqs(endpoint, "get-queue-attributes", "--queue-url", url, "--attribute-names", "QueueArn")
    return url, arn["Attributes"]["QueueArn"]


def drain(endpoint: str, url: str, expected: int) -> list[dict[str, Any]]:
    """Receive and delete with the CLI until ``expected`` came, then once more (must be empty)."""
    messages: list[dict[str, Any]] = []
    for _ in range(expected + 5):  # each call long-polls at most 1 s
        got = sqs(
            endpoint,
            "receive-message",
            "--queue-url",
            url,
            "--max-number-of-messages",
            "10",
            "--message-attribute-names",
            "All",
            "--wait-time-seconds",
            "1" if len(messages) < expected else "0",
        )
        batch = (got or {}).get("Messages", [])
        for message in batch:
            aws(endpoint, "sqs", "delete-message", "--queue-url", url, "--receipt-handle",
                message["ReceiptHandle"])  # fmt: skip
        messages.extend(batch)
        if len(messages) >= expected and not batch:
            break
    return messages


def test_topics_subscriptions_filters_and_publish(shared_broker: BrokerThread) -> None:
    endpoint = shared_broker.endpoint
    stem = f"sns-cli-{os.getpid()}"
    topic = sns(endpoint, "create-topic", "--name", stem, "--attributes", "DisplayName=CLI")[
        "TopicArn"
    ]
    assert topic.endswith(f":{ACCOUNT_ID}:{stem}")
    listed = sns(endpoint, "list-topics")["Topics"]
    assert {"TopicArn": topic} in listed
    attributes = sns(endpoint, "get-topic-attributes", "--topic-arn", topic)["Attributes"]
    assert attributes["DisplayName"] == "CLI"

    every_url, every_arn = new_queue(endpoint, f"{stem}-every")
    red_url, red_arn = new_queue(endpoint, f"{stem}-red")
    every = sns(
        endpoint, "subscribe", "--topic-arn", topic, "--protocol", "sqs",
        "--notification-endpoint", every_arn,
    )["SubscriptionArn"]  # fmt: skip
    red = sns(
        endpoint, "subscribe", "--topic-arn", topic, "--protocol", "sqs",
        "--notification-endpoint", red_arn, "--attributes",
        json.dumps({"RawMessageDelivery": "true", "FilterPolicy": json.dumps({"color": ["red"]})}),
    )["SubscriptionArn"]  # fmt: skip
    by_topic = sns(endpoint, "list-subscriptions-by-topic", "--topic-arn", topic)
    assert {s["SubscriptionArn"] for s in by_topic["Subscriptions"]} == {every, red}

    def publish(color: str, text: str) -> str:
        attributes = {"color": {"DataType": "String", "StringValue": color}}
        sent = sns(
            endpoint, "publish", "--topic-arn", topic, "--subject", "paint",
            "--message", text, "--message-attributes", json.dumps(attributes),
        )  # fmt: skip
        return str(sent["MessageId"])

    red_id = publish("red", 'red: <&> "quoted" ünïcode')
    blue_id = publish("blue", "blue")

    (raw,) = drain(endpoint, red_url, 1)
    assert raw["Body"] == 'red: <&> "quoted" ünïcode'
    assert raw["MessageAttributes"]["color"] == {"DataType": "String", "StringValue": "red"}

    envelopes = [json.loads(m["Body"]) for m in drain(endpoint, every_url, 2)]
    assert {e["MessageId"] for e in envelopes} == {red_id, blue_id}
    certificate = fetch(envelopes[0]["SigningCertURL"])
    for envelope in envelopes:
        assert envelope["Type"] == "Notification"
        assert envelope["TopicArn"] == topic
        assert envelope["Subject"] == "paint"
        check_signature(envelope, certificate)

    # The filter changes with set-subscription-attributes; blue now reaches the raw queue.
    aws(
        endpoint, "sns", "set-subscription-attributes", "--subscription-arn", red,
        "--attribute-name", "FilterPolicy", "--attribute-value", json.dumps({"color": ["blue"]}),
    )  # fmt: skip
    shown = sns(endpoint, "get-subscription-attributes", "--subscription-arn", red)["Attributes"]
    assert json.loads(shown["FilterPolicy"]) == {"color": ["blue"]}
    publish("blue", "blue again")
    publish("red", "red again")
    assert [m["Body"] for m in drain(endpoint, red_url, 1)] == ["blue again"]
    assert len(drain(endpoint, every_url, 2)) == 2

    aws(endpoint, "sns", "unsubscribe", "--subscription-arn", red)
    by_topic = sns(endpoint, "list-subscriptions-by-topic", "--topic-arn", topic)
    assert [s["SubscriptionArn"] for s in by_topic["Subscriptions"]] == [every]
    aws(endpoint, "sns", "delete-topic", "--topic-arn", topic)
    assert {"TopicArn": topic} not in sns(endpoint, "list-topics")["Topics"]
    for url in (every_url, red_url):
        aws(endpoint, "sqs", "delete-queue", "--queue-url", url)


def test_fifo_topic_publish_batch_and_tags(shared_broker: BrokerThread) -> None:
    endpoint = shared_broker.endpoint
    stem = f"sns-cli-fifo-{os.getpid()}"
    topic = sns(
        endpoint, "create-topic", "--name", f"{stem}.fifo", "--attributes",
        "FifoTopic=true,ContentBasedDeduplication=true",
    )["TopicArn"]  # fmt: skip
    url, arn = new_queue(endpoint, f"{stem}.fifo", "--attributes", "FifoQueue=true")
    sns(
        endpoint, "subscribe", "--topic-arn", topic, "--protocol", "sqs",
        "--notification-endpoint", arn, "--attributes", "RawMessageDelivery=true",
    )  # fmt: skip
    entries = [{"Id": f"e{i}", "Message": f"step {i}", "MessageGroupId": "g"} for i in range(5)]
    result = sns(
        endpoint, "publish-batch", "--topic-arn", topic,
        "--publish-batch-request-entries", json.dumps(entries),
    )  # fmt: skip
    assert [s["Id"] for s in result["Successful"]] == [f"e{i}" for i in range(5)]
    assert result["Failed"] == []
    # The same bodies again within 5 minutes: deduplicated by content, nothing new queued.
    sns(
        endpoint, "publish-batch", "--topic-arn", topic,
        "--publish-batch-request-entries", json.dumps(entries),
    )  # fmt: skip
    assert [m["Body"] for m in drain(endpoint, url, 5)] == [f"step {i}" for i in range(5)]

    stderr = refused(endpoint, "sns", "publish", "--topic-arn", topic, "--message", "no group")
    assert "InvalidParameter" in stderr

    aws(endpoint, "sns", "tag-resource", "--resource-arn", topic, "--tags", "Key=team,Value=ops")
    tags = sns(endpoint, "list-tags-for-resource", "--resource-arn", topic)["Tags"]
    assert tags == [{"Key": "team", "Value": "ops"}]
    aws(endpoint, "sns", "untag-resource", "--resource-arn", topic, "--tag-keys", "team")
    assert sns(endpoint, "list-tags-for-resource", "--resource-arn", topic)["Tags"] == []
    aws(endpoint, "sns", "delete-topic", "--topic-arn", topic)
    aws(endpoint, "sqs", "delete-queue", "--queue-url", url)


def test_errors_reach_the_cli_with_their_codes(shared_broker: BrokerThread) -> None:
    endpoint = shared_broker.endpoint
    missing = f"arn:aws:sns:us-east-1:{ACCOUNT_ID}:no-such-cli-topic"
    assert "NotFound" in refused(endpoint, "sns", "publish", "--topic-arn", missing,
                                 "--message", "x")  # fmt: skip
    assert "InvalidParameter" in refused(endpoint, "sns", "create-topic", "--name", "bad name!")
    stem = f"sns-cli-errors-{os.getpid()}"
    topic = sns(endpoint, "create-topic", "--name", stem)["TopicArn"]
    stderr = refused(
        endpoint, "sns", "subscribe", "--topic-arn", topic, "--protocol", "sqs",
        "--notification-endpoint", "arn:aws:sqs:us-east-1:000000000000:x",
        "--attributes", json.dumps({"FilterPolicy": '{"color": "red"}'}),
    )  # fmt: skip
    assert "InvalidParameter" in stderr
    assert "FilterPolicy" in stderr
    aws(endpoint, "sns", "delete-topic", "--topic-arn", topic)


def test_the_cli_signs_and_the_broker_checks(tmp_path: Path) -> None:
    auth = write_credentials(tmp_path)
    with BrokerThread(broker_config(tmp_path / "data", auth=auth)) as broker:
        topic = sns(broker.endpoint, "create-topic", "--name", "signed")["TopicArn"]
        assert sns(broker.endpoint, "publish", "--topic-arn", topic, "--message", "ok")
        wrong = aws(
            broker.endpoint,
            "sns",
            "list-topics",
            key=(ACCESS_KEY_ID, "a-secret-that-is-wrong"),
            check=False,
        )
        assert wrong.returncode != 0
        assert "SignatureDoesNotMatch" in wrong.stderr
