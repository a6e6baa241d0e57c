"""An old boto3/botocore, the last whose SQS model is the query protocol, against a real broker
that checks SigV4 signatures.

The other query-protocol tests drive current botocore with a model we rebuilt ourselves
(tests/support/aws_models.py); here the oracle is independent: boto3 1.28.80 / botocore
1.31.80 as released, with the SQS model, form serializer, SigV4 signer, XML parser and error
parsing (modeled exception classes of the ``AWS.SimpleQueueService.*`` codes) that shipped in
it. It runs in a venv of its own (tests/support/legacy_sdk.py installs it on first use from
the hash-pinned tests/compat/legacy/requirements.txt); the scenarios are
tests/compat/legacy/sqs_scenarios.py, which prints one JSON object of what the SDK returned,
and the assertions are here.

botocore never checked SQS digests (neither 1.31.80 nor any boto3/boto release has a handler
for MD5OfMessageBody or MD5OfMessageAttributes), so every digest the old SDK parsed out of the
broker's XML is checked here against tests/support/digests.py, written from AWS's
documentation.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
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
from tests.support.legacy_sdk import (
    LEGACY_DIR,
    SCRIPT_TIMEOUT_SECONDS,
    VENV_DIR,
    legacy_python,
)
from tests.support.sns import check_signature, fetch

pytestmark = pytest.mark.slow

LEGACY_BOTO3, LEGACY_BOTOCORE = "1.28.80", "1.31.80"


@dataclass(frozen=True)
class ScenarioRun:
    """What the script printed, and the broker it ran against (still running)."""

    results: dict[str, Any]
    broker: BrokerThread


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScenarioRun]:
    python = legacy_python()
    directory = tmp_path_factory.mktemp("legacy-sdk")
    config = broker_config(directory / "data", auth=write_credentials(directory))
    with BrokerThread(config) as broker:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": "/nonexistent",
            "WHARF_ENDPOINT": broker.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }
        completed = subprocess.run(
            [python, "-I", str(LEGACY_DIR / "sqs_scenarios.py")],  # -I: no project paths
            env=env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_SECONDS,
            check=False,
        )
        assert completed.returncode == 0, f"sqs_scenarios.py failed: {completed.stderr}"
        yield ScenarioRun(json.loads(completed.stdout), broker)


def queue_url(run: ScenarioRun, name: str) -> str:
    return f"{run.broker.endpoint}/{ACCOUNT_ID}/{name}"


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"


def attributes_md5(attributes: dict[str, dict[str, str]]) -> str:
    """MD5OfMessageAttributes of attributes as the script prints them (binary in base64)."""
    return expected_attributes_md5(
        {
            name: {**value, "BinaryValue": base64.b64decode(value["BinaryValue"])}
            if "BinaryValue" in value
            else value
            for name, value in attributes.items()
        }
    )


def by_body(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {message["Body"]: message for message in messages}
    assert len(found) == len(messages), "a body came twice"
    return found


def assert_digests(message: dict[str, Any]) -> None:
    """The digests of a received message are those of what the old SDK parsed out of it."""
    assert message["MD5OfBody"] == md5_hex(message["Body"].encode()), message
    if "MessageAttributes" in message:
        assert message["MD5OfMessageAttributes"] == attributes_md5(message["MessageAttributes"])
    else:
        assert "MD5OfMessageAttributes" not in message


def every_message(results: Any) -> Iterator[dict[str, Any]]:
    """Every message the script received, wherever in the results."""
    if isinstance(results, dict):
        if "ReceiptHandle" in results and "Body" in results:
            yield results
        else:
            for value in results.values():
                yield from every_message(value)
    elif isinstance(results, list):
        for value in results:
            yield from every_message(value)


def assert_error(
    error: dict[str, Any], class_name: str, status: int, code: str | None = None
) -> None:
    """The old SDK raised its modeled ``class_name`` (or plain ClientError) for an HTTP
    ``status`` answer with error code ``code``, parsed out of the XML error document."""
    assert error.get("resolved") is not True, "the action succeeded"
    assert (error["className"], error["status"], error["code"]) == (
        class_name,
        status,
        code or class_name,
    ), error
    assert error["type"] == "Sender", error
    assert error["message"], error
    assert error["requestId"], error


# ---------------------------------------------------------------------- the SDK and the wire


def test_the_old_sdk_ran_from_its_own_venv_with_the_query_model(run: ScenarioRun) -> None:
    sdk = run.results["sdk"]
    assert (sdk["boto3"], sdk["botocore"]) == (LEGACY_BOTO3, LEGACY_BOTOCORE)
    assert sdk["prefix"] == str(VENV_DIR)
    assert sdk["botocoreFile"].startswith(str(VENV_DIR))
    # The model file as shipped in that botocore, not one of ours.
    assert sdk["sqsModelProtocol"] == sdk["sqsProtocol"] == sdk["snsProtocol"] == "query"


def test_every_request_was_a_signed_form_post_and_every_answer_xml(run: ScenarioRun) -> None:
    wire = run.results["wire"]
    requests = [entry for entry in wire if "method" in entry]
    answers = [entry for entry in wire if "answerTo" in entry]
    assert len(requests) == len(answers) > 90
    for request in requests:
        assert request["method"] == "POST", request
        assert request["contentType"] == "application/x-www-form-urlencoded; charset=utf-8"
        assert request["amzTarget"] is None, request
        assert request["authorization"] == "AWS4-HMAC-SHA256", request
        assert request["version"] in ("2012-11-05", "2010-03-31"), request
    for answer in answers:
        assert answer["contentType"] == "text/xml", answer
    # As many answers as requests, action by action (a long poll's answer may come after the
    # send that wakes it, so not in order).
    assert Counter(request["action"] for request in requests) == Counter(
        answer["answerTo"] for answer in answers
    )
    sent = {request["action"] for request in requests if request["version"] == "2012-11-05"}
    assert sent == {
        "CreateQueue",
        "GetQueueUrl",
        "ListQueues",
        "GetQueueAttributes",
        "SetQueueAttributes",
        "TagQueue",
        "UntagQueue",
        "ListQueueTags",
        "SendMessage",
        "SendMessageBatch",
        "ReceiveMessage",
        "ChangeMessageVisibility",
        "ChangeMessageVisibilityBatch",
        "DeleteMessage",
        "DeleteMessageBatch",
        "PurgeQueue",
        "ListDeadLetterSourceQueues",
        "DeleteQueue",
    }


# ---------------------------------------------------------------------- SQS


def test_create_queue_and_get_queue_url(run: ScenarioRun) -> None:
    created = run.results["create"]
    standard, fifo = queue_url(run, "legacy-standard"), queue_url(run, "legacy-orders.fifo")
    assert (created["standardUrl"], created["standardUrlAgain"], created["getStandardUrl"]) == (
        standard,
        standard,
        standard,
    )
    assert (created["fifoUrl"], created["getFifoUrl"]) == (fifo, fifo)
    attributes = created["fifoAttributes"]
    assert attributes["QueueArn"] == queue_arn("legacy-orders.fifo")
    assert (attributes["FifoQueue"], attributes["ContentBasedDeduplication"]) == ("true", "true")


def test_list_queues_by_prefix(run: ScenarioRun) -> None:
    listed = run.results["list"]
    pages = [queue_url(run, f"legacy-page-{i}") for i in range(3)]
    assert listed["created"] == pages
    assert sorted(listed["byPrefix"]) == pages
    assert listed["noMatch"] == []
    assert [page["hasNextToken"] for page in listed["pages"]] == [True, False]
    assert sorted(url for page in listed["pages"] for url in page["QueueUrls"]) == pages
    assert sorted(listed["all"]) == sorted(
        [*pages, queue_url(run, "legacy-standard"), queue_url(run, "legacy-orders.fifo")]
    )


def test_get_and_set_queue_attributes(run: ScenarioRun) -> None:
    attributes = run.results["attributes"]
    before = attributes["before"]
    assert (before["VisibilityTimeout"], before["MessageRetentionPeriod"]) == ("30", "345600")
    assert before["QueueArn"] == queue_arn("legacy-standard")
    assert "FifoQueue" not in before
    assert attributes["after"] == {
        "VisibilityTimeout": "45",
        "MessageRetentionPeriod": "3600",
        "QueueArn": queue_arn("legacy-standard"),
    }
    after_all = attributes["allAfter"]
    assert set(after_all) == set(before)
    changed = {
        name: value
        for name, value in after_all.items()
        if value != before[name] and name != "LastModifiedTimestamp"
    }
    assert changed == {
        "VisibilityTimeout": "45",
        "MessageRetentionPeriod": "3600",
        "ReceiveMessageWaitTimeSeconds": "2",
    }


def test_queue_tags(run: ScenarioRun) -> None:
    tags = run.results["tags"]
    assert tags["createdTags"] == {"team": "wharf"}
    # Every punctuation mark AWS allows in tags ('<' and '&' are not; the XML escaping of
    # values is exercised by the message attributes).
    note = "a/b = c+d @e: f.g_h-i"
    assert tags["tagged"] == {"team": "wharf", "env": "test", "tier": "1", "note": note}
    assert tags["untagged"] == {"env": "test"}


def test_send_message_with_every_attribute_type(run: ScenarioRun) -> None:
    sent = run.results["messages"]["send"]
    assert sent["MD5OfMessageBody"] == md5_hex(sent["body"].encode())
    assert sent["MD5OfMessageAttributes"] == attributes_md5(sent["attributesSent"])
    assert {value["DataType"] for value in sent["attributesSent"].values()} == {
        "String",
        "Number",
        "Binary",
        "String.x",
        "Number.float",
        "Binary.png",
    }
    trace = {
        "AWSTraceHeader": {
            "DataType": "String",
            "StringValue": run.results["messages"]["traceHeader"],
        }
    }
    assert sent["MD5OfMessageSystemAttributes"] == attributes_md5(trace)


def test_send_message_batch_reports_the_invalid_entry(run: ScenarioRun) -> None:
    batch = run.results["messages"]["batch"]
    successful = {entry["Id"]: entry for entry in batch["Successful"]}
    assert set(successful) == {"first", "second"}
    assert successful["first"]["MD5OfMessageBody"] == md5_hex(b"batch one")
    assert "MD5OfMessageAttributes" not in successful["first"]
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


def test_receive_with_every_attribute(run: ScenarioRun) -> None:
    results = run.results["messages"]
    sent = results["send"]
    received = by_body(results["received"])
    # The body's CR LF, tab, quotes and markup came through the old XML parser unchanged.
    assert set(received) == {sent["body"], "batch one", "batch two"}
    typed = received[sent["body"]]
    assert typed["MessageId"] == sent["MessageId"]
    assert typed["MD5OfBody"] == sent["MD5OfMessageBody"]
    assert typed["MessageAttributes"] == sent["attributesSent"]
    assert typed["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    system = typed["Attributes"]
    assert system["AWSTraceHeader"] == results["traceHeader"]
    assert (system["SenderId"], system["ApproximateReceiveCount"]) == (ACCOUNT_ID, "1")
    assert int(system["SentTimestamp"]) <= int(system["ApproximateFirstReceiveTimestamp"])
    assert received["batch two"]["MessageAttributes"] == {
        "kind": {"DataType": "String", "StringValue": "batched"}
    }
    assert "MessageAttributes" not in received["batch one"]


def test_every_received_digest_matches_the_oracle(run: ScenarioRun) -> None:
    messages = list(every_message(run.results))
    assert len(messages) == 17  # every receive of the script, the SNS deliveries too
    for message in messages:
        assert_digests(message)


def test_change_message_visibility(run: ScenarioRun) -> None:
    results = run.results["messages"]
    (again,) = results["again"]
    assert (again["Body"], again["Attributes"]["ApproximateReceiveCount"]) == ("batch one", "2")
    assert results["visibilityBatch"]["Successful"] == [{"Id": "visible"}]
    (failed,) = results["visibilityBatch"]["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == (
        "bogus",
        "ReceiptHandleIsInvalid",
        True,
    )
    (from_batch,) = results["againFromBatch"]
    assert (from_batch["Body"], from_batch["Attributes"]["ApproximateReceiveCount"]) == (
        "batch two",
        "2",
    )


def test_delete_message_and_batch(run: ScenarioRun) -> None:
    results = run.results["messages"]
    deleted = results["deleteBatch"]
    assert sorted(entry["Id"] for entry in deleted["Successful"]) == ["m0", "m1"]
    (failed,) = deleted["Failed"]
    assert (failed["Id"], failed["Code"], failed["SenderFault"]) == (
        "bogus",
        "ReceiptHandleIsInvalid",
        True,
    )
    assert set(results["countsAfter"].values()) == {"0"}
    for action in ("deleteInvalidHandle", "changeVisibilityInvalidHandle"):
        # 404: the Smithy model's status, and AWS's (spulec/PyQS#24 quotes its response);
        # this botocore's model gives the shape no status, so it takes any.
        assert_error(run.results["errors"][action], "ReceiptHandleIsInvalid", 404)


def test_receive_wait_time_seconds(run: ScenarioRun) -> None:
    poll = run.results["longPoll"]
    assert poll["empty"] == []
    assert 1.9 <= poll["emptySeconds"] < 4, "an empty poll did not last its WaitTimeSeconds"
    (message,) = poll["woken"]
    assert message["Body"] == "wake up"
    assert message["Attributes"] == {"SenderId": ACCOUNT_ID}
    assert 0.9 <= poll["wokenSeconds"] < 5, "the long poll was not woken by the send"


def test_fifo_groups_deduplication_and_sequence_numbers(run: ScenarioRun) -> None:
    fifo = run.results["fifo"]
    sends = {send["body"]: send for send in fifo["sends"]}
    batch = {entry["Id"]: entry for entry in fifo["batch"]["Successful"]}
    sequence = [int(send["SequenceNumber"]) for send in fifo["sends"]]
    sequence += [int(fifo["explicit"]["SequenceNumber"])]
    sequence += [int(batch[name]["SequenceNumber"]) for name in ("b3", "a4")]
    assert sequence == sorted(sequence)
    assert len(set(sequence)) == len(sequence)
    assert fifo["duplicate"]["MessageId"] == sends["a1"]["MessageId"]
    assert fifo["explicitAgain"]["MessageId"] == fifo["explicit"]["MessageId"]

    received = fifo["received"]
    groups: dict[str, list[str]] = {}
    for message in received:
        groups.setdefault(message["Attributes"]["MessageGroupId"], []).append(message["Body"])
    assert groups == {"alpha": ["a1", "a2", "a3", "a4"], "beta": ["b1", "b2", "b3"]}
    expected_ids = {
        **{body: send["MessageId"] for body, send in sends.items()},
        "a3": fifo["explicit"]["MessageId"],
        **{name: entry["MessageId"] for name, entry in batch.items()},
    }
    expected_sequence = {
        **{body: send["SequenceNumber"] for body, send in sends.items()},
        "a3": fifo["explicit"]["SequenceNumber"],
        **{name: entry["SequenceNumber"] for name, entry in batch.items()},
    }
    for message in received:
        body = message["Body"]
        assert message["MessageId"] == expected_ids[body]
        assert message["Attributes"]["SequenceNumber"] == expected_sequence[body]
        assert message["Attributes"]["MessageDeduplicationId"]
    found = by_body(received)
    assert found["a3"]["Attributes"]["MessageDeduplicationId"] == "dedup-a3"
    assert found["a4"]["Attributes"]["MessageDeduplicationId"] == "dedup-a4"
    assert fifo["afterwards"]["ApproximateNumberOfMessagesNotVisible"] == "7"


def test_purge_queue(run: ScenarioRun) -> None:
    purge = run.results["purge"]
    assert purge["before"]["ApproximateNumberOfMessages"] == "3"
    assert set(purge["after"].values()) == {"0"}
    assert purge["receivedAfter"] == []


def test_dead_letter_queue_and_its_sources(run: ScenarioRun) -> None:
    dead = run.results["deadLetter"]
    assert dead["dlqArn"] == queue_arn("legacy-dead-letters")
    assert json.loads(dead["sourceRedrivePolicy"]) == {
        "deadLetterTargetArn": dead["dlqArn"],
        "maxReceiveCount": 1,
    }
    assert dead["sources"] == [queue_url(run, "legacy-redriven")]
    (first,) = dead["firstTry"]
    assert (first["Body"], first["Attributes"]["ApproximateReceiveCount"]) == ("doomed", "1")
    assert dead["secondTry"] == []
    (moved,) = dead["inDeadLetterQueue"]
    assert (moved["Body"], moved["MessageId"]) == ("doomed", first["MessageId"])
    assert moved["Attributes"]["DeadLetterQueueSourceArn"] == queue_arn("legacy-redriven")


def test_errors_reach_the_old_sdk_as_its_modeled_exceptions(run: ScenarioRun) -> None:
    errors = run.results["errors"]
    for action in ("getUrlOfUnknownQueue", "sendToUnknownQueue", "attributesOfUnknownQueue"):
        assert_error(
            errors[action], "QueueDoesNotExist", 400, "AWS.SimpleQueueService.NonExistentQueue"
        )
        assert errors[action]["message"] == (
            "The specified queue does not exist for this wsdl version."
        )
    for action in (
        "unknownQueueAttribute",
        "setUnknownQueueAttribute",
        "createWithUnknownAttribute",
    ):
        assert_error(errors[action], "InvalidAttributeName", 400)
    for action in ("emptyBatch", "emptyDeleteBatch"):
        assert_error(
            errors[action], "EmptyBatchRequest", 400, "AWS.SimpleQueueService.EmptyBatchRequest"
        )
    assert_error(
        errors["duplicateBatchIds"],
        "BatchEntryIdsNotDistinct",
        400,
        "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    )
    assert_error(
        errors["tooManyBatchEntries"],
        "TooManyEntriesInBatchRequest",
        400,
        "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    )


def test_a_wrong_secret_fails_the_old_signer(run: ScenarioRun) -> None:
    errors = run.results["errors"]
    for action in ("wrongSecretKey", "wrongSecretKeySend"):
        # Not modeled in the SQS query model: a plain ClientError with the code.
        assert_error(errors[action], "ClientError", 403, "SignatureDoesNotMatch")
    assert_error(run.results["sns"]["wrongSecretKey"], "ClientError", 403, "SignatureDoesNotMatch")


def test_delete_queue(run: ScenarioRun) -> None:
    deleted = run.results["deleteQueue"]
    for action in ("getUrlAfterDelete", "sendAfterDelete"):
        assert_error(
            deleted[action], "QueueDoesNotExist", 400, "AWS.SimpleQueueService.NonExistentQueue"
        )
    assert deleted["listedAfterDelete"] == []


# ---------------------------------------------------------------------- SNS


def topic_arn(name: str) -> str:
    return f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:{name}"


def test_sns_topic_and_subscriptions(run: ScenarioRun) -> None:
    sns = run.results["sns"]
    assert sns["topicArn"] == sns["topicAgain"] == topic_arn("legacy-events")
    assert sns["topicAttributes"]["TopicArn"] == topic_arn("legacy-events")
    assert sns["topicAttributes"]["SubscriptionsConfirmed"] == "2"
    arns = sns["subscriptionArns"]
    assert all(arn.startswith(topic_arn("legacy-events") + ":") for arn in arns.values())
    assert {
        (entry["SubscriptionArn"], entry["Protocol"], entry["Endpoint"], entry["TopicArn"])
        for entry in sns["byTopic"]
    } == {
        (arns[kind], "sqs", queue_arn(f"legacy-sns-{kind}"), topic_arn("legacy-events"))
        for kind in ("wrapped", "raw")
    }
    assert_error(sns["unknownTopic"], "NotFoundException", 404, "NotFound")


def test_sns_publish_arrives_in_the_subscribed_queues(run: ScenarioRun) -> None:
    sns = run.results["sns"]
    (wrapped,) = sns["deliveries"]["wrapped"]
    envelope = json.loads(wrapped["Body"])
    assert (envelope["Type"], envelope["MessageId"], envelope["TopicArn"]) == (
        "Notification",
        sns["published"]["MessageId"],
        topic_arn("legacy-events"),
    )
    assert (envelope["Message"], envelope["Subject"]) == (
        "hello from the old SDK <&> ✓",
        "legacy subject",
    )
    assert envelope["MessageAttributes"] == {
        name: {
            "Type": value["DataType"],
            "Value": value.get("StringValue", value.get("BinaryValue")),
        }
        for name, value in sns["attributesSent"].items()
    }
    check_signature(envelope, fetch(envelope["SigningCertURL"]))

    (raw,) = sns["deliveries"]["raw"]
    assert raw["Body"] == "hello from the old SDK <&> ✓"
    assert raw["MessageAttributes"] == sns["attributesSent"]
