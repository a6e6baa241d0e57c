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
    _find_missing,
    _from_json_walk,
    _normalize_walk,
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


@given(st.permutations(["Name", "Count", "Blob", "Items", "Tags", "Extra"]), st.integers(1, 6))
def test_from_json_keeps_model_order_whatever_order_members_come_in(names, given_count):
    # Both compiled paths (few members given: the value's items; else every member) must give
    # what the reference walk gives, in the same (model) order.
    values = {"Name": "n", "Count": 1, "Blob": "AAE=", "Items": [], "Tags": {}, "Extra": 2}
    value = {name: values[name] for name in names[:given_count]}
    converted = from_json(SHAPE, value, "")
    assert list(converted.items()) == list(_from_json_walk(SHAPE, value, "").items())
    assert list(converted) == [name for name in SHAPE.members if name in value]


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


# ---------------------------------------------------------------------- compiled walks
# Each public walk runs the shape's compiled function first and the reference walk only when
# that fails. They must agree: same result when the compiled one succeeds, and the compiled
# one fails exactly when the reference walk raises.


def _names(shape, found):
    if isinstance(shape, Structure):
        for name, spec in shape.members.items():
            found.add(name)
            _names(spec.shape, found)
    elif isinstance(shape, ListOf):
        _names(shape.member, found)
    elif isinstance(shape, MapOf):
        _names(shape.value, found)
    return found


_MEMBER_NAMES = sorted(set().union(*(_names(shape, set()) for shape in INPUTS + OUTPUTS)))
_ANY_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.binary(max_size=4)
    | st.sampled_from(["AAE=", "not base64!"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(_MEMBER_NAMES) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


def _outcome(walk, *args):
    try:
        return ("ok", walk(*args))
    except AwsError as error:
        return ("error", error.code)


def _compiled_outcome(function, value):
    try:
        return ("ok", function(value))
    except Exception:
        return ("error",)


@given(shape=st.sampled_from(INPUTS), data=st.data())
def test_compiled_from_json_agrees_with_the_reference_walk(aws_values, shape, data):
    valid = aws_values(shape).map(lambda v: msgspec.json.decode(msgspec.json.encode(v)))
    value = data.draw(valid | _ANY_VALUE)
    reference = _outcome(_from_json_walk, shape, value, "")
    compiled = _compiled_outcome(shape._from_json, value)
    assert compiled[0] == reference[0]
    if compiled[0] == "ok":
        assert compiled == reference
    assert _outcome(from_json, shape, value, "") == reference


@given(shape=st.sampled_from(OUTPUTS), data=st.data())
def test_compiled_normalize_output_agrees_with_the_reference_walk(aws_values, shape, data):
    value = data.draw(aws_values(shape) | _ANY_VALUE)
    reference = _outcome(_normalize_walk, shape, value, "")
    compiled = _compiled_outcome(shape._output, value)
    assert compiled[0] == reference[0]
    if compiled[0] == "ok":
        assert compiled == reference
    assert _outcome(normalize_output, shape, value) == reference


def _reference_check(shape, value):
    missing = []
    _find_missing(shape, value, (), missing)
    if missing:
        raise SQS.missing_parameter(missing)


@given(shape=st.sampled_from(INPUTS), data=st.data())
def test_compiled_check_required_agrees_with_the_reference_walk(aws_values, shape, data):
    value = data.draw(aws_values(shape))
    # Drop one member somewhere (maybe a required one) by re-drawing with fewer keys.
    if value and data.draw(st.booleans()):
        value = dict(value)
        del value[data.draw(st.sampled_from(sorted(value)))]
    reference = _outcome(_reference_check, shape, value)
    compiled = (
        ("ok", None) if shape._required is None else _compiled_outcome(shape._required, value)
    )
    assert compiled[0] == reference[0]
    assert _outcome(check_required, SQS, shape, value) == reference
