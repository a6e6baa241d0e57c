"""The SQS shape table against botocore's SQS model, member by member."""

from __future__ import annotations

import botocore.model
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.aws.errors import AwsError
from proto.aws.shapes import ListOf, MapOf, Scalar, Shape, Structure, check_required
from proto.aws.sqs_shapes import OPERATIONS, SQS

SCALARS = {"string", "integer", "long", "boolean", "blob"}


def assert_same_shape(ours: Shape, theirs: botocore.model.Shape, path: str) -> None:
    """Types, members, required members and flattening agree (names are not in this model)."""
    if isinstance(ours, Scalar):
        assert theirs.type_name in SCALARS, path
        assert ours.type == theirs.type_name, path
    elif isinstance(ours, Structure):
        assert theirs.type_name == "structure", path
        assert list(ours.members) == list(theirs.members), path
        required = {name for name, m in ours.members.items() if m.required}
        assert required == set(theirs.required_members), path
        for name, spec in ours.members.items():
            assert_same_shape(spec.shape, theirs.members[name], f"{path}.{name}")
    elif isinstance(ours, ListOf):
        assert theirs.type_name == "list", path
        assert ours.flattened == bool(theirs.serialization.get("flattened")), path
        assert_same_shape(ours.member, theirs.member, f"{path}[]")
    else:
        assert isinstance(ours, MapOf)
        assert theirs.type_name == "map", path
        assert theirs.key.type_name == "string", path
        assert ours.flattened == bool(theirs.serialization.get("flattened")), path
        assert_same_shape(ours.value, theirs.value, f"{path}{{}}")


def test_every_sqs_operation_is_in_the_table(sqs_model):
    assert set(OPERATIONS) == set(sqs_model.operation_names)
    assert SQS.operations is OPERATIONS


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_operation_matches_botocore(sqs_model, name):
    ours = OPERATIONS[name]
    theirs = sqs_model.operation_model(name)
    assert ours.name == name
    assert_same_shape(ours.input, theirs.input_shape, f"{name}.input")
    if theirs.output_shape is None:
        assert ours.output is None
    else:
        assert ours.output is not None
        assert_same_shape(ours.output, theirs.output_shape, f"{name}.output")


def _structures(shape: Shape):
    if isinstance(shape, Structure):
        yield shape
        for spec in shape.members.values():
            yield from _structures(spec.shape)
    elif isinstance(shape, ListOf):
        yield from _structures(shape.member)
    elif isinstance(shape, MapOf):
        yield from _structures(shape.value)


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_query_names_are_unambiguous(name):
    # The query decoder finds a member under its query name or its own name; no two members
    # of one structure may answer to the same key.
    for structure in _structures(OPERATIONS[name].input):
        claimed: dict[str, str] = {}
        for member_name, spec in structure.members.items():
            for key in {spec.wire or member_name, member_name}:
                assert claimed.setdefault(key, member_name) == member_name, (name, key)


def test_legacy_names_quoted_in_the_sqs_api_reference():
    # Query parameter names from the 2012-11-05 SQS API reference's request and response
    # descriptions ("Attribute.N.Name", "SendMessageBatchRequestEntry.N", ...).
    send = OPERATIONS["SendMessage"].input.members
    assert send["MessageAttributes"].wire == "MessageAttribute"
    batch = OPERATIONS["SendMessageBatch"]
    assert batch.input.members["Entries"].wire == "SendMessageBatchRequestEntry"
    assert batch.output is not None
    assert batch.output.members["Successful"].wire == "SendMessageBatchResultEntry"
    assert batch.output.members["Failed"].wire == "BatchResultErrorEntry"
    assert OPERATIONS["ReceiveMessage"].input.members["AttributeNames"].wire == "AttributeName"
    assert OPERATIONS["SetQueueAttributes"].input.members["Attributes"].wire == "Attribute"


def test_service_metadata_matches_botocore(sqs_model):
    assert SQS.name == sqs_model.signing_name == "sqs"
    assert SQS.api_version == sqs_model.api_version
    assert SQS.target_prefix == sqs_model.metadata["targetPrefix"]
    assert SQS.query_compatible == ("awsQueryCompatible" in sqs_model.metadata)


def test_missing_parameter_error_is_the_sqs_one():
    error = SQS.missing_parameter([("MessageBody",), ("QueueUrl",)])
    assert (error.code, error.shape, error.status_hint) == (
        "MissingParameter",
        "MissingRequiredParameterException",
        400,
    )
    assert error.message == "The request must contain the parameter MessageBody."


@given(name=st.sampled_from(sorted(OPERATIONS)), data=st.data())
def test_check_required_accepts_complete_input(name, data, aws_values):
    params = data.draw(aws_values(OPERATIONS[name].input))
    check_required(SQS, OPERATIONS[name].input, params)


@given(name=st.sampled_from(sorted(OPERATIONS)), data=st.data())
def test_check_required_names_a_missing_member(name, data, aws_values):
    shape = OPERATIONS[name].input
    required = [n for n, m in shape.members.items() if m.required]
    if not required:
        return
    params = data.draw(aws_values(shape))
    gone = data.draw(st.sampled_from(required))
    del params[gone]
    with pytest.raises(AwsError) as caught:
        check_required(SQS, shape, params)
    assert caught.value.message == f"The request must contain the parameter {gone}."
