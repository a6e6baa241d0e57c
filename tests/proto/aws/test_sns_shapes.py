"""The SNS shape table and error table against botocore's SNS model, names included."""

from __future__ import annotations

import botocore.model
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.aws.errors import AwsError
from proto.aws.shapes import Item, ListOf, MapOf, Scalar, Shape, Structure, check_required
from proto.aws.sns_shapes import ERRORS, OPERATIONS, SNS, sns_error

SERVED = {
    "CreateTopic",
    "DeleteTopic",
    "ListTopics",
    "GetTopicAttributes",
    "SetTopicAttributes",
    "Subscribe",
    "ConfirmSubscription",
    "Unsubscribe",
    "ListSubscriptions",
    "ListSubscriptionsByTopic",
    "GetSubscriptionAttributes",
    "SetSubscriptionAttributes",
    "Publish",
    "PublishBatch",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
    "AddPermission",
    "RemovePermission",
}


def botocore_wire(member_shape: botocore.model.Shape, member_name: str) -> str:
    # botocore parsers.py BaseXMLResponseParser._member_key_name, which QuerySerializer mirrors:
    # a flattened list is named after its member's locationName if it has one.
    if member_shape.type_name == "list" and member_shape.serialization.get("flattened"):
        name = member_shape.member.serialization.get("name")
        if name is not None:
            return name
    return member_shape.serialization.get("name", member_name)


def assert_same_shape(ours: Shape, theirs: botocore.model.Shape, path: str) -> None:
    if isinstance(ours, Scalar):
        assert ours.type == theirs.type_name, path
    elif isinstance(ours, Structure):
        assert theirs.type_name == "structure", path
        assert list(ours.members) == list(theirs.members), path
        required = {name for name, m in ours.members.items() if m.required}
        assert required == set(theirs.required_members), path
        for name, spec in ours.members.items():
            member_shape = theirs.members[name]
            assert (spec.wire or name) == botocore_wire(member_shape, name), f"{path}.{name}"
            assert_same_shape(spec.shape, member_shape, f"{path}.{name}")
    elif isinstance(ours, ListOf):
        assert theirs.type_name == "list", path
        assert ours.flattened == bool(theirs.serialization.get("flattened")), path
        if not ours.flattened:
            assert ours.member_wire == theirs.member.serialization.get("name", "member"), path
        assert_same_shape(ours.member, theirs.member, f"{path}[]")
    else:
        assert isinstance(ours, MapOf)
        assert theirs.type_name == "map", path
        assert ours.flattened == bool(theirs.serialization.get("flattened")), path
        assert ours.key_wire == theirs.key.serialization.get("name", "key"), path
        assert ours.value_wire == theirs.value.serialization.get("name", "value"), path
        assert_same_shape(ours.value, theirs.value, f"{path}{{}}")


def test_the_served_actions_are_in_the_table(sns_model):
    assert set(OPERATIONS) == SERVED
    assert set(sns_model.operation_names) >= SERVED


@pytest.mark.parametrize("name", sorted(SERVED))
def test_operation_matches_botocore(sns_model, name):
    ours = OPERATIONS[name]
    theirs = sns_model.operation_model(name)
    assert_same_shape(ours.input, theirs.input_shape, f"{name}.input")
    if theirs.output_shape is None:
        assert ours.output is None
    else:
        assert ours.output is not None
        # Query responses wrap the output in <{Action}Result>, which our encoder assumes.
        assert theirs.output_shape.serialization["resultWrapper"] == f"{name}Result"
        assert_same_shape(ours.output, theirs.output_shape, f"{name}.output")


def test_service_metadata_matches_botocore(sns_model):
    assert SNS.name == sns_model.signing_name
    assert SNS.api_version == sns_model.api_version
    assert SNS.xml_namespace == sns_model.metadata["xmlNamespace"]
    assert sns_model.metadata["protocols"] == ["query"]
    assert SNS.target_prefix is None


def test_error_table_matches_the_models_error_traits(sns_model):
    modeled = {shape.name: shape for shape in sns_model.error_shapes}
    assert set(ERRORS) == set(modeled)
    for name, (code, status, sender_fault) in ERRORS.items():
        trait = modeled[name].metadata.get("error")
        if trait is None:
            assert (code, status) == (name, 400), name
            continue
        assert code == trait["code"], name
        assert status == trait["httpStatusCode"], name
        assert sender_fault == trait.get("senderFault", False), name


def test_sns_error_builds_the_modeled_error():
    error = sns_error("NotFoundException", "Topic does not exist")
    assert isinstance(error, AwsError)
    assert (error.code, error.status_hint, error.fault, error.shape) == (
        "NotFound",
        404,
        "Sender",
        "NotFoundException",
    )
    with pytest.raises(KeyError):
        sns_error("NoSuchShape", "x")


def test_missing_parameter_uses_coral_validation_wording():
    error = SNS.missing_parameter([("PublishBatchRequestEntries", Item("1"), "Id")])
    assert error.code == "ValidationError"
    assert error.message == (
        "1 validation error detected: Value null at 'publishBatchRequestEntries.1.member.id' "
        "failed to satisfy constraint: Member must not be null"
    )


def test_every_missing_parameter_is_named_with_coral_paths():
    """As the LocalStack SNS snapshot recorded AWS: list elements and map values as their
    index or key and "member"; and "N validation errors" with every one, as an AWS SDK
    reported for an AddPermission with a topic only."""
    params = {
        "PublishBatchRequestEntries": [
            {"Id": "1", "Message": "m", "MessageAttributes": {"attr1": {"StringValue": "x"}}},
            {},
        ]
    }
    with pytest.raises(AwsError) as info:
        check_required(SNS, SNS.operations["PublishBatch"].input, params)
    assert info.value.message == (
        "4 validation errors detected: Value null at 'topicArn' failed to satisfy constraint: "
        "Member must not be null; Value null at "
        "'publishBatchRequestEntries.1.member.messageAttributes.attr1.member.dataType' failed "
        "to satisfy constraint: Member must not be null; Value null at "
        "'publishBatchRequestEntries.2.member.id' failed to satisfy constraint: Member must "
        "not be null; Value null at 'publishBatchRequestEntries.2.member.message' failed to "
        "satisfy constraint: Member must not be null"
    )
    with pytest.raises(AwsError) as info:
        check_required(SNS, SNS.operations["AddPermission"].input, {"TopicArn": "t"})
    assert info.value.message.startswith("3 validation errors detected: Value null at 'label'")
    assert "'aWSAccountId'" in info.value.message
    assert "'actionName'" in info.value.message


@given(shape=st.sampled_from(sorted(ERRORS)), message=st.text())
def test_every_error_shape_builds_its_table_entry(shape, message):
    error = sns_error(shape, message)
    code, status, sender_fault = ERRORS[shape]
    assert (error.code, error.status_hint, error.sender_fault) == (code, status, sender_fault)
    assert (error.shape, error.message) == (shape, message)
    assert error.fault == ("Sender" if sender_fault else "Receiver")
