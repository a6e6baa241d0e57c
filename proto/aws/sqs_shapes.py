"""The SQS API (2012-11-05) as shapes: every action's input and output, for both protocols.

Structure, member types, ``required`` and ``flattened`` come from botocore's SQS model
(``botocore/data/sqs/2012-11-05/service-2.json``); ``tests/proto/aws/test_sqs_shapes.py``
checks every member of every action against it, so the table cannot drift.

Query/XML names (``wire``) are not in that model any more: SQS moved to awsJson 1.0 and the
JSON model dropped them. They come from the last query-protocol model (botocore 1.31.80,
``locationName``), which agrees with the Smithy model's ``xmlName`` traits
(aws-sdk-js-v3 ``clients/client-sqs/src/schemas/schemas_0.ts``). Two members are newer than the
query model:

- ``ReceiveMessage.MessageSystemAttributeNames``: Smithy names it ``AttributeName`` too, which
  would make it indistinguishable from ``AttributeNames``; no query-protocol SDK sends it, so it
  gets its own name here. Handlers should treat both members as one set.
- ``TagQueue.Tags``: the map is ``Tag`` (a shape-level ``locationName`` in the old model).

The query decoder also accepts every member under its own name (``Attributes.1.Name`` as well as
``Attribute.1.Name``): that is what botocore's query serializer produces from the JSON model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from proto.aws.errors import AwsError, common_error
from proto.aws.shapes import (
    BLOB,
    BOOLEAN,
    INTEGER,
    LONG,
    STRING,
    Item,
    ListOf,
    MapOf,
    MissingPath,
    Operation,
    Service,
    Structure,
    member,
)

__all__ = ["OPERATIONS", "SQS"]

# Shapes used in more than one place. QueueAttributeMap and MessageSystemAttributeMap are the
# same string-to-string map; MessageAttributeValue and MessageSystemAttributeValue are the same
# structure.
_NAME_VALUE_MAP: Final = MapOf(STRING, flattened=True, key_wire="Name", value_wire="Value")
_TAG_MAP: Final = MapOf(STRING, flattened=True, key_wire="Key", value_wire="Value")
_STRINGS: Final = ListOf(STRING, flattened=True)
_ATTRIBUTE_VALUE: Final = Structure(
    {
        "StringValue": member(STRING),
        "BinaryValue": member(BLOB),
        "StringListValues": member(ListOf(STRING, flattened=True), "StringListValue"),
        "BinaryListValues": member(ListOf(BLOB, flattened=True), "BinaryListValue"),
        "DataType": member(STRING, required=True),
    }
)
_ATTRIBUTE_VALUE_MAP: Final = MapOf(
    _ATTRIBUTE_VALUE, flattened=True, key_wire="Name", value_wire="Value"
)
_QUEUE_URL: Final = member(STRING, required=True)
_BATCH_RESULT_ERROR_ENTRY: Final = Structure(
    {
        "Id": member(STRING, required=True),
        "SenderFault": member(BOOLEAN, required=True),
        "Code": member(STRING, required=True),
        "Message": member(STRING),
    }
)
_FAILED: Final = member(
    ListOf(_BATCH_RESULT_ERROR_ENTRY, flattened=True), "BatchResultErrorEntry", required=True
)
_ID_ENTRY: Final = Structure({"Id": member(STRING, required=True)})


def _batch(entry: Structure, wire: str) -> Structure:
    """The input of a ``*Batch`` action: the queue and a flattened list of entries."""
    entries = member(ListOf(entry, flattened=True), wire, required=True)
    return Structure({"QueueUrl": _QUEUE_URL, "Entries": entries})


def _batch_result(entry: Structure, wire: str) -> Structure:
    """The output of a ``*Batch`` action: successful entries and failed entries."""
    successful = member(ListOf(entry, flattened=True), wire, required=True)
    return Structure({"Successful": successful, "Failed": _FAILED})


_MESSAGE: Final = Structure(
    {
        "MessageId": member(STRING),
        "ReceiptHandle": member(STRING),
        "MD5OfBody": member(STRING),
        "Body": member(STRING),
        "Attributes": member(_NAME_VALUE_MAP, "Attribute"),
        "MD5OfMessageAttributes": member(STRING),
        "MessageAttributes": member(_ATTRIBUTE_VALUE_MAP, "MessageAttribute"),
    }
)
_SEND_MESSAGE_BATCH_REQUEST_ENTRY: Final = Structure(
    {
        "Id": member(STRING, required=True),
        "MessageBody": member(STRING, required=True),
        "DelaySeconds": member(INTEGER),
        "MessageAttributes": member(_ATTRIBUTE_VALUE_MAP, "MessageAttribute"),
        "MessageSystemAttributes": member(_ATTRIBUTE_VALUE_MAP, "MessageSystemAttribute"),
        "MessageDeduplicationId": member(STRING),
        "MessageGroupId": member(STRING),
    }
)
_SEND_MESSAGE_BATCH_RESULT_ENTRY: Final = Structure(
    {
        "Id": member(STRING, required=True),
        "MessageId": member(STRING, required=True),
        "MD5OfMessageBody": member(STRING, required=True),
        "MD5OfMessageAttributes": member(STRING),
        "MD5OfMessageSystemAttributes": member(STRING),
        "SequenceNumber": member(STRING),
    }
)
_LIST_MESSAGE_MOVE_TASKS_RESULT_ENTRY: Final = Structure(
    {
        "TaskHandle": member(STRING),
        "Status": member(STRING),
        "SourceArn": member(STRING),
        "DestinationArn": member(STRING),
        "MaxNumberOfMessagesPerSecond": member(INTEGER),
        "ApproximateNumberOfMessagesMoved": member(LONG),
        "ApproximateNumberOfMessagesToMove": member(LONG),
        "FailureReason": member(STRING),
        "StartedTimestamp": member(LONG),
    }
)
_QUEUE_URL_RESULT: Final = Structure({"QueueUrl": member(STRING)})


def _op(
    name: str, input_shape: Structure, output_shape: Structure | None = None
) -> tuple[str, Operation]:
    return name, Operation(name, input_shape, output_shape)


OPERATIONS: Final[Mapping[str, Operation]] = dict(
    [
        _op(
            "AddPermission",
            Structure(
                {
                    "QueueUrl": _QUEUE_URL,
                    "Label": member(STRING, required=True),
                    "AWSAccountIds": member(_STRINGS, "AWSAccountId", required=True),
                    "Actions": member(_STRINGS, "ActionName", required=True),
                }
            ),
        ),
        _op(
            "CancelMessageMoveTask",
            Structure({"TaskHandle": member(STRING, required=True)}),
            Structure({"ApproximateNumberOfMessagesMoved": member(LONG)}),
        ),
        _op(
            "ChangeMessageVisibility",
            Structure(
                {
                    "QueueUrl": _QUEUE_URL,
                    "ReceiptHandle": member(STRING, required=True),
                    "VisibilityTimeout": member(INTEGER, required=True),
                }
            ),
        ),
        _op(
            "ChangeMessageVisibilityBatch",
            _batch(
                Structure(
                    {
                        "Id": member(STRING, required=True),
                        "ReceiptHandle": member(STRING, required=True),
                        "VisibilityTimeout": member(INTEGER),
                    }
                ),
                "ChangeMessageVisibilityBatchRequestEntry",
            ),
            _batch_result(_ID_ENTRY, "ChangeMessageVisibilityBatchResultEntry"),
        ),
        _op(
            "CreateQueue",
            Structure(
                {
                    "QueueName": member(STRING, required=True),
                    "Attributes": member(_NAME_VALUE_MAP, "Attribute"),
                    "tags": member(_TAG_MAP, "Tag"),
                }
            ),
            _QUEUE_URL_RESULT,
        ),
        _op(
            "DeleteMessage",
            Structure({"QueueUrl": _QUEUE_URL, "ReceiptHandle": member(STRING, required=True)}),
        ),
        _op(
            "DeleteMessageBatch",
            _batch(
                Structure(
                    {
                        "Id": member(STRING, required=True),
                        "ReceiptHandle": member(STRING, required=True),
                    }
                ),
                "DeleteMessageBatchRequestEntry",
            ),
            _batch_result(_ID_ENTRY, "DeleteMessageBatchResultEntry"),
        ),
        _op("DeleteQueue", Structure({"QueueUrl": _QUEUE_URL})),
        _op(
            "GetQueueAttributes",
            Structure(
                {"QueueUrl": _QUEUE_URL, "AttributeNames": member(_STRINGS, "AttributeName")}
            ),
            Structure({"Attributes": member(_NAME_VALUE_MAP, "Attribute")}),
        ),
        _op(
            "GetQueueUrl",
            Structure(
                {
                    "QueueName": member(STRING, required=True),
                    "QueueOwnerAWSAccountId": member(STRING),
                }
            ),
            _QUEUE_URL_RESULT,
        ),
        _op(
            "ListDeadLetterSourceQueues",
            Structure(
                {
                    "QueueUrl": _QUEUE_URL,
                    "NextToken": member(STRING),
                    "MaxResults": member(INTEGER),
                }
            ),
            Structure(
                {
                    "queueUrls": member(_STRINGS, "QueueUrl", required=True),
                    "NextToken": member(STRING),
                }
            ),
        ),
        _op(
            "ListMessageMoveTasks",
            Structure({"SourceArn": member(STRING, required=True), "MaxResults": member(INTEGER)}),
            Structure(
                {
                    "Results": member(
                        ListOf(_LIST_MESSAGE_MOVE_TASKS_RESULT_ENTRY, flattened=True),
                        "ListMessageMoveTasksResultEntry",
                    )
                }
            ),
        ),
        _op(
            "ListQueueTags",
            Structure({"QueueUrl": _QUEUE_URL}),
            Structure({"Tags": member(_TAG_MAP, "Tag")}),
        ),
        _op(
            "ListQueues",
            Structure(
                {
                    "QueueNamePrefix": member(STRING),
                    "NextToken": member(STRING),
                    "MaxResults": member(INTEGER),
                }
            ),
            Structure({"QueueUrls": member(_STRINGS, "QueueUrl"), "NextToken": member(STRING)}),
        ),
        _op("PurgeQueue", Structure({"QueueUrl": _QUEUE_URL})),
        _op(
            "ReceiveMessage",
            Structure(
                {
                    "QueueUrl": _QUEUE_URL,
                    "AttributeNames": member(_STRINGS, "AttributeName"),
                    "MessageSystemAttributeNames": member(_STRINGS, "MessageSystemAttributeName"),
                    "MessageAttributeNames": member(_STRINGS, "MessageAttributeName"),
                    "MaxNumberOfMessages": member(INTEGER),
                    "VisibilityTimeout": member(INTEGER),
                    "WaitTimeSeconds": member(INTEGER),
                    "ReceiveRequestAttemptId": member(STRING),
                }
            ),
            Structure({"Messages": member(ListOf(_MESSAGE, flattened=True), "Message")}),
        ),
        _op(
            "RemovePermission",
            Structure({"QueueUrl": _QUEUE_URL, "Label": member(STRING, required=True)}),
        ),
        _op(
            "SendMessage",
            Structure(
                {
                    "QueueUrl": _QUEUE_URL,
                    "MessageBody": member(STRING, required=True),
                    "DelaySeconds": member(INTEGER),
                    "MessageAttributes": member(_ATTRIBUTE_VALUE_MAP, "MessageAttribute"),
                    "MessageSystemAttributes": member(
                        _ATTRIBUTE_VALUE_MAP, "MessageSystemAttribute"
                    ),
                    "MessageDeduplicationId": member(STRING),
                    "MessageGroupId": member(STRING),
                }
            ),
            Structure(
                {
                    "MD5OfMessageBody": member(STRING),
                    "MD5OfMessageAttributes": member(STRING),
                    "MD5OfMessageSystemAttributes": member(STRING),
                    "MessageId": member(STRING),
                    "SequenceNumber": member(STRING),
                }
            ),
        ),
        _op(
            "SendMessageBatch",
            _batch(_SEND_MESSAGE_BATCH_REQUEST_ENTRY, "SendMessageBatchRequestEntry"),
            _batch_result(_SEND_MESSAGE_BATCH_RESULT_ENTRY, "SendMessageBatchResultEntry"),
        ),
        _op(
            "SetQueueAttributes",
            Structure(
                {
                    "QueueUrl": _QUEUE_URL,
                    "Attributes": member(_NAME_VALUE_MAP, "Attribute", required=True),
                }
            ),
        ),
        _op(
            "StartMessageMoveTask",
            Structure(
                {
                    "SourceArn": member(STRING, required=True),
                    "DestinationArn": member(STRING),
                    "MaxNumberOfMessagesPerSecond": member(INTEGER),
                }
            ),
            Structure({"TaskHandle": member(STRING)}),
        ),
        _op(
            "TagQueue",
            Structure({"QueueUrl": _QUEUE_URL, "Tags": member(_TAG_MAP, "Tag", required=True)}),
        ),
        _op(
            "UntagQueue",
            Structure(
                {"QueueUrl": _QUEUE_URL, "TagKeys": member(_STRINGS, "TagKey", required=True)}
            ),
        ),
    ]
)


def _missing_parameter(missing: Sequence[MissingPath]) -> AwsError:
    # Message as AWS words it (LocalStack snapshot test_sqs.snapshot.json, recorded on AWS):
    # "The request must contain the parameter MessageBody." SQS names one: the first.
    path = ".".join(step.key if isinstance(step, Item) else step for step in missing[0])
    return common_error("MissingParameter", f"The request must contain the parameter {path}.")


def _invalid_parameter(path: str, value: str) -> AwsError:
    # "Value 11 for parameter MaxNumberOfMessages is invalid. Reason: ..." (same snapshot).
    return common_error("InvalidParameterValue", f"Value {value} for parameter {path} is invalid.")


SQS: Final = Service(
    name="sqs",
    api_version="2012-11-05",
    xml_namespace="http://queue.amazonaws.com/doc/2012-11-05/",
    operations=OPERATIONS,
    target_prefix="AmazonSQS",
    json_namespace="com.amazonaws.sqs",
    query_compatible=True,
    xml_error_detail=True,
    missing_parameter=_missing_parameter,
    invalid_parameter=_invalid_parameter,
)
