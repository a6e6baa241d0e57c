"""The AWS CLI (v1, from the venv) against a real broker: the commands people type first.

Each command runs in a subprocess with nothing from the machine's ~/.aws
(tests/support/aws_cli.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import aws_cli
from tests.support.broker import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    BrokerThread,
    broker_config,
    write_credentials,
)

pytestmark = pytest.mark.slow


def aws(
    endpoint: str,
    *args: str,
    key: tuple[str, str] = (ACCESS_KEY_ID, SECRET_ACCESS_KEY),
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    return aws_cli.aws(endpoint, "sqs", *args, key=key, check=check)


def aws_json(endpoint: str, *args: str) -> Any:
    return aws_cli.aws_json(endpoint, "sqs", *args)


def test_the_everyday_commands(shared_broker: BrokerThread):
    endpoint = shared_broker.endpoint
    name = f"cli-{os.getpid()}"
    url = aws_json(endpoint, "create-queue", "--queue-name", name)["QueueUrl"]
    assert url == f"{endpoint}/000000000000/{name}"
    assert aws_json(endpoint, "get-queue-url", "--queue-name", name)["QueueUrl"] == url

    body = 'hello from the CLI: <&> "quoted" ünïcode'
    sent = aws_json(
        endpoint,
        "send-message",
        "--queue-url",
        url,
        "--message-body",
        body,
        "--message-attributes",
        json.dumps({"kind": {"DataType": "String", "StringValue": "greeting"}}),
    )
    assert sent["MD5OfMessageBody"] == hashlib.md5(body.encode()).hexdigest()

    attributes = aws_json(
        endpoint, "get-queue-attributes", "--queue-url", url, "--attribute-names", "All"
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1"
    assert attributes["QueueArn"].endswith(f":{name}")

    received = aws_json(
        endpoint,
        "receive-message",
        "--queue-url",
        url,
        "--message-attribute-names",
        "All",
        "--attribute-names",
        "All",
        "--wait-time-seconds",
        "1",
    )
    (message,) = received["Messages"]
    assert message["Body"] == body
    assert message["MessageId"] == sent["MessageId"]
    assert message["MessageAttributes"]["kind"]["StringValue"] == "greeting"
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"

    aws(
        endpoint, "delete-message", "--queue-url", url, "--receipt-handle", message["ReceiptHandle"]
    )
    counts = aws_json(
        endpoint,
        "get-queue-attributes",
        "--queue-url",
        url,
        "--attribute-names",
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
    )["Attributes"]
    assert counts == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
    assert url in aws_json(endpoint, "list-queues", "--queue-name-prefix", name)["QueueUrls"]
    aws(endpoint, "delete-queue", "--queue-url", url)


def test_errors_reach_the_cli_with_their_codes(shared_broker: BrokerThread):
    completed = aws(
        shared_broker.endpoint, "get-queue-url", "--queue-name", "no-such-cli-queue", check=False
    )
    assert completed.returncode != 0
    assert "AWS.SimpleQueueService.NonExistentQueue" in completed.stderr


def test_the_cli_signs_and_the_broker_checks(tmp_path: Path):
    auth = write_credentials(tmp_path)
    with BrokerThread(broker_config(tmp_path / "data", auth=auth)) as broker:
        url = aws_json(broker.endpoint, "create-queue", "--queue-name", "signed")["QueueUrl"]
        aws(broker.endpoint, "send-message", "--queue-url", url, "--message-body", "ok")
        refused = aws(
            broker.endpoint,
            "list-queues",
            key=(ACCESS_KEY_ID, "a-secret-that-is-wrong"),
            check=False,
        )
        assert refused.returncode != 0
        assert "SignatureDoesNotMatch" in refused.stderr


def refused(endpoint: str, *args: str) -> str:
    return aws_cli.refused(endpoint, "sqs", *args)


def entries(*items: dict[str, Any]) -> str:
    return json.dumps(list(items))


BOGUS_HANDLE = "not-a-receipt-handle"


def test_batches_visibility_and_purge(shared_broker: BrokerThread):
    endpoint = shared_broker.endpoint
    sqs = shared_broker.client("json")
    url = sqs.create_queue(QueueName=f"cli-batch-{os.getpid()}")["QueueUrl"]

    bodies = ["first", "second ünïcode", "third <&>"]
    sent = aws_json(
        endpoint,
        "send-message-batch",
        "--queue-url",
        url,
        "--entries",
        entries(*({"Id": f"m{i}", "MessageBody": body} for i, body in enumerate(bodies))),
    )
    assert sent.get("Failed", []) == []
    assert {e["Id"]: e["MD5OfMessageBody"] for e in sent["Successful"]} == {
        f"m{i}": hashlib.md5(body.encode()).hexdigest() for i, body in enumerate(bodies)
    }
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)
    handles = {m["Body"]: m["ReceiptHandle"] for m in got["Messages"]}
    assert sorted(handles) == sorted(bodies)

    aws(
        endpoint,
        "change-message-visibility",
        "--queue-url",
        url,
        "--receipt-handle",
        handles["first"],
        "--visibility-timeout",
        "0",
    )
    changed = aws_json(
        endpoint,
        "change-message-visibility-batch",
        "--queue-url",
        url,
        "--entries",
        entries(
            {"Id": "ok", "ReceiptHandle": handles["third <&>"], "VisibilityTimeout": 0},
            {"Id": "bad", "ReceiptHandle": BOGUS_HANDLE, "VisibilityTimeout": 0},
        ),
    )
    assert [e["Id"] for e in changed["Successful"]] == ["ok"]
    (failed,) = changed["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == (
        "bad",
        "ReceiptHandleIsInvalid",
        True,
    )
    again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)
    assert sorted(m["Body"] for m in again["Messages"]) == ["first", "third <&>"]

    deleted = aws_json(
        endpoint,
        "delete-message-batch",
        "--queue-url",
        url,
        "--entries",
        entries(
            *(
                {"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(again["Messages"])
            ),
            {"Id": "bad", "ReceiptHandle": BOGUS_HANDLE},
        ),
    )
    assert sorted(e["Id"] for e in deleted["Successful"]) == ["d0", "d1"]
    assert [(e["Id"], e["Code"]) for e in deleted["Failed"]] == [("bad", "ReceiptHandleIsInvalid")]

    # Whole-request errors: the CLI exits non-zero and prints AWS's code.
    assert "ReceiptHandleIsInvalid" in refused(
        endpoint, "delete-message", "--queue-url", url, "--receipt-handle", BOGUS_HANDLE
    )
    twice = entries({"Id": "same", "MessageBody": "a"}, {"Id": "same", "MessageBody": "b"})
    assert "BatchEntryIdsNotDistinct" in refused(
        endpoint, "send-message-batch", "--queue-url", url, "--entries", twice
    )
    eleven = entries(*({"Id": str(i), "MessageBody": "x"} for i in range(11)))
    assert "TooManyEntriesInBatchRequest" in refused(
        endpoint, "send-message-batch", "--queue-url", url, "--entries", eleven
    )

    assert sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"] == {"ApproximateNumberOfMessagesNotVisible": "1"}  # "second" is held
    aws(endpoint, "purge-queue", "--queue-url", url)
    counts = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert counts == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
    sqs.delete_queue(QueueUrl=url)


def test_attributes_tags_and_permissions(shared_broker: BrokerThread):
    endpoint = shared_broker.endpoint
    sqs = shared_broker.client("json")
    url = sqs.create_queue(QueueName=f"cli-attributes-{os.getpid()}")["QueueUrl"]

    aws(
        endpoint,
        "set-queue-attributes",
        "--queue-url",
        url,
        "--attributes",
        "VisibilityTimeout=45,DelaySeconds=2",
    )
    current = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["VisibilityTimeout", "DelaySeconds"]
    )["Attributes"]
    assert current == {"VisibilityTimeout": "45", "DelaySeconds": "2"}
    assert "InvalidAttributeValue" in refused(
        endpoint,
        "set-queue-attributes",
        "--queue-url",
        url,
        "--attributes",
        "VisibilityTimeout=43201",
    )
    assert "InvalidAttributeName" in refused(
        endpoint, "set-queue-attributes", "--queue-url", url, "--attributes", "NoSuchAttribute=1"
    )

    aws(endpoint, "tag-queue", "--queue-url", url, "--tags", "team=payments,env=test")
    assert aws_json(endpoint, "list-queue-tags", "--queue-url", url)["Tags"] == {
        "team": "payments",
        "env": "test",
    }
    aws(endpoint, "untag-queue", "--queue-url", url, "--tag-keys", "env")
    assert aws_json(endpoint, "list-queue-tags", "--queue-url", url)["Tags"] == {"team": "payments"}

    aws(
        endpoint,
        "add-permission",
        "--queue-url",
        url,
        "--label",
        "partner-send",
        "--aws-account-ids",
        "111122223333",
        "--actions",
        "SendMessage",
        "GetQueueUrl",
    )
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"]
    )
    (statement,) = policy["Statement"]
    assert statement["Sid"] == "partner-send"
    assert statement["Effect"] == "Allow"
    assert sorted(statement["Action"]) == ["SQS:GetQueueUrl", "SQS:SendMessage"]
    aws(endpoint, "remove-permission", "--queue-url", url, "--label", "partner-send")
    left = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
    assert "Attributes" not in left  # the last label gone, no Policy is left
    assert "InvalidParameterValue" in refused(
        endpoint, "remove-permission", "--queue-url", url, "--label", "partner-send"
    )
    sqs.delete_queue(QueueUrl=url)


def test_dead_letter_sources_and_move_tasks(shared_broker: BrokerThread):
    endpoint = shared_broker.endpoint
    sqs = shared_broker.client("json")
    prefix = f"cli-move-{os.getpid()}"

    def arn_of(url: str) -> str:
        found: str = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        return found

    dlq = sqs.create_queue(QueueName=f"{prefix}-dlq")["QueueUrl"]
    policy = json.dumps({"deadLetterTargetArn": arn_of(dlq), "maxReceiveCount": 1})
    source = sqs.create_queue(QueueName=f"{prefix}-source", Attributes={"RedrivePolicy": policy})[
        "QueueUrl"
    ]
    destination = sqs.create_queue(QueueName=f"{prefix}-destination")["QueueUrl"]
    sources = aws_json(endpoint, "list-dead-letter-source-queues", "--queue-url", dlq)
    assert sources["queueUrls"] == [source]

    for start in (0, 10):
        sqs.send_message_batch(
            QueueUrl=dlq,
            Entries=[{"Id": str(i), "MessageBody": f"dead {start + i}"} for i in range(10)],
        )
    # One message a second: the task is still running when it is listed and cancelled.
    handle = aws_json(
        endpoint,
        "start-message-move-task",
        "--source-arn",
        arn_of(dlq),
        "--destination-arn",
        arn_of(destination),
        "--max-number-of-messages-per-second",
        "1",
    )["TaskHandle"]
    (task,) = aws_json(endpoint, "list-message-move-tasks", "--source-arn", arn_of(dlq))["Results"]
    assert task["TaskHandle"] == handle
    assert task["Status"] == "RUNNING"
    assert task["DestinationArn"] == arn_of(destination)
    assert task["MaxNumberOfMessagesPerSecond"] == 1
    cancelled = aws_json(endpoint, "cancel-message-move-task", "--task-handle", handle)
    assert 0 <= cancelled["ApproximateNumberOfMessagesMoved"] < 20
    (task,) = aws_json(endpoint, "list-message-move-tasks", "--source-arn", arn_of(dlq))["Results"]
    assert task["Status"] in ("CANCELLING", "CANCELLED")
    again = refused(endpoint, "cancel-message-move-task", "--task-handle", handle)
    assert "InvalidParameterValue" in again  # only a RUNNING task can be cancelled
    # Only a dead-letter queue can be a move task's source.
    assert "InvalidParameterValue" in refused(
        endpoint, "start-message-move-task", "--source-arn", arn_of(destination)
    )
    for url in (source, dlq, destination):
        sqs.delete_queue(QueueUrl=url)
