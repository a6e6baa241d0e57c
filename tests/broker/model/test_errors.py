from broker.model.errors import (
    INVALID_ATTRIBUTE_NAME,
    INVALID_ATTRIBUTE_VALUE,
    INVALID_PARAMETER_VALUE,
    SqsError,
    invalid_attribute_value,
    invalid_parameter,
    unknown_attribute,
)


def test_invalid_parameter_uses_aws_sentence():
    error = invalid_parameter("MaxNumberOfMessages", 11, "Must be between 1 and 10, if provided")
    assert error.code == INVALID_PARAMETER_VALUE
    assert error.message == (
        "Value 11 for parameter MaxNumberOfMessages is invalid. "
        "Reason: Must be between 1 and 10, if provided."
    )
    assert error.status == 400
    assert error.sender_fault is True


def test_attribute_errors():
    assert unknown_attribute("Foo").code == INVALID_ATTRIBUTE_NAME
    assert unknown_attribute("Foo").message == "Unknown Attribute Foo."
    error = invalid_attribute_value("DelaySeconds")
    assert (error.code, error.message) == (
        INVALID_ATTRIBUTE_VALUE,
        "Invalid value for the parameter DelaySeconds.",
    )


def test_errors_compare_by_content():
    assert SqsError("A", "m") == SqsError("A", "m")
    assert SqsError("A", "m") != SqsError("A", "m", status=403)
    assert SqsError("A", "m") != "A"
