"""The AWS SDK for JavaScript v3 against a real broker that checks SigV4 signatures.

A second SDK next to botocore, written by other people: its own serializers (awsJson 1.0 for
SQS, the query protocol for SNS), its own SigV4 signer, error parsing (awsQueryCompatible
codes, the client's exception classes) and the MD5 check of message bodies it makes on every
send and receive. The scenarios are in tests/compat/js/*.mjs; each prints one JSON object of
what the SDK returned, and the assertions are here. Attribute digests are checked with the
oracle in tests/support/digests.py, written from AWS's documentation (the SDK checks only the
body's).

Needs node and npm; the pinned SDK is installed by ``npm ci`` in tests/compat/js on first use
(tests/support/js.py; .ci/run installs node and npm when absent).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from tests.support.digests import expected_attributes_md5, md5_hex
from tests.support.js import JS_DIR, NODE_TIMEOUT_SECONDS, node_executable
from tests.support.sns import check_signature, fetch

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class ScenarioRun:
    """What one script printed, and the broker it ran against (still running)."""

    results: dict[str, Any]
    broker: BrokerThread


def run_scenarios(broker: BrokerThread, script: str) -> dict[str, Any]:
    """Run ``tests/compat/js/<script>`` against ``broker``; the JSON object it printed."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": "/nonexistent",
        "WHARF_ENDPOINT": broker.endpoint,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        # The SDK warns on every run that its 2027 releases will need a newer node.
        "AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED": "true",
    }
    completed = subprocess.run(
        [node_executable(), script],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, f"{script} failed: {completed.stderr}"
    results: dict[str, Any] = json.loads(completed.stdout)
    return results


def signed_broker(directory: Path) -> BrokerThread:
    return BrokerThread(broker_config(directory / "data", auth=write_credentials(directory)))


@pytest.fixture(scope="module")
def sqs_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScenarioRun]:
    with signed_broker(tmp_path_factory.mktemp("js-sqs")) as broker:
        yield ScenarioRun(run_scenarios(broker, "sqs.mjs"), broker)


@pytest.fixture(scope="module")
def sns_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScenarioRun]:
    with signed_broker(tmp_path_factory.mktemp("js-sns")) as broker:
        yield ScenarioRun(run_scenarios(broker, "sns.mjs"), broker)


def attributes_md5(attributes: dict[str, dict[str, str]]) -> str:
    """MD5OfMessageAttributes of attributes as the scripts print them (binary in base64)."""
    return expected_attributes_md5(
        {
            name: {**value, "BinaryValue": base64.b64decode(value["BinaryValue"])}
            if "BinaryValue" in value
            else value
            for name, value in attributes.items()
        }
    )


def queue_url(run: ScenarioRun, name: str) -> str:
    return f"{run.broker.endpoint}/{ACCOUNT_ID}/{name}"


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"


def by_body(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {message["Body"]: message for message in messages}
    assert len(found) == len(messages), "a body came twice"
    return found


SERVICE_BASE_CLASSES = {"SQSServiceException", "SNSServiceException"}


def assert_sdk_error(
    error: dict[str, Any], name: str, status: int, code: str | None = None
) -> None:
    """The SDK threw ``name`` for an HTTP ``status`` answer with error code ``code``, as an
    instance of the client's class of that name (when the script asked about it), of the
    service's base exception class, and of no other class the script asked about."""
    assert error.get("resolved") is not True, "the action succeeded"
    assert (error["name"], error["httpStatusCode"]) == (name, status), error
    assert error["code"] == (code or name), error
    assert error["fault"] == "client", error
    assert error["message"]
    assert error["requestId"]
    for label, is_instance in error["instanceOf"].items():
        assert is_instance is (label == name or label in SERVICE_BASE_CLASSES), (label, error)


# ---------------------------------------------------------------------- SQS


def test_sqs_create_queue_and_get_queue_url(sqs_run: ScenarioRun) -> None:
    created = sqs_run.results["create"]
    standard, fifo = queue_url(sqs_run, "js-standard"), queue_url(sqs_run, "js-orders.fifo")
    assert (created["standardUrl"], created["standardUrlAgain"]) == (standard, standard)
    assert (created["getStandardUrl"], created["fifoUrl"], created["getFifoUrl"]) == (
        standard,
        fifo,
        fifo,
    )
    attributes = created["fifoAttributes"]
    assert attributes["QueueArn"] == queue_arn("js-orders.fifo")
    assert (attributes["FifoQueue"], attributes["ContentBasedDeduplication"]) == ("true", "true")


def test_sqs_list_queues_by_prefix_in_pages(sqs_run: ScenarioRun) -> None:
    listed = sqs_run.results["list"]
    pages = listed["pages"]
    assert [len(page["QueueUrls"]) for page in pages] == [2, 2, 1]
    assert [page["hasNextToken"] for page in pages] == [True, True, False]
    every_page = [url for page in pages for url in page["QueueUrls"]]
    assert sorted(every_page) == sorted(listed["created"])
    assert listed["created"] == [queue_url(sqs_run, f"js-page-{i}") for i in range(5)]
    assert sorted(listed["unpaged"]) == sorted(
        [
            *listed["created"],
            queue_url(sqs_run, "js-standard"),
            queue_url(sqs_run, "js-orders.fifo"),
        ]
    )


def test_sqs_get_and_set_queue_attributes(sqs_run: ScenarioRun) -> None:
    before, after = sqs_run.results["attributes"]["before"], sqs_run.results["attributes"]["after"]
    assert before["VisibilityTimeout"] == "30"
    assert before["MessageRetentionPeriod"] == "345600"
    assert "FifoQueue" not in before
    assert after == {
        "VisibilityTimeout": "45",
        "MessageRetentionPeriod": "3600",
        "QueueArn": queue_arn("js-standard"),
    }


def test_sqs_queue_tags(sqs_run: ScenarioRun) -> None:
    tags = sqs_run.results["tags"]
    assert tags["createdTags"] == {"team": "wharf"}
    assert tags["tagged"] == {"team": "wharf", "env": "test", "tier": "1"}
    assert tags["untagged"] == {"env": "test"}


def test_sqs_send_message_digests(sqs_run: ScenarioRun) -> None:
    sent = sqs_run.results["send"]
    assert sent["MD5OfMessageBody"] == md5_hex("typed body ✓".encode())
    assert sent["MD5OfMessageAttributes"] == attributes_md5(sent["attributesSent"])
    assert {value["DataType"] for value in sent["attributesSent"].values()} == {
        "String",
        "Number",
        "Binary",
        "String.custom",
        "Number.float",
        "Binary.png",
    }
    trace = {"AWSTraceHeader": {"DataType": "String", "StringValue": sent["traceHeader"]}}
    assert sent["MD5OfMessageSystemAttributes"] == attributes_md5(trace)


def test_sqs_receive_with_every_attribute(sqs_run: ScenarioRun) -> None:
    sent = sqs_run.results["send"]
    messages = by_body(sqs_run.results["receive"]["messages"])
    assert set(messages) == {"typed body ✓", "batch one", "batch two"}

    typed = messages["typed body ✓"]
    assert typed["MessageId"] == sent["MessageId"]
    assert typed["MD5OfBody"] == sent["MD5OfMessageBody"]
    assert typed["MessageAttributes"] == sent["attributesSent"]
    assert typed["MD5OfMessageAttributes"] == attributes_md5(sent["attributesSent"])
    system = typed["Attributes"]
    assert system["AWSTraceHeader"] == sent["traceHeader"]
    assert system["SenderId"] == ACCOUNT_ID
    assert system["ApproximateReceiveCount"] == "1"
    assert int(system["SentTimestamp"]) <= int(system["ApproximateFirstReceiveTimestamp"])

    assert messages["batch two"]["MessageAttributes"] == {
        "kind": {"DataType": "String", "StringValue": "batched"}
    }
    assert messages["batch two"]["MD5OfMessageAttributes"] == attributes_md5(
        messages["batch two"]["MessageAttributes"]
    )
    assert "MessageAttributes" not in messages["batch one"]
    assert "MD5OfMessageAttributes" not in messages["batch one"]


def test_sqs_delay_seconds(sqs_run: ScenarioRun) -> None:
    delay = sqs_run.results["delay"]
    assert delay["countsRightAfter"]["ApproximateNumberOfMessagesDelayed"] == "1"
    (message,) = delay["received"]
    assert (message["Body"], message["MessageId"]) == ("delayed", delay["MessageId"])
    assert 2 <= delay["secondsAfterSend"] < 8


def test_sqs_send_message_batch_reports_the_invalid_entry(sqs_run: ScenarioRun) -> None:
    batch = sqs_run.results["batch"]
    successful = {entry["Id"]: entry for entry in batch["Successful"]}
    assert set(successful) == {"first", "second"}
    assert successful["first"]["MD5OfMessageBody"] == md5_hex(b"batch one")
    assert successful["second"]["MD5OfMessageAttributes"] == attributes_md5(
        {"kind": {"DataType": "String", "StringValue": "batched"}}
    )
    (failed,) = batch["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == (
        "bad",
        "InvalidMessageContents",
        True,
    )
    assert failed["Message"]


def test_sqs_change_message_visibility(sqs_run: ScenarioRun) -> None:
    visibility = sqs_run.results["visibility"]
    (again,) = visibility["again"]
    assert (again["Body"], again["Attributes"]["ApproximateReceiveCount"]) == ("batch one", "2")
    assert visibility["batch"]["Successful"] == [{"Id": "visible"}]
    (failed,) = visibility["batch"]["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == (
        "bogus",
        "ReceiptHandleIsInvalid",
        True,
    )
    (from_batch,) = visibility["againFromBatch"]
    assert (from_batch["Body"], from_batch["Attributes"]["ApproximateReceiveCount"]) == (
        "batch two",
        "2",
    )


def test_sqs_delete_message_and_batch(sqs_run: ScenarioRun) -> None:
    deleted = sqs_run.results["delete"]
    assert sorted(entry["Id"] for entry in deleted["batch"]["Successful"]) == [
        "late",
        "one",
        "two",
    ]
    (failed,) = deleted["batch"]["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == (
        "bogus",
        "ReceiptHandleIsInvalid",
        True,
    )
    assert set(deleted["countsAfter"].values()) == {"0"}


def test_sqs_long_poll_woken_by_a_send(sqs_run: ScenarioRun) -> None:
    poll = sqs_run.results["longPoll"]
    (message,) = poll["messages"]
    assert message["Body"] == "wake up"
    assert 0.9 <= poll["seconds"] < 5, "the long poll was not woken by the send"
    # Asked by the newer MessageSystemAttributeNames alone, and for one attribute by name.
    assert message["Attributes"] == {"SenderId": ACCOUNT_ID, "ApproximateReceiveCount": "1"}
    assert message["MessageAttributes"] == {"wanted": {"DataType": "String", "StringValue": "yes"}}
    assert message["MD5OfMessageAttributes"] == attributes_md5(message["MessageAttributes"])


def test_sqs_fifo_order_and_deduplication(sqs_run: ScenarioRun) -> None:
    fifo = sqs_run.results["fifo"]
    sends = {send["body"]: send for send in fifo["sends"]}
    sequence = [int(send["SequenceNumber"]) for send in fifo["sends"]]
    assert sequence == sorted(sequence)
    assert len(set(sequence)) == len(sequence)
    assert fifo["duplicate"]["MessageId"] == sends["a1"]["MessageId"]
    assert fifo["explicitDuplicate"]["MessageId"] == fifo["explicitFirst"]["MessageId"]

    received = fifo["received"]
    assert len(received) == 6, [message["Body"] for message in received]
    groups: dict[str, list[str]] = {}
    for message in received:
        groups.setdefault(message["Attributes"]["MessageGroupId"], []).append(message["Body"])
    assert groups == {"alpha": ["a1", "a2", "a3", "a4"], "beta": ["b1", "b2"]}
    for message in received:
        if message["Body"] in sends:
            assert message["MessageId"] == sends[message["Body"]]["MessageId"]
            assert (
                message["Attributes"]["SequenceNumber"] == sends[message["Body"]]["SequenceNumber"]
            )
        assert message["Attributes"]["MessageDeduplicationId"]
    assert by_body(received)["a4"]["Attributes"]["MessageDeduplicationId"] == "dedup-a4"
    assert fifo["afterwards"]["ApproximateNumberOfMessagesNotVisible"] == "6"


def test_sqs_dead_letter_queue(sqs_run: ScenarioRun) -> None:
    dead = sqs_run.results["deadLetter"]
    assert dead["dlqArn"] == queue_arn("js-dead-letters")
    assert json.loads(dead["sourceRedrivePolicy"]) == {
        "deadLetterTargetArn": dead["dlqArn"],
        "maxReceiveCount": 1,
    }
    (first,) = dead["firstTry"]
    assert (first["Body"], first["Attributes"]["ApproximateReceiveCount"]) == ("doomed", "1")
    assert dead["secondTry"] == []
    (moved,) = dead["inDeadLetterQueue"]
    assert (moved["Body"], moved["MessageId"]) == ("doomed", first["MessageId"])
    assert moved["Attributes"]["DeadLetterQueueSourceArn"] == queue_arn("js-redriven")
    assert dead["sources"] == [queue_url(sqs_run, "js-redriven")]


def test_sqs_purge_queue(sqs_run: ScenarioRun) -> None:
    purge = sqs_run.results["purge"]
    assert purge["before"]["ApproximateNumberOfMessages"] == "3"
    assert set(purge["after"].values()) == {"0"}


def test_sqs_errors_reach_the_sdk_as_its_classes(sqs_run: ScenarioRun) -> None:
    errors = sqs_run.results["errors"]
    unknown = errors["getUrlOfUnknownQueue"]
    assert_sdk_error(unknown, "QueueDoesNotExist", 400, "AWS.SimpleQueueService.NonExistentQueue")
    assert unknown["message"] == "The specified queue does not exist."
    assert unknown["instanceOf"]["SQSServiceException"] is True
    for action in ("deleteInvalidHandle", "changeVisibilityInvalidHandle"):
        assert_sdk_error(errors[action], "ReceiptHandleIsInvalid", 404)  # the model's status
    assert_sdk_error(
        errors["emptyBatch"], "EmptyBatchRequest", 400, "AWS.SimpleQueueService.EmptyBatchRequest"
    )
    assert_sdk_error(
        errors["duplicateBatchIds"],
        "BatchEntryIdsNotDistinct",
        400,
        "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    )
    assert_sdk_error(errors["unknownQueueAttribute"], "InvalidAttributeName", 400)
    assert_sdk_error(errors["wrongSecretKey"], "SignatureDoesNotMatch", 403)
    assert_sdk_error(errors["unknownAccessKey"], "InvalidClientTokenId", 403)


def test_sqs_delete_queue(sqs_run: ScenarioRun) -> None:
    deleted = sqs_run.results["deleteQueue"]
    for action in ("getUrlAfterDelete", "sendAfterDelete"):
        assert_sdk_error(
            deleted[action], "QueueDoesNotExist", 400, "AWS.SimpleQueueService.NonExistentQueue"
        )
    assert deleted.get("listedAfterDelete", []) == []


# ---------------------------------------------------------------------- SNS


def topic_arn(name: str) -> str:
    return f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:{name}"


RED_ATTRIBUTES = {
    "color": {"Type": "String", "Value": "red"},
    "size": {"Type": "Number", "Value": "42"},
    "blob": {"Type": "Binary", "Value": base64.b64encode(bytes([0, 1, 0xFE, 0xFF])).decode()},
}


def envelopes(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The SNS envelopes delivered as SQS bodies, by their Message."""
    parsed = [json.loads(message["Body"]) for message in messages]
    found = {envelope["Message"]: envelope for envelope in parsed}
    assert len(found) == len(parsed), "a message was delivered twice"
    return found


def test_sns_create_topic(sns_run: ScenarioRun) -> None:
    topics = sns_run.results["topics"]
    assert topics["topicArn"] == topics["again"] == topic_arn("js-events")
    assert topics["fifoTopicArn"] == topic_arn("js-events.fifo")
    attributes = topics["fifoAttributes"]
    assert attributes["TopicArn"] == topic_arn("js-events.fifo")
    assert (attributes["FifoTopic"], attributes["ContentBasedDeduplication"]) == ("true", "true")


def test_sns_subscribe_queues(sns_run: ScenarioRun) -> None:
    subscriptions = sns_run.results["subscriptions"]
    arns = subscriptions["arns"]
    for kind in ("wrapped", "raw", "filtered"):
        assert arns[kind].startswith(topic_arn("js-events") + ":")
    assert arns["fifo"].startswith(topic_arn("js-events.fifo") + ":")
    assert len(set(arns.values())) == 4

    raw = subscriptions["rawAttributes"]
    assert (raw["RawMessageDelivery"], raw["Protocol"], raw["Endpoint"]) == (
        "true",
        "sqs",
        queue_arn("js-sns-raw"),
    )
    assert (raw["SubscriptionArn"], raw["TopicArn"]) == (arns["raw"], topic_arn("js-events"))
    filtered = subscriptions["filteredAttributes"]
    assert filtered["RawMessageDelivery"] == "false"
    assert json.loads(filtered["FilterPolicy"]) == {"color": ["red"]}

    listed = {
        (entry["SubscriptionArn"], entry["Protocol"], entry["Endpoint"], entry["TopicArn"])
        for entry in subscriptions["byTopic"]
    }
    assert listed == {
        (arns[kind], "sqs", queue_arn(f"js-sns-{kind}"), topic_arn("js-events"))
        for kind in ("wrapped", "raw", "filtered")
    }


def test_sns_envelope_through_sqs(sns_run: ScenarioRun) -> None:
    results = sns_run.results
    wrapped = envelopes(results["deliveries"]["wrapped"])
    batch_ids = {entry["Id"]: entry["MessageId"] for entry in results["publishBatch"]["Successful"]}
    assert {message: envelope["MessageId"] for message, envelope in wrapped.items()} == {
        "red message <&> ✓": results["publish"]["red"],
        "blue message": results["publish"]["blue"],
        "batched red": batch_ids["red-batched"],
        "batched plain": batch_ids["plain-batched"],
    }
    red = wrapped["red message <&> ✓"]
    assert (red["Type"], red["TopicArn"], red["Subject"]) == (
        "Notification",
        topic_arn("js-events"),
        "a red one",
    )
    assert red["MessageAttributes"] == RED_ATTRIBUTES
    assert "Subject" not in wrapped["blue message"]
    assert "MessageAttributes" not in wrapped["batched plain"]
    sent_at = datetime.datetime.fromisoformat(red["Timestamp"])
    assert abs(datetime.datetime.now(datetime.UTC) - sent_at) < datetime.timedelta(minutes=5)
    assert red["UnsubscribeURL"].endswith(
        f"?Action=Unsubscribe&SubscriptionArn={results['subscriptions']['arns']['wrapped']}"
    )
    assert red["SignatureVersion"] == "1"
    certificate = fetch(red["SigningCertURL"])
    for envelope in wrapped.values():
        check_signature(envelope, certificate)


def test_sns_raw_message_delivery(sns_run: ScenarioRun) -> None:
    raw = by_body(sns_run.results["deliveries"]["raw"])
    assert set(raw) == {"red message <&> ✓", "blue message", "batched red", "batched plain"}
    assert raw["red message <&> ✓"]["MessageAttributes"] == {
        name: (
            {"DataType": value["Type"], "BinaryValue": value["Value"]}
            if value["Type"] == "Binary"
            else {"DataType": value["Type"], "StringValue": value["Value"]}
        )
        for name, value in RED_ATTRIBUTES.items()
    }
    assert raw["batched plain"]["MessageAttributes"] == {}


def test_sns_filter_policy(sns_run: ScenarioRun) -> None:
    filtered = envelopes(sns_run.results["deliveries"]["filtered"])
    assert set(filtered) == {"red message <&> ✓", "batched red"}


def test_sns_publish_batch(sns_run: ScenarioRun) -> None:
    batch = sns_run.results["publishBatch"]
    assert sorted(entry["Id"] for entry in batch["Successful"]) == ["plain-batched", "red-batched"]
    assert all(entry["MessageId"] for entry in batch["Successful"])
    assert batch["Failed"] == []
    refused = sns_run.results["errors"]["batchWithAnEmptyMessage"]
    assert_sdk_error(refused, "InvalidParameterException", 400, "InvalidParameter")


def test_sns_fifo_topic_to_fifo_queue(sns_run: ScenarioRun) -> None:
    published = sns_run.results["fifoPublish"]
    sequence = [int(entry["SequenceNumber"]) for entry in published]
    assert sequence == sorted(sequence)
    assert len(set(sequence)) == 3
    delivered = sns_run.results["deliveries"]["fifo"]
    assert [message["Body"] for message in delivered] == ["first", "second", "third"]
    assert {message["Attributes"]["MessageGroupId"] for message in delivered} == {"group"}


def test_sns_topic_attributes_and_tags(sns_run: ScenarioRun) -> None:
    attributes = sns_run.results["topicAttributes"]
    assert attributes["DisplayName"] == "Renamed"
    assert attributes["TopicArn"] == topic_arn("js-events")
    assert attributes["SubscriptionsConfirmed"] == "3"
    assert json.loads(attributes["Policy"])["Statement"]

    tags = sns_run.results["tags"]
    assert tags["createdTags"] == [{"Key": "team", "Value": "wharf"}]
    assert sorted(tags["tagged"], key=lambda tag: tag["Key"]) == [
        {"Key": "env", "Value": "test"},
        {"Key": "team", "Value": "wharf"},
        {"Key": "tier", "Value": "1"},
    ]
    assert tags["untagged"] == [{"Key": "env", "Value": "test"}]


def test_sns_unsubscribe(sns_run: ScenarioRun) -> None:
    unsubscribed = sns_run.results["unsubscribe"]
    arns = sns_run.results["subscriptions"]["arns"]
    assert {entry["SubscriptionArn"] for entry in unsubscribed["byTopic"]} == {
        arns["wrapped"],
        arns["filtered"],
    }
    assert unsubscribed["raw"] == []
    assert set(envelopes(unsubscribed["wrapped"])) == {"after unsubscribe"}


def test_sns_errors_reach_the_sdk_as_its_classes(sns_run: ScenarioRun) -> None:
    errors = sns_run.results["errors"]
    for action in ("publishToUnknownTopic", "attributesOfUnknownTopic"):
        assert_sdk_error(errors[action], "NotFoundException", 404, "NotFound")
        assert errors[action]["instanceOf"]["SNSServiceException"] is True
    bad_policy = errors["badFilterPolicy"]
    assert_sdk_error(bad_policy, "InvalidParameterException", 400, "InvalidParameter")
    assert bad_policy["message"].startswith("Invalid parameter: FilterPolicy")
    assert_sdk_error(errors["wrongSecretKey"], "SignatureDoesNotMatch", 403)


def test_sns_list_and_delete_topics(sns_run: ScenarioRun) -> None:
    deleted = sns_run.results["deleteTopics"]
    assert sorted(deleted["listedBefore"]) == [
        topic_arn("js-events"),
        topic_arn("js-events.fifo"),
    ]
    assert deleted["listedAfter"] == []
    assert_sdk_error(deleted["attributesAfterDelete"], "NotFoundException", 404, "NotFound")
