"""The shape walks both protocols share: JSON input conversion, required members, outputs."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.aws.errors import AwsError
from proto.aws.shapes import (
    BLOB,
    INTEGER,
    STRING,
    ListOf,
    MapOf,
    Structure,
    check_required,
    from_json,
    member,
    normalize_output,
)
from proto.aws.sns_shapes import OPERATIONS as SNS_OPERATIONS
from proto.aws.sns_shapes import SNS
from proto.aws.sqs_shapes import OPERATIONS as SQS_OPERATIONS
from proto.aws.sqs_shapes import SQS

INPUTS = [op.input for op in SQS_OPERATIONS.values()] + [op.input for op in SNS_OPERATIONS.values()]
OUTPUTS = [op.output for op in [*SQS_OPERATIONS.values(), *SNS_OPERATIONS.values()] if op.output]


@given(shape=st.sampled_from(INPUTS), data=st.data())
def test_from_json_inverts_a_json_encoding(aws_values, shape, data):
    value = data.draw(aws_values(shape))
    # msgspec writes bytes as base64, as botocore's JSON serializer does for blobs.
    assert from_json(shape, msgspec.json.decode(msgspec.json.encode(value)), "") == value


SHAPE = Structure(
    {
        "Name": member(STRING, required=True),
        "Count": member(INTEGER),
        "Blob": member(BLOB),
        "Items": member(ListOf(Structure({"Id": member(STRING, required=True)}))),
        "Tags": member(MapOf(STRING)),
    }
)


def test_from_json_drops_unknown_and_null_members():
    value = {"Name": "n", "Count": None, "Extra": [1, 2], "Blob": "AAE="}
    assert from_json(SHAPE, value, "") == {"Name": "n", "Blob": b"\x00\x01"}


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ([], "an object"),
        ({"Name": 1}, "Name"),
        ({"Count": "1"}, "Count"),
        ({"Count": True}, "Count"),
        ({"Count": 1.0}, "Count"),
        ({"Blob": "not base64!"}, "Blob"),
        ({"Blob": 5}, "Blob"),
        ({"Items": {}}, "Items"),
        ({"Items": [5]}, "Items[0]"),
        ({"Items": [{"Id": 5}]}, "Items[0].Id"),
        ({"Tags": []}, "Tags"),
        ({"Tags": {"k": 1}}, "Tags.k"),
    ],
)
def test_from_json_type_errors(value, where):
    with pytest.raises(AwsError) as caught:
        from_json(SHAPE, value, "")
    assert caught.value.code == "SerializationException"
    assert where in caught.value.message


def test_check_required_reports_nested_paths():
    shape = SQS_OPERATIONS["SendMessageBatch"].input
    params = {"QueueUrl": "q", "Entries": [{"Id": "1", "MessageBody": "b"}, {"MessageBody": "b"}]}
    with pytest.raises(AwsError) as caught:
        check_required(SQS, shape, params)
    assert caught.value.message == "The request must contain the parameter Entries.2.Id."
    params["Entries"][1]["Id"] = "2"
    params["Entries"][1]["MessageAttributes"] = {"a": {"StringValue": "x"}}
    with pytest.raises(AwsError) as caught:
        check_required(SQS, shape, params)
    assert "Entries.2.MessageAttributes.a.DataType" in caught.value.message


def test_check_required_in_sns_words():
    with pytest.raises(AwsError) as caught:
        check_required(SNS, SNS_OPERATIONS["Subscribe"].input, {"TopicArn": "t"})
    assert caught.value.code == "ValidationError"
    assert "Value null at 'protocol'" in caught.value.message


@given(shape=st.sampled_from(OUTPUTS), data=st.data())
def test_normalize_output_keeps_valid_results(aws_values, shape, data):
    value = data.draw(aws_values(shape))
    assert normalize_output(shape, value) == value
    with_nones = {**value, **{name: None for name in shape.members if name not in value}}
    assert normalize_output(shape, with_nones) == value


@pytest.mark.parametrize(
    "value",
    [
        {"Name": 5},
        {"Name": b"bytes"},
        {"Count": True},
        {"Count": "1"},
        {"Blob": "text"},
        {"Items": "x"},
        {"Items": [{"Id": "1", "Oops": 1}]},
        {"Tags": {1: "x"}},
        {"Tags": ["x"]},
        {"Unknown": 1},
        ["not", "a", "mapping"],
    ],
)
def test_normalize_output_rejects_results_that_do_not_fit(value):
    with pytest.raises(AwsError) as caught:
        normalize_output(SHAPE, value)
    assert (caught.value.code, caught.value.status_hint, caught.value.sender_fault) == (
        "InternalFailure",
        500,
        False,
    )


def test_normalize_output_copies_buffers_to_bytes():
    out = normalize_output(SHAPE, {"Blob": bytearray(b"ab"), "Items": ({"Id": "1"},)})
    assert out == {"Blob": b"ab", "Items": [{"Id": "1"}]}
    assert type(out["Blob"]) is bytes
