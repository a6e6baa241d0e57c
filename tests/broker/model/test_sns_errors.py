from hypothesis import given
from hypothesis import strategies as st

from broker.model.sns_errors import (
    INVALID_PARAMETER,
    NOT_FOUND,
    SnsError,
    attribute_error,
    filter_policy_limit_exceeded,
    invalid_parameter,
    not_found,
)
from proto.aws.sns_shapes import ERRORS


def test_messages_as_aws_words_them():
    assert invalid_parameter("AttributeName").message == "Invalid parameter: AttributeName"
    assert attribute_error("FilterPolicy: x", in_attributes_map=True).message == (
        "Invalid parameter: Attributes Reason: FilterPolicy: x"
    )
    assert attribute_error("FilterPolicy: x", in_attributes_map=False).message == (
        "Invalid parameter: FilterPolicy: x"
    )
    limit = filter_policy_limit_exceeded()
    assert (limit.code, limit.status, limit.shape) == (
        "FilterPolicyLimitExceeded",
        403,
        "FilterPolicyLimitExceededException",
    )
    missing = not_found("Topic")
    assert (missing.code, missing.message, missing.status) == (
        NOT_FOUND,
        "Topic does not exist",
        404,
    )


def test_codes_map_to_the_modeled_shapes():
    for code in (
        INVALID_PARAMETER,
        NOT_FOUND,
        "ParameterValueInvalid",
        "FilterPolicyLimitExceeded",
    ):
        error = SnsError(code, "m")
        assert ERRORS[error.shape][0] == code
    assert SnsError("Other", "m").shape == "Other"


@given(detail=st.text(), in_map=st.booleans())
def test_errors_compare_by_content(detail, in_map):
    first = attribute_error(detail, in_attributes_map=in_map)
    assert first == attribute_error(detail, in_attributes_map=in_map)
    assert first.code == INVALID_PARAMETER
    assert first.status == 400
    assert first.message.startswith("Invalid parameter: ")
    assert first.message.endswith(detail)
    assert (first == object()) is False
