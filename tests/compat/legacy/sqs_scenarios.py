"""SQS and SNS scenarios through the last query-protocol boto3/botocore (requirements.txt).

Runs in the isolated venv beside this file (tests/support/legacy_sdk.py makes it), never in the
project's: everything here is the old SDK's own serializer, signer, XML parser and error
parsing, driven by the SQS model it shipped. Prints one JSON object of what the SDK returned
(bytes as base64, datetimes as ISO 8601); tests/compat/test_legacy_sdk.py asserts on it.

Environment: WHARF_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
import botocore
import botocore.config
import botocore.session
from botocore.exceptions import ClientError

ENDPOINT = os.environ["WHARF_ENDPOINT"]
REGION = os.environ["AWS_REGION"]
ACCESS_KEY_ID = os.environ["AWS_ACCESS_KEY_ID"]
SECRET_ACCESS_KEY = os.environ["AWS_SECRET_ACCESS_KEY"]
BINARY = bytes(range(256))  # every byte value, most of them not UTF-8
DEADLINE_SECONDS = 10  # for the loops that wait for messages to arrive

# Every request the SDK sent and the Content-Type of every answer, in order.
wire: list[dict[str, Any]] = []


def header(request: Any, name: str) -> str | None:
    value = request.headers.get(name)
    return value.decode() if isinstance(value, bytes) else value


def record_request(request: Any, **_: Any) -> None:
    body = request.body or b""
    fields = parse_qs(body.decode() if isinstance(body, bytes) else body, keep_blank_values=True)
    wire.append(
        {
            "method": request.method,
            "contentType": header(request, "Content-Type"),
            "amzTarget": header(request, "X-Amz-Target"),
            "action": fields.get("Action", [None])[0],
            "version": fields.get("Version", [None])[0],
            "authorization": (header(request, "Authorization") or "").split(" ")[0],
        }
    )


def record_response(http_response: Any, model: Any, **_: Any) -> None:
    wire.append(
        {
            "answerTo": model.name,
            "status": http_response.status_code,
            "contentType": http_response.headers.get("Content-Type"),
        }
    )


def make_session() -> boto3.Session:
    core = botocore.session.Session()
    core.set_config_variable("config_file", "/dev/null")
    core.set_config_variable("credentials_file", "/dev/null")
    return boto3.Session(botocore_session=core)


SESSION = make_session()


def client(service: str, *, secret: str = SECRET_ACCESS_KEY, **config: Any) -> Any:
    made = SESSION.client(
        service,
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=secret,
        config=botocore.config.Config(
            retries={"total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
            **config,
        ),
    )
    made.meta.events.register("before-send", record_request)
    made.meta.events.register("after-call", record_response)
    return made


sqs = client("sqs")
sns = client("sns")
unchecked = client("sqs", parameter_validation=False)  # sends what the SDK would refuse


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items() if key != "ResponseMetadata"}
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    return value


def failure(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """What the SDK raised for ``call(*args, **kwargs)``: its class and the parsed error."""
    try:
        call(*args, **kwargs)
    except ClientError as error:
        metadata = error.response.get("ResponseMetadata", {})
        return {
            "className": type(error).__name__,
            "code": error.response["Error"].get("Code"),
            "type": error.response["Error"].get("Type"),
            "message": error.response["Error"].get("Message"),
            "status": metadata.get("HTTPStatusCode"),
            "requestId": metadata.get("RequestId"),
            "operation": error.operation_name,
        }
    return {"resolved": True}


def queue_attributes(url: str, *names: str) -> dict[str, str]:
    answer = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(names) or ["All"])
    found: dict[str, str] = answer.get("Attributes", {})
    return found


def counts(url: str) -> dict[str, str]:
    return queue_attributes(
        url,
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    )


def receive(url: str, count: int, **options: Any) -> list[dict[str, Any]]:
    """Receive until ``count`` messages came (or the deadline passed); what came, in order."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(messages) < count and time.monotonic() < deadline:
        answer = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(10, count - len(messages)),
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=1,
            **options,
        )
        messages += answer.get("Messages", [])
    return messages


# ---------------------------------------------------------------------- the SDK itself


def sdk() -> dict[str, Any]:
    model_file = Path(botocore.__file__).parent / "data/sqs/2012-11-05/service-2.json"
    shipped = json.loads(model_file.read_text())
    return {
        "python": sys.version.split()[0],
        "prefix": sys.prefix,
        "boto3": boto3.__version__,
        "botocore": botocore.__version__,
        "sqsModelProtocol": shipped["metadata"]["protocol"],
        "sqsProtocol": sqs.meta.service_model.protocol,
        "snsProtocol": sns.meta.service_model.protocol,
        "botocoreFile": botocore.__file__,
    }


# ---------------------------------------------------------------------- SQS


def create() -> dict[str, Any]:
    standard = sqs.create_queue(
        QueueName="legacy-standard", Attributes={"VisibilityTimeout": "30"}, tags={"team": "wharf"}
    )["QueueUrl"]
    again = sqs.create_queue(QueueName="legacy-standard", Attributes={"VisibilityTimeout": "30"})
    fifo = sqs.create_queue(
        QueueName="legacy-orders.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )["QueueUrl"]
    return {
        "standardUrl": standard,
        "standardUrlAgain": again["QueueUrl"],
        "getStandardUrl": sqs.get_queue_url(QueueName="legacy-standard")["QueueUrl"],
        "fifoUrl": fifo,
        "getFifoUrl": sqs.get_queue_url(QueueName="legacy-orders.fifo")["QueueUrl"],
        "fifoAttributes": queue_attributes(fifo),
    }


def listing() -> dict[str, Any]:
    created = [sqs.create_queue(QueueName=f"legacy-page-{i}")["QueueUrl"] for i in range(3)]
    pages = []
    token: str | None = None
    for _ in range(5):  # three queues in pages of two: two pages
        answer = sqs.list_queues(
            QueueNamePrefix="legacy-page", MaxResults=2, **({"NextToken": token} if token else {})
        )
        token = answer.get("NextToken")
        pages.append({"QueueUrls": answer.get("QueueUrls", []), "hasNextToken": bool(token)})
        if not token:
            break
    return {
        "created": created,
        "byPrefix": sqs.list_queues(QueueNamePrefix="legacy-page").get("QueueUrls", []),
        "noMatch": sqs.list_queues(QueueNamePrefix="legacy-nothing").get("QueueUrls", []),
        "pages": pages,
        "all": sqs.list_queues().get("QueueUrls", []),
    }


def attributes(url: str) -> dict[str, Any]:
    before = queue_attributes(url)
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "VisibilityTimeout": "45",
            "MessageRetentionPeriod": "3600",
            "ReceiveMessageWaitTimeSeconds": "2",
        },
    )
    return {
        "before": before,
        "after": queue_attributes(url, "VisibilityTimeout", "MessageRetentionPeriod", "QueueArn"),
        "allAfter": queue_attributes(url),
    }


def tags(url: str) -> dict[str, Any]:
    created = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
    sqs.tag_queue(QueueUrl=url, Tags={"env": "test", "tier": "1", "note": "a/b = c+d @e: f.g_h-i"})
    tagged = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
    sqs.untag_queue(QueueUrl=url, TagKeys=["team", "tier", "note"])
    return {
        "createdTags": created,
        "tagged": tagged,
        "untagged": sqs.list_queue_tags(QueueUrl=url).get("Tags", {}),
    }


TYPED_ATTRIBUTES = {
    "text": {"DataType": "String", "StringValue": "hello <&> ✓"},
    "count": {"DataType": "Number", "StringValue": "-12.5e3"},
    "blob": {"DataType": "Binary", "BinaryValue": BINARY},
    "custom": {"DataType": "String.x", "StringValue": "custom typed"},
    "ratio": {"DataType": "Number.float", "StringValue": "0.25"},
    "picture": {"DataType": "Binary.png", "BinaryValue": b"\x89PNG\r\n\x1a\n\x00"},
}
TYPED_BODY = "typed body ✓ <&> \"quoted\" 'single'\r\nsecond line\ttab"
TRACE_HEADER = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


def messages(url: str) -> dict[str, Any]:
    """Send (single and batch), receive, change visibility, delete, on one queue."""
    sent = sqs.send_message(
        QueueUrl=url,
        MessageBody=TYPED_BODY,
        MessageAttributes=TYPED_ATTRIBUTES,
        MessageSystemAttributes={
            "AWSTraceHeader": {"DataType": "String", "StringValue": TRACE_HEADER}
        },
    )
    batch = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "first", "MessageBody": "batch one"},
            {
                "Id": "second",
                "MessageBody": "batch two",
                "MessageAttributes": {"kind": {"DataType": "String", "StringValue": "batched"}},
            },
            {"Id": "bad", "MessageBody": "control character \u0000 is not allowed"},
        ],
    )
    received = receive(url, 3, VisibilityTimeout=20)
    # By id, not body: a body the XML parser changed must not stop the script.
    ids = {entry["Id"]: entry["MessageId"] for entry in batch["Successful"]}
    ids["typed"] = sent["MessageId"]
    handle_of = {message["MessageId"]: message["ReceiptHandle"] for message in received}

    # ChangeMessageVisibility: "batch one" back at once, received a second time.
    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=handle_of[ids["first"]], VisibilityTimeout=0
    )
    again = receive(url, 1, VisibilityTimeout=20)
    visibility_batch = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {
                "Id": "visible",
                "ReceiptHandle": handle_of[ids["second"]],
                "VisibilityTimeout": 0,
            },
            {"Id": "bogus", "ReceiptHandle": "not-a-receipt-handle", "VisibilityTimeout": 0},
        ],
    )
    again_from_batch = receive(url, 1, VisibilityTimeout=20)

    handles = [message["ReceiptHandle"] for message in again + again_from_batch]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=handle_of[ids["typed"]])
    deleted = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            *({"Id": f"m{i}", "ReceiptHandle": handle} for i, handle in enumerate(handles)),
            {"Id": "bogus", "ReceiptHandle": "not-a-receipt-handle"},
        ],
    )
    return {
        "send": {
            **jsonable(sent),
            "body": TYPED_BODY,
            "attributesSent": jsonable(TYPED_ATTRIBUTES),
        },
        "traceHeader": TRACE_HEADER,
        "batch": jsonable(batch),
        "received": jsonable(received),
        "again": jsonable(again),
        "visibilityBatch": jsonable(visibility_batch),
        "againFromBatch": jsonable(again_from_batch),
        "deleteBatch": jsonable(deleted),
        "countsAfter": counts(url),
    }


def long_poll(url: str) -> dict[str, Any]:
    """WaitTimeSeconds: an empty poll lasts its wait; a send wakes a waiting poll."""
    started = time.monotonic()
    empty = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2).get("Messages", [])
    empty_seconds = time.monotonic() - started

    sender = threading.Timer(1.0, lambda: sqs.send_message(QueueUrl=url, MessageBody="wake up"))
    started = time.monotonic()
    sender.start()
    try:
        woken = sqs.receive_message(
            QueueUrl=url, WaitTimeSeconds=10, AttributeNames=["SenderId"]
        ).get("Messages", [])
    finally:
        sender.join(15)
    woken_seconds = time.monotonic() - started
    for message in woken:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return {
        "empty": empty,
        "emptySeconds": empty_seconds,
        "woken": jsonable(woken),
        "wokenSeconds": woken_seconds,
    }


def fifo(url: str) -> dict[str, Any]:
    sends = []
    for body, group in (("a1", "alpha"), ("b1", "beta"), ("a2", "alpha"), ("b2", "beta")):
        answer = sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=group)
        sends.append({"body": body, **jsonable(answer)})
    duplicate = sqs.send_message(QueueUrl=url, MessageBody="a1", MessageGroupId="alpha")
    explicit = sqs.send_message(
        QueueUrl=url, MessageBody="a3", MessageGroupId="alpha", MessageDeduplicationId="dedup-a3"
    )
    explicit_again = sqs.send_message(
        QueueUrl=url, MessageBody="other", MessageGroupId="alpha", MessageDeduplicationId="dedup-a3"
    )
    batch = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "b3", "MessageBody": "b3", "MessageGroupId": "beta"},
            {
                "Id": "a4",
                "MessageBody": "a4",
                "MessageGroupId": "alpha",
                "MessageDeduplicationId": "dedup-a4",
            },
        ],
    )
    received = receive(url, 7, VisibilityTimeout=30)
    return {
        "sends": sends,
        "duplicate": jsonable(duplicate),
        "explicit": jsonable(explicit),
        "explicitAgain": jsonable(explicit_again),
        "batch": jsonable(batch),
        "received": jsonable(received),
        "afterwards": counts(url),
    }


def purge() -> dict[str, Any]:
    url = sqs.create_queue(QueueName="legacy-purged")["QueueUrl"]
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"purge me {i}")
    before = counts(url)
    sqs.purge_queue(QueueUrl=url)
    return {
        "before": before,
        "after": counts(url),
        "receivedAfter": sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", []),
    }


def dead_letter() -> dict[str, Any]:
    dlq = sqs.create_queue(QueueName="legacy-dead-letters")["QueueUrl"]
    dlq_arn = queue_attributes(dlq, "QueueArn")["QueueArn"]
    source = sqs.create_queue(
        QueueName="legacy-redriven",
        Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})
        },
    )["QueueUrl"]
    sqs.send_message(QueueUrl=source, MessageBody="doomed")
    first = receive(source, 1, VisibilityTimeout=0)
    second = sqs.receive_message(QueueUrl=source, AttributeNames=["All"], WaitTimeSeconds=1).get(
        "Messages", []
    )
    moved = receive(dlq, 1)
    return {
        "dlqArn": dlq_arn,
        "sourceRedrivePolicy": queue_attributes(source, "RedrivePolicy").get("RedrivePolicy"),
        "sources": sqs.list_dead_letter_source_queues(QueueUrl=dlq).get("queueUrls", []),
        "firstTry": jsonable(first),
        "secondTry": jsonable(second),
        "inDeadLetterQueue": jsonable(moved),
    }


def errors(url: str) -> dict[str, Any]:
    missing = f"{ENDPOINT}/000000000000/legacy-missing"
    wrong_secret = client("sqs", secret="not-the-secret")
    entry = {"Id": "same", "MessageBody": "x"}
    return {
        "getUrlOfUnknownQueue": failure(sqs.get_queue_url, QueueName="legacy-missing"),
        "sendToUnknownQueue": failure(sqs.send_message, QueueUrl=missing, MessageBody="x"),
        "attributesOfUnknownQueue": failure(sqs.get_queue_attributes, QueueUrl=missing),
        "unknownQueueAttribute": failure(
            sqs.get_queue_attributes, QueueUrl=url, AttributeNames=["NoSuchAttribute"]
        ),
        "setUnknownQueueAttribute": failure(
            sqs.set_queue_attributes, QueueUrl=url, Attributes={"NoSuchAttribute": "1"}
        ),
        "createWithUnknownAttribute": failure(
            sqs.create_queue, QueueName="legacy-bad-attribute", Attributes={"Bogus": "1"}
        ),
        "deleteInvalidHandle": failure(
            sqs.delete_message, QueueUrl=url, ReceiptHandle="not-a-receipt-handle"
        ),
        "changeVisibilityInvalidHandle": failure(
            sqs.change_message_visibility,
            QueueUrl=url,
            ReceiptHandle="not-a-receipt-handle",
            VisibilityTimeout=0,
        ),
        "emptyBatch": failure(unchecked.send_message_batch, QueueUrl=url, Entries=[]),
        "emptyDeleteBatch": failure(unchecked.delete_message_batch, QueueUrl=url, Entries=[]),
        "duplicateBatchIds": failure(sqs.send_message_batch, QueueUrl=url, Entries=[entry, entry]),
        "tooManyBatchEntries": failure(
            sqs.send_message_batch,
            QueueUrl=url,
            Entries=[{"Id": f"e{i}", "MessageBody": "x"} for i in range(11)],
        ),
        "wrongSecretKey": failure(wrong_secret.list_queues),
        "wrongSecretKeySend": failure(wrong_secret.send_message, QueueUrl=url, MessageBody="x"),
    }


def delete_queue(url: str) -> dict[str, Any]:
    sqs.delete_queue(QueueUrl=url)
    return {
        "getUrlAfterDelete": failure(sqs.get_queue_url, QueueName="legacy-standard"),
        "sendAfterDelete": failure(sqs.send_message, QueueUrl=url, MessageBody="x"),
        "listedAfterDelete": sqs.list_queues(QueueNamePrefix="legacy-standard").get(
            "QueueUrls", []
        ),
    }


# ---------------------------------------------------------------------- SNS

PUBLISHED_ATTRIBUTES = {
    "color": {"DataType": "String", "StringValue": "red <&>"},
    "size": {"DataType": "Number", "StringValue": "42"},
    "blob": {"DataType": "Binary", "BinaryValue": bytes([0, 1, 0xFE, 0xFF])},
}


def sns_smoke() -> dict[str, Any]:
    topic = sns.create_topic(Name="legacy-events", Tags=[{"Key": "team", "Value": "wharf"}])
    topic_arn = topic["TopicArn"]
    queues = {}
    for kind in ("wrapped", "raw"):
        url = sqs.create_queue(QueueName=f"legacy-sns-{kind}")["QueueUrl"]
        queues[kind] = {"url": url, "arn": queue_attributes(url, "QueueArn")["QueueArn"]}
    wrapped = sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queues["wrapped"]["arn"],
        ReturnSubscriptionArn=True,
    )
    raw = sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queues["raw"]["arn"],
        Attributes={"RawMessageDelivery": "true"},
        ReturnSubscriptionArn=True,
    )
    published = sns.publish(
        TopicArn=topic_arn,
        Message="hello from the old SDK <&> ✓",
        Subject="legacy subject",
        MessageAttributes=PUBLISHED_ATTRIBUTES,
    )
    return {
        "topicArn": topic_arn,
        "topicAgain": sns.create_topic(Name="legacy-events")["TopicArn"],
        "topicAttributes": sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"],
        "queues": queues,
        "subscriptionArns": {
            "wrapped": wrapped["SubscriptionArn"],
            "raw": raw["SubscriptionArn"],
        },
        "byTopic": sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"],
        "published": jsonable(published),
        "attributesSent": jsonable(PUBLISHED_ATTRIBUTES),
        "deliveries": {
            "wrapped": jsonable(receive(queues["wrapped"]["url"], 1)),
            "raw": jsonable(receive(queues["raw"]["url"], 1)),
        },
        "unknownTopic": failure(
            sns.publish, TopicArn=topic_arn.replace("legacy-events", "legacy-none"), Message="x"
        ),
        "wrongSecretKey": failure(client("sns", secret="not-the-secret").list_topics),
    }


def main() -> None:
    results: dict[str, Any] = {"sdk": sdk()}
    results["create"] = create()
    standard = results["create"]["standardUrl"]
    results["list"] = listing()
    results["attributes"] = attributes(standard)
    results["tags"] = tags(standard)
    work = sqs.create_queue(QueueName="legacy-messages")["QueueUrl"]
    results["messages"] = messages(work)
    results["longPoll"] = long_poll(work)
    results["fifo"] = fifo(results["create"]["fifoUrl"])
    results["purge"] = purge()
    results["deadLetter"] = dead_letter()
    results["errors"] = errors(work)
    results["deleteQueue"] = delete_queue(standard)
    results["sns"] = sns_smoke()
    results["wire"] = wire
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
