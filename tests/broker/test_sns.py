"""SNS action handlers: pagination, idempotent deletes, TargetArn, batches, helpers."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from broker.model.sns_errors import SnsError
from broker.sns import _check_batch, _tag_keys, _tags
from tests.support.broker import ACCOUNT_ID, BrokerThread, broker_config
from tests.support.sns import queue_arn, receive_all, sns_client
from tests.support.writer_gate import WriterGate


@pytest.fixture
def sns(shared_broker: BrokerThread) -> Any:
    return sns_client(shared_broker.endpoint)


def test_tag_and_batch_checks() -> None:
    assert _tags([{"Key": "a", "Value": "b"}]) == {"a": "b"}
    with pytest.raises(SnsError, match="Duplicated keys"):
        _tags([{"Key": "a", "Value": "b"}, {"Key": "a", "Value": "c"}])
    with pytest.raises(SnsError, match="Tags Reason"):
        _tags([{"Key": "", "Value": "b"}])
    _check_batch([{"Id": "ok-1_"}])
    assert _tag_keys(["a", "a", "b"]) == {"a", "b"}
    for keys in ([""], ["k" * 129], ["a", "x\ty"], []):
        with pytest.raises(SnsError, match="TagKeys Reason"):
            _tag_keys(keys)


def test_list_subscriptions_pages_by_100(shared_broker: BrokerThread, sns: Any) -> None:
    topic = sns.create_topic(Name="many-subscriptions")["TopicArn"]
    sqs = shared_broker.client("json")
    arn = queue_arn(sqs, sqs.create_queue(QueueName="many-subscriptions")["QueueUrl"])
    made = set()
    for index in range(120):
        made.add(sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=f"{arn}{index}")[
            "SubscriptionArn"
        ])  # fmt: skip
    pages = list(sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic))
    assert [len(page["Subscriptions"]) for page in pages] == [100, 20]
    assert {s["SubscriptionArn"] for page in pages for s in page["Subscriptions"]} == made
    listed = {
        s["SubscriptionArn"]
        for page in sns.get_paginator("list_subscriptions").paginate()
        for s in page["Subscriptions"]
    }
    assert made <= listed
    # A token is good for the listing it was issued for only.
    token = pages[0]["NextToken"]
    other = sns.create_topic(Name="many-subscriptions-other")["TopicArn"]
    for call, params in [
        (sns.list_subscriptions_by_topic, {"TopicArn": other}),
        (sns.list_subscriptions, {}),
        (sns.list_topics, {}),
    ]:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            call(NextToken=token, **params)
        assert info.value.response["Error"]["Message"] == "Invalid parameter: NextToken"
    sns.delete_topic(TopicArn=other)
    sns.delete_topic(TopicArn=topic)
    assert not made & {
        s["SubscriptionArn"] for s in sns.list_subscriptions().get("Subscriptions", [])
    }


def test_target_arn_publishes_to_topics_but_not_to_devices(
    shared_broker: BrokerThread, sns: Any
) -> None:
    topic = sns.create_topic(Name="by-target")["TopicArn"]
    sqs = shared_broker.client("json")
    url = sqs.create_queue(QueueName="by-target")["QueueUrl"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn(sqs, url))
    sns.publish(TargetArn=topic, Message="via TargetArn")
    (message,) = receive_all(sqs, url, 1)
    assert json.loads(message["Body"])["Message"] == "via TargetArn"
    device = f"arn:aws:sns:us-east-1:{ACCOUNT_ID}:endpoint/GCM/app/123"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(TargetArn=device, Message="m")
    assert "mobile push endpoints are out of scope" in info.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.publish(Message="m")
    assert info.value.response["Error"]["Message"] == (
        "Invalid parameter: TopicArn or TargetArn Reason: no value for required parameter"
    )
    # Both, even naming the same topic: refused rather than one silently ignored (found by a
    # report-only hunt).
    for target in (topic, f"arn:aws:sns:us-east-1:{ACCOUNT_ID}:another"):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.publish(TopicArn=topic, TargetArn=target, Message="m")
        assert info.value.response["Error"]["Code"] == "InvalidParameter"
        assert info.value.response["Error"]["Message"] == (
            "Invalid parameter: TopicArn or TargetArn Reason: Only one of TopicArn and "
            "TargetArn can be specified"
        )


def test_fifo_publish_batch_answers_sequence_numbers(sns: Any) -> None:
    topic = sns.create_topic(
        Name="batch.fifo", Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "true"}
    )["TopicArn"]
    result = sns.publish_batch(
        TopicArn=topic,
        PublishBatchRequestEntries=[
            {"Id": "a", "Message": "1", "MessageGroupId": "g"},
            {"Id": "b", "Message": "2", "MessageGroupId": "g"},
            {"Id": "c", "Message": "1", "MessageGroupId": "g"},  # a duplicate of "a"
        ],
    )
    by_id = {entry["Id"]: entry for entry in result["Successful"]}
    assert int(by_id["b"]["SequenceNumber"]) == int(by_id["a"]["SequenceNumber"]) + 1
    assert by_id["c"]["MessageId"] == by_id["a"]["MessageId"]
    assert result["Failed"] == []


def test_deleting_an_unknown_topic_is_fine(sns: Any) -> None:
    sns.delete_topic(TopicArn=f"arn:aws:sns:us-east-1:{ACCOUNT_ID}:never-was")


def test_idempotent_answers_wait_for_the_commit_they_rest_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repeated Subscribe, Unsubscribe or DeleteTopic writes nothing, but reports what the
    first call did: it answers only once that call's commit is durable (as SQS's second
    delete does, tests/broker/test_sqs.py)."""
    gate = WriterGate(monkeypatch)
    with BrokerThread(broker_config(tmp_path / "data")) as broker:
        first, second = sns_client(broker.endpoint), sns_client(broker.endpoint, region="eu-west-1")
        sqs = broker.client("json")
        arn = queue_arn(sqs, sqs.create_queue(QueueName="subscribed")["QueueUrl"])
        topic = first.create_topic(Name="twice")["TopicArn"]
        subscription = first.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        calls = {
            "Subscribe": lambda client: client.subscribe(
                TopicArn=topic, Protocol="sqs", Endpoint=arn + "-2"
            ),
            "Unsubscribe": lambda client: client.unsubscribe(
                SubscriptionArn=subscription["SubscriptionArn"]
            ),
        }
        for action, run in calls.items():
            answered: list[str] = []
            gate.close()
            threads = [
                threading.Thread(
                    target=lambda c=c, w=w, run=run, answered=answered: (
                        run(c),
                        answered.append(w),
                    )
                )
                for c, w in ((first, "first"), (second, "second"))
            ]
            threads[0].start()
            assert gate.writing.wait(10), action  # the first call's commit is under way
            threads[1].start()
            threads[1].join(0.5)  # a wrong broker answers at once; a right one waits
            early = list(answered)
            gate.open.set()
            assert early == [], f"{action}: answered before the first call was durable"
            for thread in threads:
                thread.join(10)
            assert sorted(answered) == ["first", "second"], action
