"""boto3 against a real wharf-broker: every SQS action, its semantics and its errors.

Each test that takes the ``sqs`` fixture runs twice: with botocore as shipped (awsJson 1.0) and
with the legacy query-protocol model (form posts, XML responses). Digests are checked with an
implementation of AWS's algorithm written here, not with the broker's.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import functools
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from unittest import mock

import botocore.credentials
import botocore.exceptions
import botocore.parsers
import pytest
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from broker.auth import sender_id_of
from broker.config import SqsSettings
from broker.registry import now_ms
from monitoring.settings import HttpLimits
from tests.support.broker import (
    ACCESS_KEY_ID,
    ACCOUNT_ID,
    REGION,
    SECRET_ACCESS_KEY,
    BrokerThread,
    QueueFactory,
    broker_config,
    write_credentials,
)
from tests.support.digests import expected_attributes_md5, md5_hex
from tests.support.http import raw_exchange

# ---------------------------------------------------------------------- helpers


def error_of(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> dict[str, Any]:
    error: dict[str, Any] = excinfo.value.response["Error"]
    return error


def code_of(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(error_of(excinfo)["Code"])


def status_of(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> int:
    return int(excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"])


def receive(sqs: Any, url: str, **options: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = sqs.receive_message(QueueUrl=url, **options).get(
        "Messages", []
    )
    return messages


def receive_exactly(
    sqs: Any, url: str, count: int, *, limit_seconds: float = 15, **options: Any
) -> list[dict[str, Any]]:
    """Receive until ``count`` messages arrived (long polls, so no busy loop)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + limit_seconds
    while len(found) < count and time.monotonic() < deadline:
        found += receive(
            sqs, url, MaxNumberOfMessages=min(10, count - len(found)), WaitTimeSeconds=1, **options
        )
    assert len(found) == count, f"received {len(found)} of {count}"
    return found


def attributes_of(sqs: Any, url: str, *names: str) -> dict[str, str]:
    result: dict[str, str] = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=list(names) or ["All"]
    ).get("Attributes", {})
    return result


def approximate_counts(sqs: Any, url: str) -> tuple[int, int, int]:
    attributes = attributes_of(
        sqs,
        url,
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    )
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        int(attributes["ApproximateNumberOfMessagesDelayed"]),
    )


def arn_of(sqs: Any, url: str) -> str:
    return attributes_of(sqs, url, "QueueArn")["QueueArn"]


# ---------------------------------------------------------------------- queues


def test_create_queue_is_idempotent_for_equal_attributes(sqs, queues: QueueFactory):
    name = queues.name()
    url = queues(name=name, VisibilityTimeout=45)
    assert url.endswith(f"/{ACCOUNT_ID}/{name}")
    assert url.startswith("http://127.0.0.1:")
    again = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "45"})
    assert again["QueueUrl"] == url
    assert sqs.create_queue(QueueName=name)["QueueUrl"] == url  # no attributes: no conflict

    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "46"})
    assert code_of(excinfo) == "QueueAlreadyExists"
    assert "VisibilityTimeout" in error_of(excinfo)["Message"]
    assert isinstance(excinfo.value, sqs.exceptions.QueueNameExists)


def test_create_queue_compares_a_policy_as_a_document(sqs, queues: QueueFactory):
    """The same Policy re-rendered (other whitespace, other key order), as IaC tools do on a
    re-apply, is the same attribute value; another policy is not."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "sqs:SendMessage", "Resource": "*"}
        ],
    }
    name = queues.name()
    url = queues(name=name, Policy=json.dumps(policy))
    reordered = {"Statement": policy["Statement"], "Version": policy["Version"]}
    for same in (json.dumps(policy, indent=2), json.dumps(reordered, separators=(",", ":"))):
        assert sqs.create_queue(QueueName=name, Attributes={"Policy": same})["QueueUrl"] == url
    other = {**policy, "Statement": [{**policy["Statement"][0], "Effect": "Deny"}]}
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.create_queue(QueueName=name, Attributes={"Policy": json.dumps(other)})
    assert code_of(excinfo) == "QueueAlreadyExists"
    assert error_of(excinfo)["Message"].endswith("attribute Policy")


@pytest.mark.parametrize(
    ("name", "attributes", "code"),
    [
        ("has space", {}, "InvalidParameterValue"),
        ("x" * 81, {}, "InvalidParameterValue"),
        ("no-suffix", {"FifoQueue": "true"}, "InvalidParameterValue"),
        ("ok-name", {"Colour": "blue"}, "InvalidAttributeName"),
        ("ok-name", {"VisibilityTimeout": "43201"}, "InvalidAttributeValue"),
        ("ok-name", {"MessageRetentionPeriod": "59"}, "InvalidAttributeValue"),
        ("ok-name", {"MaximumMessageSize": "1048577"}, "InvalidAttributeValue"),
        ("ok-name", {"DelaySeconds": "-1"}, "InvalidAttributeValue"),
        ("ok-name", {"ReceiveMessageWaitTimeSeconds": "21"}, "InvalidAttributeValue"),
        ("ok-name", {"ContentBasedDeduplication": "true"}, "InvalidAttributeName"),
        ("ok-name", {"VisibilityTimeout": "ten"}, "InvalidAttributeValue"),
    ],
)
def test_create_queue_refuses_bad_names_and_attributes(sqs, name, attributes, code):
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.create_queue(QueueName=name, Attributes=attributes)
    assert code_of(excinfo) == code
    assert status_of(excinfo) == 400


def test_delete_queue_then_every_use_of_it_fails(sqs, queues: QueueFactory):
    name = queues.name()
    url = queues(name=name)
    sqs.delete_queue(QueueUrl=url)
    for call in (
        lambda: sqs.get_queue_url(QueueName=name),
        lambda: sqs.send_message(QueueUrl=url, MessageBody="x"),
        lambda: sqs.receive_message(QueueUrl=url),
        lambda: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]),
        lambda: sqs.delete_queue(QueueUrl=url),
    ):
        with pytest.raises(sqs.exceptions.QueueDoesNotExist) as excinfo:
            call()
        assert code_of(excinfo) == "AWS.SimpleQueueService.NonExistentQueue"


def test_unknown_queue_error_carries_the_legacy_code_in_both_protocols(sqs, protocol):
    with pytest.raises(sqs.exceptions.QueueDoesNotExist) as excinfo:
        sqs.get_queue_url(QueueName="no-such-queue-anywhere")
    error = error_of(excinfo)
    assert error["Code"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert error["Type"] == "Sender"
    # The query protocol's wording is AWS's older one.
    assert (
        error["Message"]
        == {
            "json": "The specified queue does not exist.",
            "query": "The specified queue does not exist for this wsdl version.",
        }[protocol]
    )
    assert status_of(excinfo) == 400
    if protocol == "json":
        # botocore read x-amzn-query-error for Code and kept the shape name here.
        assert error["QueryErrorCode"] == "QueueDoesNotExist"


def test_get_queue_url(sqs, queues: QueueFactory):
    name = queues.name()
    url = queues(name=name)
    assert sqs.get_queue_url(QueueName=name)["QueueUrl"] == url
    assert sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=ACCOUNT_ID)["QueueUrl"] == url
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId="111122223333")


def test_queue_urls_from_other_hosts_and_accounts(sqs, queues: QueueFactory):
    name = queues.name()
    queues(name=name)
    # Clients reach the broker under many names: any host in the URL is accepted.
    sqs.send_message(QueueUrl=f"http://wharf.example:1234/{ACCOUNT_ID}/{name}", MessageBody="a")
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.send_message(QueueUrl=f"http://localhost/111122223333/{name}", MessageBody="a")


def test_list_queues_by_prefix_and_in_pages(sqs, queues: QueueFactory):
    prefix = queues.name()
    names = [f"{prefix}-{i}" for i in range(5)]
    urls = [queues(name=n) for n in names]
    queues(name=f"other-{prefix}")

    listed = sqs.list_queues(QueueNamePrefix=prefix)
    assert sorted(listed["QueueUrls"]) == sorted(urls)
    assert "NextToken" not in listed
    assert "QueueUrls" not in sqs.list_queues(QueueNamePrefix=f"{prefix}-none")

    pages = []
    token = None
    while True:
        kwargs: dict[str, str] = {"NextToken": token} if token else {}
        page = sqs.list_queues(QueueNamePrefix=prefix, MaxResults=2, **kwargs)
        pages.append(page["QueueUrls"])
        token = page.get("NextToken")
        if token is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(u for p in pages for u in p) == sorted(urls)
    for bad in ("!!!", "not base64"):  # refused, never the first page again
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            sqs.list_queues(QueueNamePrefix=prefix, MaxResults=2, NextToken=bad)
        assert code_of(excinfo) == "InvalidParameterValue"

    paginated = sqs.get_paginator("list_queues").paginate(
        QueueNamePrefix=prefix, PaginationConfig={"PageSize": 3}
    )
    assert sorted(u for page in paginated for u in page["QueueUrls"]) == sorted(urls)

    everything = sqs.list_queues()["QueueUrls"]
    assert set(urls) <= set(everything)


@pytest.mark.parametrize("max_results", [0, 1001])
def test_list_queues_refuses_bad_max_results(sqs, max_results):
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.list_queues(MaxResults=max_results)
    assert code_of(excinfo) == "InvalidParameterValue"


def test_a_deleted_name_is_refused_for_60_seconds(broker: BrokerThread, protocol):
    sqs = broker.client(protocol)
    url = sqs.create_queue(QueueName="recycled")["QueueUrl"]
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(sqs.exceptions.QueueDeletedRecently) as excinfo:
        sqs.create_queue(QueueName="recycled")
    error = error_of(excinfo)
    assert error["Code"] == "AWS.SimpleQueueService.QueueDeletedRecently"
    assert error["Message"] == (
        "You must wait 60 seconds after deleting a queue before you can create another with "
        "the same name."
    )
    assert error["Type"] == "Sender"
    assert status_of(excinfo) == 400
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.get_queue_url(QueueName="recycled")  # the refused create made nothing
    # 60 seconds later (the registry's clock moved, not the test's) the name is free again.
    registry = broker.app.registry
    assert registry is not None
    broker.call_sync(setattr, registry, "clock", lambda: now_ms() + 60_000)
    assert sqs.create_queue(QueueName="recycled")["QueueUrl"] == url


# ---------------------------------------------------------------------- attributes


def test_default_attributes(sqs, queues: QueueFactory):
    before = int(time.time())
    url = queues()
    after = int(time.time())
    attributes = attributes_of(sqs, url)
    created = int(attributes.pop("CreatedTimestamp"))
    modified = int(attributes.pop("LastModifiedTimestamp"))
    assert before <= created <= after
    assert modified == created
    name = url.rsplit("/", 1)[1]
    assert attributes == {
        "QueueArn": f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}",
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
        "ApproximateNumberOfMessagesDelayed": "0",
        "VisibilityTimeout": "30",
        "MaximumMessageSize": "1048576",
        "MessageRetentionPeriod": "345600",
        "DelaySeconds": "0",
        "ReceiveMessageWaitTimeSeconds": "0",
        "SqsManagedSseEnabled": "true",
    }


def test_fifo_queue_attributes(sqs, queues: QueueFactory):
    url = queues(fifo=True)
    attributes = attributes_of(sqs, url)
    assert attributes["FifoQueue"] == "true"
    assert attributes["ContentBasedDeduplication"] == "false"
    assert attributes["DeduplicationScope"] == "queue"
    assert attributes["FifoThroughputLimit"] == "perQueue"
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "ContentBasedDeduplication": "true",
            "DeduplicationScope": "messageGroup",
            "FifoThroughputLimit": "perMessageGroupId",
        },
    )
    attributes = attributes_of(
        sqs, url, "ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit"
    )
    assert attributes == {
        "ContentBasedDeduplication": "true",
        "DeduplicationScope": "messageGroup",
        "FifoThroughputLimit": "perMessageGroupId",
    }
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"FifoQueue": "false"})
    assert code_of(excinfo) == "InvalidAttributeValue"


SETTABLE = {
    "VisibilityTimeout": "0",
    "MaximumMessageSize": "1024",
    "MessageRetentionPeriod": "60",
    "DelaySeconds": "900",
    "ReceiveMessageWaitTimeSeconds": "20",
    "SqsManagedSseEnabled": "false",
    "KmsMasterKeyId": "alias/aws/sqs",
    "KmsDataKeyReusePeriodSeconds": "86400",
}


def test_set_and_get_every_settable_attribute(sqs, queues: QueueFactory):
    url = queues()
    created = attributes_of(sqs, url, "LastModifiedTimestamp")["LastModifiedTimestamp"]
    for name, value in SETTABLE.items():
        sqs.set_queue_attributes(QueueUrl=url, Attributes={name: value})
        assert attributes_of(sqs, url, name) == {name: value}, name
    everything = attributes_of(sqs, url)
    for name, value in SETTABLE.items():
        assert everything[name] == value
    assert int(everything["LastModifiedTimestamp"]) >= int(created)

    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn_of(sqs, url),
                }
            ],
        }
    )
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})
    assert json.loads(attributes_of(sqs, url, "Policy")["Policy"]) == json.loads(policy)
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": ""})
    assert "Policy" not in attributes_of(sqs, url)


@pytest.mark.parametrize(
    ("attributes", "code"),
    [
        ({"VisibilityTimeout": "43201"}, "InvalidAttributeValue"),
        ({"MaximumMessageSize": "1023"}, "InvalidAttributeValue"),
        ({"MessageRetentionPeriod": "1209601"}, "InvalidAttributeValue"),
        ({"DelaySeconds": "901"}, "InvalidAttributeValue"),
        ({"Policy": "not json"}, "InvalidAttributeValue"),
        ({"QueueArn": "arn:aws:sqs:us-east-1:000000000000:x"}, "InvalidAttributeName"),
        ({"ApproximateNumberOfMessages": "3"}, "InvalidAttributeName"),
        ({"NoSuchAttribute": "1"}, "InvalidAttributeName"),
        ({"RedrivePolicy": "{"}, "InvalidParameterValue"),
        ({"RedrivePolicy": '{"maxReceiveCount": 3}'}, "InvalidParameterValue"),
        ({"RedriveAllowPolicy": '{"redrivePermission": "some"}'}, "InvalidParameterValue"),
    ],
)
def test_set_queue_attributes_refuses_bad_values(sqs, queues: QueueFactory, attributes, code):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    assert code_of(excinfo) == code


def test_get_queue_attributes_refuses_unknown_names(sqs, queues: QueueFactory):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Colour"])
    assert code_of(excinfo) == "InvalidAttributeName"


def test_redrive_policies_and_dead_letter_sources(sqs, queues: QueueFactory):
    dlq = queues()
    dlq_arn = arn_of(sqs, dlq)
    sources = [queues(), queues()]
    policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}
    for source in sources:
        sqs.set_queue_attributes(QueueUrl=source, Attributes={"RedrivePolicy": json.dumps(policy)})
    assert json.loads(attributes_of(sqs, sources[0], "RedrivePolicy")["RedrivePolicy"]) == policy

    listed = sqs.list_dead_letter_source_queues(QueueUrl=dlq)
    assert sorted(listed["queueUrls"]) == sorted(sources)
    first = sqs.list_dead_letter_source_queues(QueueUrl=dlq, MaxResults=1)
    assert len(first["queueUrls"]) == 1
    second = sqs.list_dead_letter_source_queues(
        QueueUrl=dlq, MaxResults=1, NextToken=first["NextToken"]
    )
    assert sorted(first["queueUrls"] + second["queueUrls"]) == sorted(sources)
    assert sqs.list_dead_letter_source_queues(QueueUrl=sources[0]).get("queueUrls", []) == []

    # A RedriveAllowPolicy that names only the first source refuses a third one.
    allow = {"redrivePermission": "byQueue", "sourceQueueArns": [arn_of(sqs, sources[0])]}
    sqs.set_queue_attributes(QueueUrl=dlq, Attributes={"RedriveAllowPolicy": json.dumps(allow)})
    assert json.loads(attributes_of(sqs, dlq, "RedriveAllowPolicy")["RedriveAllowPolicy"]) == allow
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        queues(RedrivePolicy=json.dumps(policy))
    assert code_of(excinfo) == "InvalidParameterValue"

    # Removing the policy with an empty value.
    sqs.set_queue_attributes(QueueUrl=sources[1], Attributes={"RedrivePolicy": ""})
    assert "RedrivePolicy" not in attributes_of(sqs, sources[1])
    assert sqs.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"] == [sources[0]]


def test_redrive_policy_needs_an_existing_target_of_the_same_type(sqs, queues: QueueFactory):
    fifo_dlq = queues(fifo=True)
    missing = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{queues.name()}"
    for target in (missing, arn_of(sqs, fifo_dlq)):
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            queues(RedrivePolicy=json.dumps({"deadLetterTargetArn": target, "maxReceiveCount": 1}))
        assert code_of(excinfo) == "InvalidParameterValue"


def test_a_stale_redrive_policy_does_not_block_other_changes(sqs, queues: QueueFactory):
    # The dead-letter queue is deleted, or refuses this source later: the source's other
    # attributes still change; only setting RedrivePolicy again checks the target.
    for stale in ("deleted", "denied"):
        dlq = queues()
        policy = json.dumps({"deadLetterTargetArn": arn_of(sqs, dlq), "maxReceiveCount": 2})
        source = queues(RedrivePolicy=policy)
        if stale == "deleted":
            sqs.delete_queue(QueueUrl=dlq)
        else:
            allow = json.dumps({"redrivePermission": "denyAll"})
            sqs.set_queue_attributes(QueueUrl=dlq, Attributes={"RedriveAllowPolicy": allow})
        sqs.set_queue_attributes(QueueUrl=source, Attributes={"VisibilityTimeout": "5"})
        assert attributes_of(sqs, source)["VisibilityTimeout"] == "5"
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            sqs.set_queue_attributes(QueueUrl=source, Attributes={"RedrivePolicy": policy})
        assert code_of(excinfo) == "InvalidParameterValue"


def test_approximate_counts(sqs, queues: QueueFactory):
    url = queues()
    for body in ("a", "b", "c"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=900)
    assert approximate_counts(sqs, url) == (3, 0, 1)
    receive(sqs, url, MaxNumberOfMessages=2)
    assert approximate_counts(sqs, url) == (1, 2, 1)


# ---------------------------------------------------------------------- tags


def test_tags(sqs, queues: QueueFactory):
    name = queues.name()
    url = sqs.create_queue(QueueName=name, tags={"team": "core", "env": "test"})["QueueUrl"]
    queues.urls.append(url)
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "core", "env": "test"}
    sqs.tag_queue(QueueUrl=url, Tags={"env": "prod", "cost": "42"})
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {
        "team": "core",
        "env": "prod",
        "cost": "42",
    }
    sqs.untag_queue(QueueUrl=url, TagKeys=["team", "cost", "absent"])
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"env": "prod"}
    sqs.untag_queue(QueueUrl=url, TagKeys=["env"])
    assert "Tags" not in sqs.list_queue_tags(QueueUrl=url)
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.tag_queue(QueueUrl=url, Tags={f"k{i}": "v" for i in range(51)})
    assert code_of(excinfo) == "InvalidParameterValue"
    for bad in ({"aws:owner": "me"}, {"a!b": "v"}, {"k": "aws:v"}):  # quotas-queues.html
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            sqs.tag_queue(QueueUrl=url, Tags=bad)
        assert code_of(excinfo) == "InvalidParameterValue"
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.list_queue_tags(QueueUrl=url + "-gone")


def test_untag_queue_holds_its_keys_to_tag_queues_rules(sqs, unchecked, queues: QueueFactory):
    url = sqs.create_queue(QueueName=queues.name(), tags={"team": "core"})["QueueUrl"]
    queues.urls.append(url)
    for keys, code in (
        (["k" * 129], "InvalidParameterValue"),  # botocore's model: TagKey is 1-128 long
        ([""], "InvalidParameterValue"),
        (["aws:team"], "InvalidParameterValue"),
        ([], "MissingParameter"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            unchecked.untag_queue(QueueUrl=url, TagKeys=keys)
        assert code_of(excinfo) == code, keys
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "core"}


# ---------------------------------------------------------------------- sending and digests

EVERY_TYPE: dict[str, dict[str, Any]] = {
    "text": {"DataType": "String", "StringValue": "héllo <wörld> & \"quotes\" 'single'"},
    "count": {"DataType": "Number", "StringValue": "-12.50e3"},
    "blob": {"DataType": "Binary", "BinaryValue": bytes(range(256))},
    "image": {"DataType": "Binary.png", "BinaryValue": b"\x89PNG\r\n\x1a\n"},
    "when": {"DataType": "Number.timestamp", "StringValue": "1700000000"},
    "custom.label": {"DataType": "String.uuid", "StringValue": "0f8fad5b-d9cb-469f-a165"},
    "emoji": {"DataType": "String", "StringValue": "🚢 \t\n\r end"},
}
TRICKY_BODIES = [
    "plain",
    "xml <tag attr=\"v\"> & </tag> 'apos'",
    "line\r\nbreaks\rand\nmore\r",
    "tab\tand unicode: żółć 漢字 🚢 \U0010ffff",
    "  leading and trailing spaces  ",
    "]]> <![CDATA[ x ]]>",
    "&amp; &#xD; &lt; already-escaped-looking",
]


@pytest.mark.parametrize("body", TRICKY_BODIES)
def test_bodies_round_trip_with_their_md5(sqs, queues: QueueFactory, body):
    url = queues()
    sent = sqs.send_message(QueueUrl=url, MessageBody=body)
    assert sent["MD5OfMessageBody"] == md5_hex(body.encode())
    assert "MD5OfMessageAttributes" not in sent
    (message,) = receive(sqs, url)
    assert message["Body"] == body
    assert message["MD5OfBody"] == md5_hex(body.encode())
    assert message["MessageId"] == sent["MessageId"]
    assert "MessageAttributes" not in message
    assert "MD5OfMessageAttributes" not in message


def test_message_attributes_of_every_type_and_their_md5(sqs, queues: QueueFactory):
    url = queues()
    sent = sqs.send_message(QueueUrl=url, MessageBody="typed", MessageAttributes=EVERY_TYPE)
    assert sent["MD5OfMessageAttributes"] == expected_attributes_md5(EVERY_TYPE)
    (message,) = receive(sqs, url, MessageAttributeNames=["All"])
    assert message["MessageAttributes"] == EVERY_TYPE
    assert message["MD5OfMessageAttributes"] == expected_attributes_md5(EVERY_TYPE)


def test_trace_header_and_md5_of_message_system_attributes(sqs, queues: QueueFactory):
    url = queues()
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    system = {"AWSTraceHeader": {"DataType": "String", "StringValue": trace}}
    sent = sqs.send_message(QueueUrl=url, MessageBody="traced", MessageSystemAttributes=system)
    assert sent["MD5OfMessageSystemAttributes"] == expected_attributes_md5(system)
    (message,) = receive(sqs, url, MessageSystemAttributeNames=["AWSTraceHeader"])
    assert message["Attributes"] == {"AWSTraceHeader": trace}

    batch = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "t", "MessageBody": "b", "MessageSystemAttributes": system},
            {"Id": "u", "MessageBody": "c"},
        ],
    )
    by_id = {entry["Id"]: entry for entry in batch["Successful"]}
    assert by_id["t"]["MD5OfMessageSystemAttributes"] == expected_attributes_md5(system)
    assert "MD5OfMessageSystemAttributes" not in by_id["u"]


def test_only_the_trace_header_is_a_system_attribute_a_sender_may_set(sqs, queues: QueueFactory):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(
            QueueUrl=url,
            MessageBody="x",
            MessageSystemAttributes={"SenderId": {"DataType": "String", "StringValue": "me"}},
        )
    assert code_of(excinfo) == "InvalidParameterValue"


def test_system_attributes_of_a_received_message(sqs, queues: QueueFactory):
    url = queues()
    before = int(time.time() * 1000)
    sqs.send_message(QueueUrl=url, MessageBody="sys")
    (message,) = receive(sqs, url, MessageSystemAttributeNames=["All"], VisibilityTimeout=0)
    attributes = message["Attributes"]
    assert set(attributes) == {
        "SenderId",
        "SentTimestamp",
        "ApproximateReceiveCount",
        "ApproximateFirstReceiveTimestamp",
    }
    assert attributes["ApproximateReceiveCount"] == "1"
    sent_at = int(attributes["SentTimestamp"])
    assert before <= sent_at <= int(attributes["ApproximateFirstReceiveTimestamp"])
    assert attributes["SenderId"]
    (again,) = receive(sqs, url, AttributeNames=["All"])
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    assert (
        again["Attributes"]["ApproximateFirstReceiveTimestamp"]
        == (attributes["ApproximateFirstReceiveTimestamp"])
    )


@pytest.mark.parametrize(
    ("request_names", "expected"),
    [
        ({}, set()),
        ({"AttributeNames": ["SentTimestamp"]}, {"SentTimestamp"}),
        ({"MessageSystemAttributeNames": ["SenderId"]}, {"SenderId"}),
        (
            {
                "AttributeNames": ["SentTimestamp"],
                "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
            },
            {"SentTimestamp", "ApproximateReceiveCount"},
        ),
        (
            {"AttributeNames": ["All"]},
            {
                "SenderId",
                "SentTimestamp",
                "ApproximateReceiveCount",
                "ApproximateFirstReceiveTimestamp",
            },
        ),
    ],
)
def test_system_attribute_filters(sqs, queues: QueueFactory, request_names, expected):
    url = queues()
    sqs.send_message(QueueUrl=url, MessageBody="f")
    (message,) = receive(sqs, url, **request_names)
    assert set(message.get("Attributes", {})) == expected


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([], set()),
        (["All"], {"color", "color.hue", "colour", "size", "shape.outer"}),
        ([".*"], {"color", "color.hue", "colour", "size", "shape.outer"}),
        (["*"], {"color", "color.hue", "colour", "size", "shape.outer"}),
        (["size"], {"size"}),
        (["size", "absent"], {"size"}),
        (["color.*"], {"color.hue"}),
        (["shape.*", "size"], {"shape.outer", "size"}),
        (["absent"], set()),
    ],
)
def test_message_attribute_filters(sqs, queues: QueueFactory, names, expected):
    url = queues()
    attributes = {
        name: {"DataType": "String", "StringValue": name}
        for name in ("color", "color.hue", "colour", "size", "shape.outer")
    }
    sqs.send_message(QueueUrl=url, MessageBody="f", MessageAttributes=attributes)
    (message,) = receive(sqs, url, MessageAttributeNames=names)
    chosen = message.get("MessageAttributes", {})
    assert set(chosen) == expected
    if expected:
        assert message["MD5OfMessageAttributes"] == expected_attributes_md5(chosen)
    else:
        assert "MD5OfMessageAttributes" not in message


def test_send_message_batch(sqs, queues: QueueFactory):
    url = queues()
    entries = [
        {"Id": "plain", "MessageBody": "one"},
        {"Id": "typed", "MessageBody": "two", "MessageAttributes": EVERY_TYPE},
        {"Id": "delayed_1", "MessageBody": "three", "DelaySeconds": 900},
        {"Id": "bad-chars", "MessageBody": "four \x00"},
        {
            "Id": "bad-attribute",
            "MessageBody": "five",
            "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "NaN-ish"}},
        },
    ]
    result = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    successful = {entry["Id"]: entry for entry in result["Successful"]}
    failed = {entry["Id"]: entry for entry in result["Failed"]}
    assert set(successful) == {"plain", "typed", "delayed_1"}
    assert set(failed) == {"bad-chars", "bad-attribute"}
    assert successful["plain"]["MD5OfMessageBody"] == md5_hex(b"one")
    assert successful["typed"]["MD5OfMessageAttributes"] == expected_attributes_md5(EVERY_TYPE)
    assert failed["bad-chars"]["Code"] == "InvalidMessageContents"
    assert failed["bad-attribute"]["Code"] == "InvalidParameterValue"
    assert all(entry["SenderFault"] for entry in failed.values())
    assert all(entry["Message"] for entry in failed.values())
    assert len({entry["MessageId"] for entry in successful.values()}) == 3

    messages = receive_exactly(sqs, url, 2, MessageAttributeNames=["All"])
    by_body = {m["Body"]: m for m in messages}
    assert set(by_body) == {"one", "two"}
    assert by_body["two"]["MessageId"] == successful["typed"]["MessageId"]
    assert by_body["two"]["MessageAttributes"] == EVERY_TYPE
    assert approximate_counts(sqs, url) == (0, 2, 1)


def test_send_message_batch_where_every_entry_fails(sqs, queues: QueueFactory):
    url = queues()
    result = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "a", "MessageBody": "\x01"}, {"Id": "b", "MessageBody": "\x02"}],
    )
    assert result.get("Successful", []) == []
    assert [entry["Id"] for entry in result["Failed"]] == ["a", "b"]


@pytest.fixture
def unchecked(shared_broker: BrokerThread, protocol) -> Any:
    """A client that skips botocore's own parameter validation, to reach the broker's."""
    return shared_broker.client(protocol, validate=False)


def test_send_batch_refusals_name_the_id_and_the_size_as_aws_does(unchecked, queues: QueueFactory):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        unchecked.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": i, "MessageBody": "x"} for i in ("a", "dup-id", "b", "dup-id")],
        )
    assert excinfo.value.response["Error"]["Message"] == "Id dup-id repeated."
    big = [{"Id": str(i), "MessageBody": "b" * 104_858} for i in range(10)]
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        unchecked.send_message_batch(QueueUrl=url, Entries=big)
    assert excinfo.value.response["Error"]["Message"] == (
        "Batch requests cannot be longer than 1048576 bytes. You have sent 1048580 bytes."
    )


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ([], "AWS.SimpleQueueService.EmptyBatchRequest"),
        (
            [{"Id": str(i), "MessageBody": "x"} for i in range(11)],
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        ),
        (
            [{"Id": "same", "MessageBody": "x"}, {"Id": "same", "MessageBody": "y"}],
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        ),
        ([{"Id": "no spaces", "MessageBody": "x"}], "AWS.SimpleQueueService.InvalidBatchEntryId"),
        ([{"Id": "x" * 81, "MessageBody": "x"}], "AWS.SimpleQueueService.InvalidBatchEntryId"),
        (
            [{"Id": str(i), "MessageBody": "b" * 150_000} for i in range(8)],
            "AWS.SimpleQueueService.BatchRequestTooLong",
        ),
    ],
)
def test_send_batch_limits(unchecked, queues: QueueFactory, entries, code):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        unchecked.send_message_batch(QueueUrl=url, Entries=entries)
    assert code_of(excinfo) == code
    assert status_of(excinfo) == 400
    assert approximate_counts(unchecked, url) == (0, 0, 0)


def test_batch_of_exactly_one_mebibyte_is_accepted(sqs, queues: QueueFactory):
    url = queues()
    size = 1_048_576 // 4
    entries = [{"Id": str(i), "MessageBody": "m" * size} for i in range(4)]
    result = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert len(result["Successful"]) == 4


@pytest.mark.parametrize(
    "batch_call",
    ["delete_message_batch", "change_message_visibility_batch"],
)
def test_handle_batch_limits(unchecked, queues: QueueFactory, batch_call):
    url = queues()
    call = getattr(unchecked, batch_call)
    extra = {"VisibilityTimeout": 5} if batch_call.startswith("change") else {}
    cases = [
        ([], "AWS.SimpleQueueService.EmptyBatchRequest"),
        (
            [{"Id": str(i), "ReceiptHandle": "h", **extra} for i in range(11)],
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        ),
        (
            [{"Id": "a", "ReceiptHandle": "h", **extra}] * 2,
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        ),
        (
            [{"Id": "a:b", "ReceiptHandle": "h", **extra}],
            "AWS.SimpleQueueService.InvalidBatchEntryId",
        ),
    ]
    for entries, code in cases:
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            call(QueueUrl=url, Entries=entries)
        assert code_of(excinfo) == code


# ---------------------------------------------------------------------- bad messages


def test_message_too_long(sqs, queues: QueueFactory):
    url = queues(MaximumMessageSize=1024)
    sqs.send_message(QueueUrl=url, MessageBody="x" * 1024)
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(QueueUrl=url, MessageBody="x" * 1025)
    assert code_of(excinfo) == "InvalidParameterValue"
    assert "1024 bytes" in error_of(excinfo)["Message"]
    # Attributes count towards the size.
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(
            QueueUrl=url,
            MessageBody="x" * 1000,
            MessageAttributes={"a": {"DataType": "String", "StringValue": "y" * 100}},
        )
    assert code_of(excinfo) == "InvalidParameterValue"


def test_default_maximum_is_one_mebibyte(sqs, queues: QueueFactory):
    url = queues()
    sqs.send_message(QueueUrl=url, MessageBody="x" * 1_048_576)
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(QueueUrl=url, MessageBody="x" * 1_048_577)
    assert code_of(excinfo) == "InvalidParameterValue"


@pytest.mark.parametrize("body", ["nul \x00", "bell \x07", "\ufffe", "\x1f"])
def test_invalid_characters(sqs, queues: QueueFactory, body):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    assert code_of(excinfo) == "InvalidMessageContents"


ALLOWED_CHARACTERS = "#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]"


def test_an_invalid_character_is_named_in_the_refusal(sqs, queues: QueueFactory):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(QueueUrl=url, MessageBody="text\uffff")
    assert error_of(excinfo)["Message"] == (
        "Invalid binary character '#xFFFF' was found in the message body, the set of allowed "
        f"characters is {ALLOWED_CHARACTERS}."
    )


# Only JSON can carry a lone surrogate (botocore escapes it, as JavaScript's JSON.stringify
# does); the query protocol's form encoding has no way to.
@pytest.mark.parametrize("protocol", ["json"])
def test_lone_surrogates_are_refused_by_the_rules_not_as_malformed_json(
    shared_broker: BrokerThread, sqs, queues: QueueFactory
):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(QueueUrl=url, MessageBody="a\ud800b")
    assert (code_of(excinfo), error_of(excinfo)["Message"]) == (
        "InvalidMessageContents",
        "Invalid binary character '#xD800' was found in the message body, the set of allowed "
        f"characters is {ALLOWED_CHARACTERS}.",
    )
    result = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "bad", "MessageBody": "\udc00"},
            {"Id": "traced", "MessageBody": "t", "MessageSystemAttributes": {
                "AWSTraceHeader": {"DataType": "String", "StringValue": "Root=\ud800"}}},
            {"Id": "typed", "MessageBody": "t", "MessageAttributes": {
                "a": {"DataType": "String.\ud800", "StringValue": "v"}}},
            {"Id": "good", "MessageBody": "fine"},
        ],
    )  # fmt: skip
    assert [entry["Id"] for entry in result["Successful"]] == ["good"]
    assert [(f["Id"], f["Code"]) for f in result["Failed"]] == [
        ("bad", "InvalidMessageContents"),
        ("traced", "InvalidParameterValue"),
        ("typed", "InvalidParameterValue"),
    ]
    # A value the store could not write is refused before it gets there.
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"KmsMasterKeyId": "key\ud800"})
    assert code_of(excinfo) == "InvalidAttributeValue"
    # A refusal that echoes the value sends it back as it came.
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="h\ud800")
    assert error_of(excinfo)["Message"] == (
        'The input receipt handle "h\ud800" is not a valid receipt handle.'
    )
    # What JavaScript's JSON.stringify writes, as raw bytes.
    status, _, body = shared_broker.http(
        "POST",
        "/",
        headers=[
            ("content-type", "application/x-amz-json-1.0"),
            ("x-amz-target", "AmazonSQS.SendMessage"),
        ],
        body=json.dumps({"QueueUrl": url, "MessageBody": "a\ud800b"}).encode(),
    )
    assert (status, json.loads(body)["__type"]) == (400, "com.amazonaws.sqs#InvalidMessageContents")
    assert approximate_counts(sqs, url) == (1, 0, 0)


@pytest.mark.parametrize(
    "attributes",
    [
        {"bad name": {"DataType": "String", "StringValue": "v"}},
        {"AWS.reserved": {"DataType": "String", "StringValue": "v"}},
        {"a..b": {"DataType": "String", "StringValue": "v"}},
        {"x": {"DataType": "Text", "StringValue": "v"}},
        {"x": {"DataType": "Number", "StringValue": "twelve"}},
        {"x": {"DataType": "String", "StringValue": ""}},
        {"x": {"DataType": "Binary", "BinaryValue": b""}},
        {"x": {"DataType": "String", "StringValue": "\x00"}},
        {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)},
    ],
)
def test_bad_message_attributes(sqs, queues: QueueFactory, attributes):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageAttributes=attributes)
    assert code_of(excinfo) == "InvalidParameterValue"


@pytest.mark.parametrize(
    ("call", "params"),
    [
        ("send_message", {"MessageBody": "x", "DelaySeconds": 901}),
        ("receive_message", {"MaxNumberOfMessages": 11}),
        ("receive_message", {"MaxNumberOfMessages": 0}),
        ("receive_message", {"WaitTimeSeconds": 21}),
        ("receive_message", {"VisibilityTimeout": 43201}),
    ],
)
def test_out_of_range_parameters(unchecked, queues: QueueFactory, call, params):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        getattr(unchecked, call)(QueueUrl=url, **params)
    assert code_of(excinfo) == "InvalidParameterValue"


@pytest.mark.parametrize(
    ("call", "params", "missing"),
    [
        ("send_message", {"QueueUrl": "URL"}, "MessageBody"),
        ("send_message", {"QueueUrl": "URL", "MessageBody": ""}, "MessageBody"),
        ("send_message", {"MessageBody": "x"}, "QueueUrl"),
        ("create_queue", {}, "QueueName"),
        ("get_queue_url", {}, "QueueName"),
        ("delete_message", {"QueueUrl": "URL"}, "ReceiptHandle"),
        (
            "change_message_visibility",
            {"QueueUrl": "URL", "ReceiptHandle": "h"},
            "VisibilityTimeout",
        ),
        ("tag_queue", {"QueueUrl": "URL"}, "Tags"),
        ("send_message_batch", {"QueueUrl": "URL", "Entries": [{"Id": "a"}]}, "MessageBody"),
    ],
)
def test_missing_parameters(unchecked, queues: QueueFactory, call, params, missing):
    url = queues()
    params = {k: url if v == "URL" else v for k, v in params.items()}
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        getattr(unchecked, call)(**params)
    assert code_of(excinfo) == "MissingParameter"
    assert missing in error_of(excinfo)["Message"]


def test_queue_url_that_is_not_a_url(sqs):
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(QueueUrl="not a queue url", MessageBody="x")
    assert code_of(excinfo) == "InvalidAddress"
    assert isinstance(excinfo.value, sqs.exceptions.InvalidAddress)


# ---------------------------------------------------------------------- receipt handles


def test_delete_message(sqs, queues: QueueFactory):
    url = queues()
    sqs.send_message(QueueUrl=url, MessageBody="bye")
    (message,) = receive(sqs, url)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert approximate_counts(sqs, url) == (0, 0, 0)
    # Deleting again with the same (well-formed) handle succeeds quietly, as on AWS.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


@pytest.mark.parametrize("handle", ["garbage", "AQAAAAAAAAAB" + "A" * 40, "x" * 2000])
def test_invalid_receipt_handle(sqs, queues: QueueFactory, handle):
    url = queues()
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid) as excinfo:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)
    assert code_of(excinfo) == "ReceiptHandleIsInvalid"
    # 404 as AWS answers (the model's status; spulec/PyQS#24 quotes AWS's response).
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=1)
    assert code_of(excinfo) == "ReceiptHandleIsInvalid"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_receipt_handle_of_another_queue_is_invalid(sqs, queues: QueueFactory):
    first, second = queues(), queues()
    sqs.send_message(QueueUrl=first, MessageBody="mine")
    (message,) = receive(sqs, first)
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.delete_message(QueueUrl=second, ReceiptHandle=message["ReceiptHandle"])
    assert approximate_counts(sqs, first) == (0, 1, 0)


def test_delete_message_batch(sqs, queues: QueueFactory):
    url = queues()
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    messages = receive_exactly(sqs, url, 3)
    result = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "ReceiptHandle": messages[0]["ReceiptHandle"]},
            {"Id": "b", "ReceiptHandle": messages[1]["ReceiptHandle"]},
            {"Id": "bad", "ReceiptHandle": "not-a-handle"},
        ],
    )
    assert sorted(entry["Id"] for entry in result["Successful"]) == ["a", "b"]
    (failure,) = result["Failed"]
    assert failure["Id"] == "bad"
    assert failure["Code"] == "ReceiptHandleIsInvalid"
    assert failure["SenderFault"] is True
    assert approximate_counts(sqs, url) == (0, 1, 0)


def test_each_receive_issues_a_new_receipt_handle(sqs, queues: QueueFactory):
    url = queues()
    sqs.send_message(QueueUrl=url, MessageBody="again")
    handles = []
    for count in (1, 2, 3):
        (message,) = receive(sqs, url, VisibilityTimeout=0, AttributeNames=["All"])
        assert message["Attributes"]["ApproximateReceiveCount"] == str(count)
        handles.append(message["ReceiptHandle"])
    assert len(set(handles)) == 3
    # On a standard queue an older handle still deletes the message.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=handles[0])
    assert approximate_counts(sqs, url) == (0, 0, 0)


# ---------------------------------------------------------------------- visibility


def test_visibility_timeout_expiry_returns_the_message(sqs, queues: QueueFactory):
    url = queues(VisibilityTimeout=2)
    sent = sqs.send_message(QueueUrl=url, MessageBody="comeback")
    (first,) = receive(sqs, url)
    assert receive(sqs, url) == []  # in flight: invisible
    assert approximate_counts(sqs, url) == (0, 1, 0)
    # A long poll is woken when the timeout passes; it does not wait for its own end.
    (second,) = receive(sqs, url, WaitTimeSeconds=10, AttributeNames=["ApproximateReceiveCount"])
    assert second["MessageId"] == first["MessageId"] == sent["MessageId"]
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"


def test_receive_visibility_timeout_overrides_the_queue(sqs, queues: QueueFactory):
    url = queues(VisibilityTimeout=3600)
    sqs.send_message(QueueUrl=url, MessageBody="short")
    receive(sqs, url, VisibilityTimeout=1)
    assert receive(sqs, url, WaitTimeSeconds=10)  # back after 1 s, not an hour


def test_change_message_visibility(sqs, queues: QueueFactory):
    url = queues()
    sqs.send_message(QueueUrl=url, MessageBody="held")
    (message,) = receive(sqs, url)
    handle = message["ReceiptHandle"]
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)
    (again,) = receive(sqs, url)  # visible at once
    assert again["MessageId"] == message["MessageId"]
    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=again["ReceiptHandle"], VisibilityTimeout=2
    )
    assert receive(sqs, url) == []
    assert receive(sqs, url, WaitTimeSeconds=10)


def test_change_visibility_of_a_message_not_in_flight(sqs, queues: QueueFactory):
    url = queues()
    sqs.send_message(QueueUrl=url, MessageBody="visible")
    (message,) = receive(sqs, url, VisibilityTimeout=0)
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=10
        )
    assert code_of(excinfo) == "AWS.SimpleQueueService.MessageNotInflight"
    assert isinstance(excinfo.value, sqs.exceptions.MessageNotInflight)


def test_a_stale_handle_cannot_retime_the_current_receive(sqs, queues: QueueFactory):
    # Consumer A's lease is over (VisibilityTimeout=0) and B holds the message: A's handle
    # must neither release it (0) nor extend B's lease (600), alone or in a batch.
    url = queues()
    sqs.send_message(QueueUrl=url, MessageBody="job")
    (first,) = receive(sqs, url, VisibilityTimeout=0)
    (current,) = receive(sqs, url, VisibilityTimeout=300)
    stale = first["ReceiptHandle"]
    reason = (
        f"Value {stale} for parameter ReceiptHandle is invalid. Reason: Message does not exist "
        "or is not available for visibility timeout change."
    )
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=stale, VisibilityTimeout=0)
    assert (code_of(excinfo), error_of(excinfo)["Message"]) == ("InvalidParameterValue", reason)
    assert receive(sqs, url) == []
    result = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "current", "ReceiptHandle": current["ReceiptHandle"], "VisibilityTimeout": 1},
            {"Id": "stale", "ReceiptHandle": stale, "VisibilityTimeout": 600},
        ],
    )
    assert [entry["Id"] for entry in result["Successful"]] == ["current"]
    assert [(f["Id"], f["Code"], f["Message"], f["SenderFault"]) for f in result["Failed"]] == [
        ("stale", "InvalidParameterValue", reason, True)
    ]
    (back,) = receive(sqs, url, WaitTimeSeconds=10)  # after B's 1 s, not A's 600
    assert back["MessageId"] == current["MessageId"]


def test_change_visibility_out_of_range(unchecked, queues: QueueFactory):
    url = queues()
    unchecked.send_message(QueueUrl=url, MessageBody="x")
    (message,) = receive(unchecked, url)
    for timeout in (-1, 43_201):
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            unchecked.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=timeout
            )
        assert code_of(excinfo) == "InvalidParameterValue"


def test_change_message_visibility_batch(sqs, queues: QueueFactory):
    url = queues()
    for i in range(2):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    messages = receive_exactly(sqs, url, 2)
    result = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "now", "ReceiptHandle": messages[0]["ReceiptHandle"], "VisibilityTimeout": 0},
            {
                "Id": "later",
                "ReceiptHandle": messages[1]["ReceiptHandle"],
                "VisibilityTimeout": 600,
            },
            {"Id": "bad", "ReceiptHandle": "nope", "VisibilityTimeout": 0},
        ],
    )
    assert sorted(entry["Id"] for entry in result["Successful"]) == ["later", "now"]
    assert [(f["Id"], f["Code"]) for f in result["Failed"]] == [("bad", "ReceiptHandleIsInvalid")]
    (back,) = receive(sqs, url)
    assert back["MessageId"] == messages[0]["MessageId"]


# ---------------------------------------------------------------------- long polling


def test_long_poll_is_woken_by_a_send(shared_broker: BrokerThread, sqs, protocol, queues):
    url = queues()
    receiver = shared_broker.client(protocol, read_timeout=30)
    wait = 10
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        future = pool.submit(receive, receiver, url, WaitTimeSeconds=wait)
        time.sleep(0.3)  # let the receive reach the broker and start waiting
        assert not future.done()
        sent = sqs.send_message(QueueUrl=url, MessageBody="wake up")
        (message,) = future.result(timeout=wait + 5)
        elapsed = time.monotonic() - started
    assert message["MessageId"] == sent["MessageId"]
    assert elapsed < wait - 2  # well before the wait would have expired


def test_long_poll_uses_the_queue_default_wait(shared_broker: BrokerThread, sqs, protocol, queues):
    url = queues(ReceiveMessageWaitTimeSeconds=10)
    receiver = shared_broker.client(protocol, read_timeout=30)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(receive, receiver, url)  # no WaitTimeSeconds: the queue's 10 s
        time.sleep(0.3)
        assert not future.done()
        sqs.send_message(QueueUrl=url, MessageBody="default wait")
        assert [m["Body"] for m in future.result(timeout=15)] == ["default wait"]
    # An explicit WaitTimeSeconds=0 overrides the queue's default: an empty queue answers now.
    assert receive(sqs, url, WaitTimeSeconds=0) == []


@pytest.mark.slow
def test_long_poll_with_nothing_to_receive_returns_empty_after_the_wait(sqs, queues):
    url = queues()
    started = time.monotonic()
    assert receive(sqs, url, WaitTimeSeconds=1) == []
    assert time.monotonic() - started >= 0.9


def test_long_poll_is_ended_by_deleting_the_queue(
    shared_broker: BrokerThread, sqs, protocol, queues
):
    url = queues()
    receiver = shared_broker.client(protocol, read_timeout=30)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(receive, receiver, url, WaitTimeSeconds=10)
        time.sleep(0.3)
        sqs.delete_queue(QueueUrl=url)
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            future.result(timeout=8)
    assert code_of(excinfo) == "AWS.SimpleQueueService.NonExistentQueue"


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_long_poll_is_woken_when_retention_makes_a_message_receivable(
    tmp_path, protocol, fifo: bool
):
    """The retention sweep deletes an in-flight message: on a FIFO queue the next message of
    its group becomes receivable, on a standard queue at its in-flight limit there is room.
    A long poll waiting then is answered at once, as after a delete (README, quotas), not at
    the end of its WaitTimeSeconds. The sweep is told the time; the test does not wait."""
    config = broker_config(tmp_path, sqs=SqsSettings(max_in_flight_messages=1))
    with BrokerThread(config) as broker:
        sqs = broker.client(protocol)
        attributes = {"MessageRetentionPeriod": "60"}
        group: dict[str, str] = {}
        if fifo:
            attributes |= {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
            group = {"MessageGroupId": "A"}
        name = "swept.fifo" if fifo else "swept"
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        registry = broker.app.registry
        assert registry is not None
        sqs.send_message(QueueUrl=url, MessageBody="old", **group)
        now = now_ms()
        assert [m["Body"] for m in receive(sqs, url, VisibilityTimeout=600)] == ["old"]
        # The queue's time moves 30 s on (a sweep at that time), so the next send is 30 s
        # younger than "old": it stays when "old" expires.
        broker.call(registry.expire, now + 30_000)
        sqs.send_message(QueueUrl=url, MessageBody="young", **group)
        if fifo:
            assert receive(sqs, url) == []  # the group is held by "old"
        else:
            with pytest.raises(sqs.exceptions.OverLimit):
                receive(sqs, url)  # "old" takes the one in-flight place
        receiver = broker.client(protocol, read_timeout=30)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(receive, receiver, url, WaitTimeSeconds=20)
            time.sleep(0.3)  # let the receive reach the broker and start waiting
            assert not future.done()
            broker.call(registry.expire, now + 61_000)  # "old" is past its retention period
            assert [m["Body"] for m in future.result(timeout=10)] == ["young"]


# ---------------------------------------------------------------------- delays


def test_queue_delay(sqs, queues: QueueFactory):
    url = queues(DelaySeconds=2)
    sent = sqs.send_message(QueueUrl=url, MessageBody="delayed")
    assert receive(sqs, url) == []
    assert approximate_counts(sqs, url) == (0, 0, 1)
    (message,) = receive(sqs, url, WaitTimeSeconds=10)
    assert message["MessageId"] == sent["MessageId"]


def test_message_delay_overrides_the_queue_delay(sqs, queues: QueueFactory):
    url = queues(DelaySeconds=900)
    sqs.send_message(QueueUrl=url, MessageBody="late", DelaySeconds=900)
    sqs.send_message(QueueUrl=url, MessageBody="now", DelaySeconds=0)
    sqs.send_message(QueueUrl=url, MessageBody="soon", DelaySeconds=2)
    assert [m["Body"] for m in receive(sqs, url, MaxNumberOfMessages=10)] == ["now"]
    assert [m["Body"] for m in receive(sqs, url, WaitTimeSeconds=10)] == ["soon"]
    assert approximate_counts(sqs, url) == (0, 2, 1)


def test_a_fifo_queue_delay_is_retroactive_and_a_standard_one_is_not(sqs, queues: QueueFactory):
    """AWS, "Amazon SQS delay queues": retroactive for FIFO queues, not for standard ones."""
    fifo = queues(fifo=True, ContentBasedDeduplication="true", DelaySeconds=900)
    standard = queues(DelaySeconds=900)
    sqs.send_message(QueueUrl=fifo, MessageBody="sent under 900 s", MessageGroupId="g")
    sqs.send_message(QueueUrl=standard, MessageBody="sent under 900 s")
    for url in (fifo, standard):
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"DelaySeconds": "0"})
    assert [m["Body"] for m in receive(sqs, fifo)] == ["sent under 900 s"]
    assert receive(sqs, standard) == []
    assert approximate_counts(sqs, standard) == (0, 0, 1)

    later = queues(fifo=True, ContentBasedDeduplication="true")
    sqs.send_message(QueueUrl=later, MessageBody="sent without a delay", MessageGroupId="g")
    sqs.set_queue_attributes(QueueUrl=later, Attributes={"DelaySeconds": "900"})
    assert approximate_counts(sqs, later) == (0, 0, 1)
    assert receive(sqs, later) == []


def test_per_message_delay_on_a_fifo_queue_is_refused(sqs, queues: QueueFactory):
    url = queues(fifo=True, ContentBasedDeduplication="true")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g", DelaySeconds=5)
    assert code_of(excinfo) == "InvalidParameterValue"


@pytest.mark.parametrize("ended", [True, False], ids=["delay-ended", "still-delayed"])
def test_retention_drops_a_delayed_message_sent_before_younger_ones(
    broker: BrokerThread, protocol, ended: bool
):
    """A message whose delay ends after younger messages were sent, or that expires while
    still delayed, leaves the counts when its retention period ends, not once every younger
    message has gone. The retention pass is told the time; the test does not wait."""
    sqs = broker.client(protocol)
    url = sqs.create_queue(
        QueueName="delayed-then-expired", Attributes={"MessageRetentionPeriod": "60"}
    )["QueueUrl"]
    registry = broker.app.registry
    assert registry is not None
    now = now_ms()
    sqs.send_message(QueueUrl=url, MessageBody="delayed", DelaySeconds=50 if ended else 900)
    broker.call(registry.expire, now + 30_000)  # the queue's time: 30 s later
    sqs.send_message(QueueUrl=url, MessageBody="younger")
    assert approximate_counts(sqs, url) == (1, 0, 1)
    broker.call(registry.expire, now + 65_000)  # "delayed" was sent 65 s ago: gone
    assert approximate_counts(sqs, url) == (1, 0, 0)
    assert [m["Body"] for m in receive(sqs, url, MaxNumberOfMessages=10)] == ["younger"]


def test_retention_drops_a_fifo_message_still_delayed(broker: BrokerThread, protocol):
    """A FIFO queue's delay (900 s) outlasts its retention period (60 s): the message leaves
    the counts when the period ends, not when the delay does."""
    sqs = broker.client(protocol)
    attributes = {
        "FifoQueue": "true",
        "ContentBasedDeduplication": "true",
        "DelaySeconds": "900",
        "MessageRetentionPeriod": "60",
    }
    url = sqs.create_queue(QueueName="delayed-past-retention.fifo", Attributes=attributes)[
        "QueueUrl"
    ]
    registry = broker.app.registry
    assert registry is not None
    now = now_ms()
    sqs.send_message(QueueUrl=url, MessageBody="delayed", MessageGroupId="g")
    assert approximate_counts(sqs, url) == (0, 0, 1)
    broker.call(registry.expire, now + 61_000)  # the retention pass, 61 s later
    assert approximate_counts(sqs, url) == (0, 0, 0)


# ---------------------------------------------------------------------- purge


def test_purge_queue(sqs, queues: QueueFactory):
    url = queues()
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    receive(sqs, url, MaxNumberOfMessages=2)
    sqs.purge_queue(QueueUrl=url)
    assert approximate_counts(sqs, url) == (0, 0, 0)
    assert receive(sqs, url) == []
    with pytest.raises(sqs.exceptions.PurgeQueueInProgress) as excinfo:
        sqs.purge_queue(QueueUrl=url)
    assert code_of(excinfo) == "AWS.SimpleQueueService.PurgeQueueInProgress"
    assert status_of(excinfo) == 403
    # Messages sent after the purge are kept.
    sqs.send_message(QueueUrl=url, MessageBody="after")
    assert [m["Body"] for m in receive(sqs, url)] == ["after"]


# ---------------------------------------------------------------------- the in-flight limit


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerThread]:
    """A broker whose queues allow 3 messages in flight (AWS: 120,000)."""
    config = broker_config(
        tmp_path_factory.mktemp("limited"), sqs=SqsSettings(max_in_flight_messages=3)
    )
    with BrokerThread(config) as broker:
        yield broker


def test_standard_queue_over_the_in_flight_limit(limited: BrokerThread, protocol):
    sqs = limited.client(protocol)
    url = sqs.create_queue(QueueName=f"over-limit-{protocol}")["QueueUrl"]
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    first = receive(sqs, url, MaxNumberOfMessages=10)
    assert len(first) == 3
    with pytest.raises(sqs.exceptions.OverLimit) as excinfo:
        receive(sqs, url)
    error = error_of(excinfo)
    assert error["Code"] == "OverLimit"
    assert error["Type"] == "Sender"
    assert error["Message"].startswith("Too many messages have been received without being")
    assert status_of(excinfo) == 403
    # A long poll gets no messages and no error (AWS: "If you use long polling, Amazon SQS
    # returns no error messages"), and is answered as soon as a delete makes room.
    receiver = limited.client(protocol, read_timeout=30)
    assert receive(receiver, url, WaitTimeSeconds=1) == []
    assert len(receive(sqs, url, VisibilityTimeout=0)) == 1  # nothing goes in flight: allowed
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(receive, receiver, url, WaitTimeSeconds=10)
        time.sleep(0.3)
        sqs.delete_message(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"])
        assert len(future.result(timeout=8)) == 1
    assert approximate_counts(sqs, url) == (1, 3, 0)


def test_fifo_queue_over_the_in_flight_limit_returns_nothing(limited: BrokerThread, protocol):
    sqs = limited.client(protocol)
    url = sqs.create_queue(
        QueueName=f"over-limit-{protocol}.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )["QueueUrl"]
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=str(i), MessageGroupId=f"g{i}")
    first = receive(sqs, url, MaxNumberOfMessages=10)
    assert len(first) == 3
    # AWS: "If this limit is reached, Amazon SQS does not return an error".
    assert receive(sqs, url, MaxNumberOfMessages=10) == []
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"])
    assert len(receive(sqs, url, MaxNumberOfMessages=10)) == 1


# ---------------------------------------------------------------------- refused requests


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerThread]:
    """A broker with the smallest body limit (64 KiB) and a 0.5 s body timeout."""
    config = broker_config(
        tmp_path_factory.mktemp("strict"),
        api={
            "max_request_bytes": 65536,
            "limits": HttpLimits(header_timeout_seconds=0.5, body_timeout_seconds=0.5),
        },
    )
    with BrokerThread(config) as broker:
        yield broker


def test_a_request_body_over_the_limit_is_answered_as_aws_front_end_does(
    strict: BrokerThread, protocol
):
    # AWS answers 413 and a plain-text line, outside both protocols (see broker/refusals.py);
    # botocore reports the same as it does against AWS.
    sqs = strict.client(protocol)
    url = sqs.create_queue(QueueName=f"too-large-{protocol}")["QueueUrl"]
    if protocol == "json":
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            sqs.send_message(QueueUrl=url, MessageBody="x" * 70_000)
        assert error_of(excinfo) == {
            "Code": "413",
            "Message": "HTTP content length exceeded 65536 bytes.\n",
        }
        assert status_of(excinfo) == 413
    else:
        with pytest.raises(botocore.parsers.ResponseParserError) as parse_error:
            sqs.send_message(QueueUrl=url, MessageBody="x" * 70_000)
        assert "HTTP content length exceeded 65536 bytes." in str(parse_error.value)
    assert receive(sqs, url) == []
    sqs.send_message(QueueUrl=url, MessageBody="x" * 60_000)  # under the limit: accepted


@pytest.mark.parametrize("protocol", ["json", "query"])
def test_a_stalled_request_gets_request_timeout_in_its_protocol(strict: BrokerThread, protocol):
    host, port = strict.api
    if protocol == "json":
        head = b"X-Amz-Target: AmazonSQS.ListQueues\r\nContent-Type: application/x-amz-json-1.0\r\n"
    else:
        head = b"Content-Type: application/x-www-form-urlencoded\r\n"
    payload = (
        b"POST / HTTP/1.1\r\nHost: "
        + f"{host}:{port}".encode()
        + b"\r\n"
        + head
        + b"Content-Length: 100\r\n\r\n{"  # then nothing: the body stalls
    )
    reply = trio.run(functools.partial(raw_exchange, strict.api, payload))
    head_bytes, _, body = reply.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 408 ")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    raw = {"status_code": 408, "headers": headers, "body": body}
    error = botocore.parsers.create_parser(protocol).parse(raw, None)["Error"]
    if protocol == "json":
        assert headers["x-amzn-query-error"] == "requesttimeout;sender"  # lower-cased above
        assert json.loads(body)["__type"] == "com.amazonaws.sqs#RequestTimeout"
    else:
        assert error["Code"] == "RequestTimeout"
    assert error["Message"].startswith("Your socket connection to the server was not read")


def _timeouts(broker: BrokerThread) -> tuple[float, float]:
    """(408s counted, body bytes the API listener holds) from the broker's /metrics."""
    families = broker.metrics()
    (held,) = families["wharf_broker_http_buffered_request_bytes"].samples
    timeouts = [
        sample.value
        for sample in families["wharf_broker_http_refusals"].samples
        if sample.name.endswith("_total") and sample.labels["reason"] == "timeout"
    ]
    return sum(timeouts), held.value


async def _drip(api: tuple[str, int], head: bytes, interval: float, most: int) -> tuple[bytes, int]:
    """Send ``head``, then one byte of body every ``interval`` s (``most`` at most) until the
    server answers; what it answered, and how many bytes were dripped."""
    async with await trio.open_tcp_stream(*api) as stream:
        await stream.send_all(head)
        reply = b""
        drips = 0
        while not reply and drips < most:
            with trio.move_on_after(interval):
                reply = await stream.receive_some(65536)
            if not reply:
                await stream.send_all(b" ")
                drips += 1
        if reply:
            with trio.fail_after(10):
                while data := await stream.receive_some(65536):
                    reply += data
        return reply, drips


def test_a_body_dripped_below_the_minimum_rate_gets_request_timeout(strict: BrokerThread):
    # The slow-POST attack on the budget of bodies held at once: a 60 KB body declared, then a
    # byte every 0.1 s, each pause far under the 0.5 s body timeout. Before the minimum rate
    # it held its reservation until the body was whole (~100 minutes); with the default
    # 16 KiB/s it has 0.5 s plus a second per 16 KiB received, and gets 408 in its protocol.
    host, port = strict.api
    head = (
        b"POST / HTTP/1.1\r\nHost: "
        + f"{host}:{port}".encode()
        + b"\r\nX-Amz-Target: AmazonSQS.ListQueues\r\n"
        b"Content-Type: application/x-amz-json-1.0\r\nContent-Length: 60000\r\n\r\n{"
    )
    timeouts_before, _ = _timeouts(strict)
    reply, drips = trio.run(_drip, strict.api, head, 0.1, 60)
    assert reply, f"the body was still being received after {drips} drips (6 s)"
    head_bytes, _, body = reply.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 408 ")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    assert headers["connection"] == "close"
    assert headers["x-amzn-query-error"] == "RequestTimeout;Sender"
    raw = {"status_code": 408, "headers": headers, "body": body}
    error = botocore.parsers.create_parser("json").parse(raw, None)["Error"]
    assert error["Code"] == "RequestTimeout"
    timeouts_after, held = _timeouts(strict)
    assert timeouts_after == timeouts_before + 1
    assert held == 0  # its reservation went back with the connection
    sqs = strict.client("json")
    sqs.list_queues()  # the listener serves on


# ---------------------------------------------------------------------- FIFO


def send_fifo(
    sqs: Any, url: str, body: str, group: str, dedup: str | None = None
) -> dict[str, Any]:
    params = {"QueueUrl": url, "MessageBody": body, "MessageGroupId": group}
    if dedup is not None:
        params["MessageDeduplicationId"] = dedup
    result: dict[str, Any] = sqs.send_message(**params)
    return result


def test_fifo_order_within_groups(sqs, queues: QueueFactory):
    url = queues(fifo=True, ContentBasedDeduplication="true")
    sent = []
    for i in range(6):
        group = "ab"[i % 2]
        sent.append(send_fifo(sqs, url, f"{group}{i}", group))
    numbers = [int(s["SequenceNumber"]) for s in sent]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == 6

    order: dict[str, list[str]] = {"a": [], "b": []}
    while True:
        messages = receive(sqs, url, MaxNumberOfMessages=2, AttributeNames=["All"])
        if not messages:
            break
        for message in messages:
            attributes = message["Attributes"]
            order[attributes["MessageGroupId"]].append(message["Body"])
            assert (
                attributes["MessageDeduplicationId"]
                == hashlib.sha256(message["Body"].encode()).hexdigest()
            )
            assert "SequenceNumber" in attributes
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert order == {"a": ["a0", "a2", "a4"], "b": ["b1", "b3", "b5"]}


def test_fifo_batch_keeps_its_order(sqs, queues: QueueFactory):
    url = queues(fifo=True)
    entries = [
        {
            "Id": str(i),
            "MessageBody": f"m{i}",
            "MessageGroupId": "g",
            "MessageDeduplicationId": str(i),
        }
        for i in range(10)
    ]
    result = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    numbers = {e["Id"]: int(e["SequenceNumber"]) for e in result["Successful"]}
    assert [numbers[str(i)] for i in range(10)] == sorted(numbers.values())
    messages = receive(sqs, url, MaxNumberOfMessages=10)
    assert [m["Body"] for m in messages] == [f"m{i}" for i in range(10)]


def test_fifo_group_is_locked_while_a_message_is_in_flight(sqs, queues: QueueFactory):
    url = queues(fifo=True, ContentBasedDeduplication="true", VisibilityTimeout=2)
    for body in ("a1", "a2"):
        send_fifo(sqs, url, body, "a")
    send_fifo(sqs, url, "b1", "b")
    (first,) = receive(sqs, url)
    assert first["Body"] == "a1"
    # a2 waits behind a1, in flight; only the other group is served.
    assert [m["Body"] for m in receive(sqs, url, MaxNumberOfMessages=10)] == ["b1"]
    assert receive(sqs, url, MaxNumberOfMessages=10) == []
    # When a1's visibility timeout passes, a1 comes back first, not a2.
    (again,) = receive(sqs, url, WaitTimeSeconds=10)
    assert again["Body"] == "a1"
    sqs.delete_message(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"])
    assert [m["Body"] for m in receive(sqs, url)] == ["a2"]


def test_fifo_expired_receipt_handle(sqs, queues: QueueFactory):
    url = queues(fifo=True, ContentBasedDeduplication="true")
    send_fifo(sqs, url, "x", "g")
    (old,) = receive(sqs, url, VisibilityTimeout=0)
    (new,) = receive(sqs, url)
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=old["ReceiptHandle"])
    assert code_of(excinfo) == "InvalidParameterValue"
    sqs.delete_message(QueueUrl=url, ReceiptHandle=new["ReceiptHandle"])


def test_fifo_deduplication_by_id(sqs, queues: QueueFactory):
    url = queues(fifo=True)
    first = send_fifo(sqs, url, "one", "g", dedup="same")
    second = send_fifo(sqs, url, "two", "g", dedup="same")
    assert second["MessageId"] == first["MessageId"]
    assert second["SequenceNumber"] == first["SequenceNumber"]
    third = send_fifo(sqs, url, "one", "g", dedup="other")
    assert third["MessageId"] != first["MessageId"]
    messages = receive(sqs, url, MaxNumberOfMessages=10)
    assert [m["Body"] for m in messages] == ["one", "one"]
    # Deleting the message does not end its deduplication window.
    for message in messages:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert send_fifo(sqs, url, "x", "g", dedup="same")["MessageId"] == first["MessageId"]
    assert receive(sqs, url) == []


def test_fifo_deduplication_by_content(sqs, queues: QueueFactory):
    url = queues(fifo=True, ContentBasedDeduplication="true")
    first = send_fifo(sqs, url, "same body", "g")
    assert send_fifo(sqs, url, "same body", "g")["MessageId"] == first["MessageId"]
    assert send_fifo(sqs, url, "same body", "h")["MessageId"] == first["MessageId"]  # queue scope
    # An explicit id wins over the content.
    assert (
        send_fifo(sqs, url, "same body", "g", dedup="explicit")["MessageId"] != first["MessageId"]
    )
    assert len(receive(sqs, url, MaxNumberOfMessages=10)) == 2


def test_fifo_deduplication_scope_message_group(sqs, queues: QueueFactory):
    url = queues(
        fifo=True,
        ContentBasedDeduplication="true",
        DeduplicationScope="messageGroup",
        FifoThroughputLimit="perMessageGroupId",
    )
    a = send_fifo(sqs, url, "body", "a")
    b = send_fifo(sqs, url, "body", "b")
    assert a["MessageId"] != b["MessageId"]  # same content, other group: not a duplicate
    assert send_fifo(sqs, url, "body", "a")["MessageId"] == a["MessageId"]
    c = send_fifo(sqs, url, "x", "a", dedup="id")
    d = send_fifo(sqs, url, "y", "b", dedup="id")
    assert c["MessageId"] != d["MessageId"]
    assert send_fifo(sqs, url, "z", "b", dedup="id")["MessageId"] == d["MessageId"]
    assert len(receive_exactly(sqs, url, 4)) == 4


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({}, {"DeduplicationScope": "messageGroup", "FifoThroughputLimit": "perMessageGroupId"}),
        (
            {"DeduplicationScope": "messageGroup", "FifoThroughputLimit": "perMessageGroupId"},
            {"FifoThroughputLimit": "perQueue", "DeduplicationScope": "queue"},
        ),
    ],
    ids=["queue-to-messageGroup", "messageGroup-to-queue"],
)
def test_fifo_deduplication_scope_change_keeps_the_ids(
    sqs, queues: QueueFactory, before: dict[str, str], after: dict[str, str]
):
    """The same group and id within 5 minutes stays a duplicate across a scope change."""
    url = queues(fifo=True, **before)
    first = send_fifo(sqs, url, "first", "g", dedup="X")
    sqs.set_queue_attributes(QueueUrl=url, Attributes=after)
    assert (
        attributes_of(sqs, url, "DeduplicationScope")["DeduplicationScope"]
        == (after["DeduplicationScope"])
    )
    again = send_fifo(sqs, url, "again", "g", dedup="X")
    assert again["MessageId"] == first["MessageId"]
    assert [m["Body"] for m in receive(sqs, url, MaxNumberOfMessages=10)] == ["first"]


def test_fifo_send_errors(sqs, queues: QueueFactory):
    url = queues(fifo=True)
    cases = [
        ({"MessageBody": "x", "MessageDeduplicationId": "d"}, "MissingParameter"),
        ({"MessageBody": "x", "MessageGroupId": "g"}, "InvalidParameterValue"),  # no dedup id
        (
            {"MessageBody": "x", "MessageGroupId": "bad group!", "MessageDeduplicationId": "d"},
            "InvalidParameterValue",
        ),
        (
            {"MessageBody": "x", "MessageGroupId": "g", "MessageDeduplicationId": "d" * 129},
            "InvalidParameterValue",
        ),
    ]
    for params, code in cases:
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            sqs.send_message(QueueUrl=url, **params)
        assert code_of(excinfo) == code, params


def test_standard_queue_refuses_a_deduplication_id(sqs, queues: QueueFactory):
    url = queues()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageDeduplicationId="d")
    assert code_of(excinfo) == "InvalidParameterValue"
    # Fair queues (2025): a group id on a standard queue is accepted and returned.
    sqs.send_message(QueueUrl=url, MessageBody="fair", MessageGroupId="tenant-1")
    (message,) = receive(sqs, url, AttributeNames=["MessageGroupId"])
    assert message["Attributes"] == {"MessageGroupId": "tenant-1"}


def test_receive_request_attempt_id(sqs, queues: QueueFactory):
    url = queues(fifo=True, ContentBasedDeduplication="true")
    for i in range(3):
        send_fifo(sqs, url, f"m{i}", "g")
    first = receive(sqs, url, MaxNumberOfMessages=2, ReceiveRequestAttemptId="attempt-1")
    assert [m["Body"] for m in first] == ["m0", "m1"]
    # The retry of a lost response gets the same messages and the same handles.
    retry = receive(sqs, url, MaxNumberOfMessages=2, ReceiveRequestAttemptId="attempt-1")
    assert [m["MessageId"] for m in retry] == [m["MessageId"] for m in first]
    assert [m["ReceiptHandle"] for m in retry] == [m["ReceiptHandle"] for m in first]
    for message in retry:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert [m["Body"] for m in receive(sqs, url, ReceiveRequestAttemptId="attempt-2")] == ["m2"]


# ---------------------------------------------------------------------- dead-letter queues


def test_dead_letter_redrive_after_max_receive_count(sqs, queues: QueueFactory):
    dlq = queues()
    dlq_arn = arn_of(sqs, dlq)
    source = queues(
        RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
    )
    source_arn = arn_of(sqs, source)
    sent = sqs.send_message(
        QueueUrl=source,
        MessageBody="poison",
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "bad"}},
    )
    for count in (1, 2):
        (message,) = receive(sqs, source, VisibilityTimeout=0, AttributeNames=["All"])
        assert message["Attributes"]["ApproximateReceiveCount"] == str(count)
    # The third receive finds the count exceeded: the message moves instead of being delivered.
    assert receive(sqs, source, VisibilityTimeout=0) == []
    assert approximate_counts(sqs, source) == (0, 0, 0)
    (dead,) = receive(
        sqs,
        dlq,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
    )
    assert dead["MessageId"] == sent["MessageId"]
    assert dead["Body"] == "poison"
    assert dead["MessageAttributes"] == {"kind": {"DataType": "String", "StringValue": "bad"}}
    assert dead["Attributes"]["DeadLetterQueueSourceArn"] == source_arn
    assert sqs.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"] == [source]


def test_fifo_dead_letter_queue(sqs, queues: QueueFactory):
    dlq = queues(fifo=True)
    source = queues(
        fifo=True,
        ContentBasedDeduplication="true",
        RedrivePolicy=json.dumps({"deadLetterTargetArn": arn_of(sqs, dlq), "maxReceiveCount": 1}),
    )
    send_fifo(sqs, source, "first", "g")
    send_fifo(sqs, source, "second", "g")
    (message,) = receive(sqs, source, VisibilityTimeout=0)
    assert message["Body"] == "first"
    # "first" is moved; "second" is next in its group.
    assert [m["Body"] for m in receive(sqs, source)] == ["second"]
    dead = receive(sqs, dlq, AttributeNames=["All"])
    assert [m["Body"] for m in dead] == ["first"]
    assert dead[0]["Attributes"]["MessageGroupId"] == "g"


def test_a_fifo_dead_letter_copy_takes_the_message_id_for_deduplication_id(
    sqs, queues: QueueFactory
):
    """AWS, "Learn how to configure a dead-letter queue redrive": "When a message is moved
    from a FIFO queue to a FIFO DLQ, the original message's deduplication ID will be replaced
    with the original message's ID"."""
    dlq = queues(fifo=True)
    source = queues(
        fifo=True,
        RedrivePolicy=json.dumps({"deadLetterTargetArn": arn_of(sqs, dlq), "maxReceiveCount": 1}),
    )
    sent = send_fifo(sqs, source, "poison", "g", dedup="dedup-1")
    (message,) = receive(sqs, source, VisibilityTimeout=0, AttributeNames=["All"])
    assert message["Attributes"]["MessageDeduplicationId"] == "dedup-1"
    assert receive(sqs, source, VisibilityTimeout=0) == []  # moved
    (dead,) = receive(sqs, dlq, AttributeNames=["All"])
    assert dead["MessageId"] == sent["MessageId"]
    assert dead["Attributes"]["MessageDeduplicationId"] == sent["MessageId"]
    assert dead["Attributes"]["MessageGroupId"] == "g"


# ---------------------------------------------------------------------- permissions


def test_add_and_remove_permission(sqs, queues: QueueFactory):
    url = queues()
    arn = arn_of(sqs, url)
    sqs.add_permission(
        QueueUrl=url,
        Label="partners",
        AWSAccountIds=["111122223333", "444455556666"],
        Actions=["SendMessage", "ReceiveMessage"],
    )
    policy = json.loads(attributes_of(sqs, url, "Policy")["Policy"])
    (statement,) = policy["Statement"]
    assert statement["Sid"] == "partners"
    assert statement["Effect"] == "Allow"
    assert statement["Resource"] == arn
    assert sorted(statement["Principal"]["AWS"]) == [
        "arn:aws:iam::111122223333:root",
        "arn:aws:iam::444455556666:root",
    ]
    assert sorted(a.lower() for a in statement["Action"]) == [
        "sqs:receivemessage",
        "sqs:sendmessage",
    ]
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.add_permission(
            QueueUrl=url, Label="partners", AWSAccountIds=["111122223333"], Actions=["*"]
        )
    assert code_of(excinfo) == "InvalidParameterValue"
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.add_permission(
            QueueUrl=url, Label="bad", AWSAccountIds=["111122223333"], Actions=["Teleport"]
        )
    assert code_of(excinfo) == "InvalidParameterValue"
    sqs.add_permission(QueueUrl=url, Label="all", AWSAccountIds=["111122223333"], Actions=["*"])
    sqs.remove_permission(QueueUrl=url, Label="partners")
    policy = json.loads(attributes_of(sqs, url, "Policy")["Policy"])
    assert [s["Sid"] for s in policy["Statement"]] == ["all"]
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.remove_permission(QueueUrl=url, Label="partners")
    assert code_of(excinfo) == "InvalidParameterValue"
    # The last label gone, the queue has no Policy again (not one with no statements), and
    # a CreateQueue that names no Policy finds the same attributes.
    sqs.remove_permission(QueueUrl=url, Label="all")
    assert "Policy" not in attributes_of(sqs, url, "All")
    name = url.rsplit("/", 1)[1]
    assert sqs.create_queue(QueueName=name, Attributes={"Policy": ""})["QueueUrl"] == url


# ---------------------------------------------------------------------- signatures and policies

PARTNER_KEY = ("AKIAWHARFPARTNER0001", "partner-secret-access-key-0001")
PARTNER_ARN = "arn:aws:iam::111122223333:user/partner"
LOCAL_KEY = ("AKIAWHARFLOCALUSER01", "local-user-secret-access-key-01")
LOCAL_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/local"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerThread]:
    """A broker that checks signatures: the owner's key, a partner account's, a local user's."""
    directory = tmp_path_factory.mktemp("secured")
    auth = write_credentials(
        directory,
        [
            (ACCESS_KEY_ID, SECRET_ACCESS_KEY, ""),
            (*PARTNER_KEY, PARTNER_ARN),
            (*LOCAL_KEY, LOCAL_ARN),
        ],
    )
    with BrokerThread(broker_config(directory / "data", auth=auth)) as broker:
        yield broker


@pytest.fixture
def owner(secured: BrokerThread, protocol) -> Any:
    return secured.client(protocol)


def as_key(secured: BrokerThread, protocol, key: tuple[str, str]) -> Any:
    return secured.client(protocol, access_key_id=key[0], secret_access_key=key[1])


def test_the_right_key_works(owner):
    name = f"signed-{time.monotonic_ns()}"
    url = owner.create_queue(QueueName=name)["QueueUrl"]
    owner.send_message(QueueUrl=url, MessageBody="signed")
    (message,) = receive(owner, url, AttributeNames=["SenderId"])
    # The root user's SenderId is its account id, as SQS gives it; never the access key id.
    assert message["Attributes"]["SenderId"] == ACCOUNT_ID
    owner.delete_queue(QueueUrl=url)


def test_a_wrong_secret_is_refused(secured: BrokerThread, protocol):
    client = as_key(secured, protocol, (ACCESS_KEY_ID, "not-the-right-secret-at-all"))
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.list_queues()
    assert code_of(excinfo) == "SignatureDoesNotMatch"
    assert status_of(excinfo) == 403


def test_an_unknown_key_is_refused(secured: BrokerThread, protocol):
    client = as_key(secured, protocol, ("AKIAWHARFUNKNOWN0001", SECRET_ACCESS_KEY))
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.list_queues()
    assert code_of(excinfo) == "InvalidClientTokenId"
    assert status_of(excinfo) == 403


def test_a_request_signed_sixteen_minutes_ago_is_refused(owner):
    owner.list_queues()  # fine now
    then = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=16)
    with (
        mock.patch("botocore.auth.get_current_datetime", return_value=then.replace(tzinfo=None)),
        pytest.raises(botocore.exceptions.ClientError) as excinfo,
    ):
        owner.list_queues()
    assert code_of(excinfo) == "SignatureDoesNotMatch"
    assert "expired" in error_of(excinfo)["Message"].lower()
    fourteen = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=14)
    with mock.patch(
        "botocore.auth.get_current_datetime", return_value=fourteen.replace(tzinfo=None)
    ):
        owner.list_queues()  # within the allowed skew


def test_a_request_without_a_signature_is_refused(secured: BrokerThread):
    status, _, body = secured.http(
        "POST",
        "/",
        headers=[("content-type", "application/x-www-form-urlencoded")],
        body=b"Action=ListQueues&Version=2012-11-05",
    )
    assert status == 403
    assert b"<Code>MissingAuthenticationToken</Code>" in body


def test_a_signature_for_another_region_is_refused(secured: BrokerThread, protocol):
    client = secured.client(protocol, region="eu-west-1")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.list_queues()
    assert code_of(excinfo) == "SignatureDoesNotMatch"
    assert "region" in error_of(excinfo)["Message"]


@pytest.mark.parametrize("service", ["s3", "sns"])
def test_a_signature_for_another_service_is_refused(secured: BrokerThread, service):
    # botocore's signer, scoped to another service: AWS answers "Credential should be scoped
    # to correct service" (the sns scope is the SNS front end's, which refuses SQS actions).
    body = b"Action=ListQueues&Version=2012-11-05"
    request = AWSRequest(
        method="POST",
        url=secured.endpoint + "/",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    credentials = botocore.credentials.Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    SigV4Auth(credentials, service, "us-east-1").add_auth(request)
    status, _, answer = secured.http("POST", "/", headers=list(request.headers.items()), body=body)
    assert status in (400, 403)
    if service == "s3":
        assert b"<Code>SignatureDoesNotMatch</Code>" in answer
        assert b"Credential should be scoped to correct service: 'sqs'." in answer
    else:
        assert b"ListQueues" in answer  # SNS names the action it does not have


def fetch(url: str, method: str) -> tuple[int, bytes]:
    """Use a presigned URL with ``method`` (and an empty body): (status, body)."""
    data = b"" if method == "POST" else None
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data, method=method), timeout=10
        ) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_presigned_query_urls(secured: BrokerThread, method):
    # botocore signs a query-protocol URL for the operation's method (POST) unless told
    # otherwise; the signature covers the method, so the URL is used with the method it names.
    client = secured.client("query")
    name = f"presigned-{method}-{time.monotonic_ns()}"
    url = client.create_queue(QueueName=name)["QueueUrl"]
    presigned = client.generate_presigned_url(
        "send_message",
        Params={"QueueUrl": url, "MessageBody": "by url"},
        ExpiresIn=60,
        HttpMethod=method,
    )
    assert "X-Amz-Signature=" in presigned
    status, document = fetch(presigned, method)
    assert status == 200
    assert b"<MessageId>" in document
    assert [m["Body"] for m in receive(client, url)] == ["by url"]

    listed = client.generate_presigned_url(
        "list_queues", Params={"QueueNamePrefix": name}, HttpMethod=method
    )
    status, document = fetch(listed, method)
    assert status == 200
    assert f"<QueueUrl>{url}</QueueUrl>".encode() in document

    tampered = presigned.replace("by%20url", "by%20evil")
    assert tampered != presigned
    status, document = fetch(tampered, method)
    assert status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in document
    other = "POST" if method == "GET" else "GET"
    assert fetch(presigned, other)[0] == 403
    client.delete_queue(QueueUrl=url)


def test_an_expired_presigned_url_is_refused(secured: BrokerThread):
    client = secured.client("query")
    then = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=120)
    with mock.patch("botocore.auth.get_current_datetime", return_value=then.replace(tzinfo=None)):
        presigned = client.generate_presigned_url("list_queues", ExpiresIn=60, HttpMethod="GET")
    status, document = fetch(presigned, "GET")
    assert status == 400
    assert b"<Code>RequestExpired</Code>" in document


def test_a_deny_statement_blocks_its_principal(secured: BrokerThread, owner, protocol):
    name = f"denied-{time.monotonic_ns()}"
    url = owner.create_queue(QueueName=name)["QueueUrl"]
    arn = arn_of(owner, url)
    local = as_key(secured, protocol, LOCAL_KEY)
    local.send_message(QueueUrl=url, MessageBody="allowed before")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "no-sends",
                "Effect": "Deny",
                "Principal": {"AWS": [LOCAL_ARN]},
                "Action": ["sqs:SendMessage"],  # which also covers SendMessageBatch
                "Resource": arn,
            }
        ],
    }
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    for call in (
        lambda: local.send_message(QueueUrl=url, MessageBody="denied"),
        lambda: local.send_message_batch(
            QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "denied"}]
        ),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            call()
        assert code_of(excinfo) == "AccessDenied"
    # Other actions, and other principals, are unaffected.
    assert [m["Body"] for m in receive(local, url)] == ["allowed before"]
    owner.send_message(QueueUrl=url, MessageBody="owner still sends")
    owner.delete_queue(QueueUrl=url)


def test_add_permission_lets_another_account_in(secured: BrokerThread, owner, protocol):
    name = f"shared-{time.monotonic_ns()}"
    url = owner.create_queue(QueueName=name)["QueueUrl"]
    partner = as_key(secured, protocol, PARTNER_KEY)
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        partner.send_message(QueueUrl=url, MessageBody="not yet")
    assert code_of(excinfo) == "AccessDenied"

    owner.add_permission(
        QueueUrl=url, Label="partner-sends", AWSAccountIds=["111122223333"], Actions=["SendMessage"]
    )
    partner.send_message(QueueUrl=url, MessageBody="welcome")
    # "Specifying SendMessage ... also grants permissions for the corresponding batch versions"
    batch = partner.send_message_batch(
        QueueUrl=url, Entries=[{"Id": "b", "MessageBody": "batched"}]
    )
    assert [e["Id"] for e in batch["Successful"]] == ["b"]
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        partner.receive_message(QueueUrl=url)  # only SendMessage was granted
    assert code_of(excinfo) == "AccessDenied"
    messages = receive_exactly(owner, url, 2, AttributeNames=["SenderId"])
    assert sorted(m["Body"] for m in messages) == ["batched", "welcome"]
    assert {m["Attributes"]["SenderId"] for m in messages} == {
        sender_id_of(PARTNER_ARN, "111122223333")
    }

    owner.remove_permission(QueueUrl=url, Label="partner-sends")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        partner.send_message(QueueUrl=url, MessageBody="gone again")
    assert code_of(excinfo) == "AccessDenied"
    owner.delete_queue(QueueUrl=url)


@pytest.mark.parametrize(
    "character",
    ["é", "🚢", "&", '"'],
    ids=["two-byte", "four-byte", "ampersand", "quote"],
)
def test_a_largest_message_of_characters_that_need_escaping(sqs, queues: QueueFactory, character):
    # Each of these costs up to 3 bytes on the wire per byte of message (JSON \\u escapes,
    # percent-encoding): the request limit must leave room for the largest valid message.
    url = queues()
    body = character * (1_048_576 // len(character.encode()))
    assert len(body.encode()) == 1_048_576
    sent = sqs.send_message(QueueUrl=url, MessageBody=body)
    assert sent["MD5OfMessageBody"] == md5_hex(body.encode())
    (message,) = receive(sqs, url)
    assert message["Body"] == body


def test_concurrent_creates_of_one_queue_all_succeed(shared_broker: BrokerThread, protocol, queues):
    name = queues.name()
    clients = [shared_broker.client(protocol, read_timeout=31 + i) for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        urls = list(pool.map(lambda c: c.create_queue(QueueName=name)["QueueUrl"], clients))
    queues.urls.append(urls[0])
    assert len(set(urls)) == 1


def test_get_queue_attributes_without_names(sqs, queues: QueueFactory):
    url = queues()
    assert "Attributes" not in sqs.get_queue_attributes(QueueUrl=url)
    assert "Attributes" not in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[])


def test_change_visibility_of_a_deleted_message(sqs, queues: QueueFactory):
    url = queues()
    sqs.send_message(QueueUrl=url, MessageBody="x")
    (message,) = receive(sqs, url)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=5
        )
    assert code_of(excinfo) == "InvalidParameterValue"


def test_fifo_batch_with_duplicates_and_bad_entries(sqs, queues: QueueFactory):
    url = queues(fifo=True)
    result = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "MessageBody": "a", "MessageGroupId": "g", "MessageDeduplicationId": "1"},
            {"Id": "b", "MessageBody": "b", "MessageGroupId": "g", "MessageDeduplicationId": "1"},
            {
                "Id": "c",
                "MessageBody": "c\x00",
                "MessageGroupId": "g",
                "MessageDeduplicationId": "2",
            },
            {"Id": "d", "MessageBody": "d", "MessageGroupId": "g", "MessageDeduplicationId": "3"},
        ],
    )
    successful = {e["Id"]: e for e in result["Successful"]}
    assert set(successful) == {"a", "b", "d"}
    assert successful["b"]["MessageId"] == successful["a"]["MessageId"]
    assert [(f["Id"], f["Code"]) for f in result["Failed"]] == [("c", "InvalidMessageContents")]
    assert [m["Body"] for m in receive(sqs, url, MaxNumberOfMessages=10)] == ["a", "d"]


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("MessageGroupId", "The request must contain the parameter MessageGroupId."),
        ("MessageDeduplicationId", "The queue should either have ContentBasedDeduplication"),
    ],
)
def test_a_fifo_entry_without_its_ids_refuses_the_whole_batch(
    sqs, queues: QueueFactory, missing: str, message: str
):
    # SQS fails the request (400 InvalidParameterValue) and sends nothing: a valid neighbour
    # taking a sequence number ahead of the entry the producer resends would reorder the group.
    url = queues(fifo=True)
    incomplete = {
        "Id": "b",
        "MessageBody": "b",
        "MessageGroupId": "g",
        "MessageDeduplicationId": "2",
    }
    del incomplete[missing]
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {
                    "Id": "a",
                    "MessageBody": "a",
                    "MessageGroupId": "g",
                    "MessageDeduplicationId": "1",
                },
                incomplete,
            ],
        )
    assert code_of(excinfo) == "InvalidParameterValue"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert excinfo.value.response["Error"]["Message"].startswith(message)
    assert receive(sqs, url, MaxNumberOfMessages=10, WaitTimeSeconds=0) == []
