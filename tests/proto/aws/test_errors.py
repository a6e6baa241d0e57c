"""The AWS error value and the table of errors common to all AWS services."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.aws.errors import COMMON_ERRORS, AwsError, common_error
from proto.errors import ProtocolError

# "Common Errors" in the SQS API Reference (the same page exists for every query service):
# code and HTTP status, copied from the page. AccessDenied is listed (as AccessDeniedException)
# with 400, but the service answers 403: see test_access_denied_is_a_403_as_the_service_answers.
DOCUMENTED_STATUS = {
    "IncompleteSignature": 400,
    "InternalFailure": 500,
    "InvalidAction": 400,
    "InvalidClientTokenId": 403,
    "InvalidParameterCombination": 400,
    "InvalidParameterValue": 400,
    "InvalidQueryParameter": 400,
    "MalformedQueryString": 404,
    "MissingAction": 400,
    "MissingAuthenticationToken": 403,
    "MissingParameter": 400,
    "NotAuthorized": 400,
    "OptInRequired": 403,
    "RequestExpired": 400,
    "ServiceUnavailable": 503,
    "ThrottlingException": 400,
    "ValidationError": 400,
}


@pytest.mark.parametrize("code", sorted(DOCUMENTED_STATUS))
def test_common_error_statuses_are_the_documented_ones(code):
    assert COMMON_ERRORS[code][1] == DOCUMENTED_STATUS[code]


def test_access_denied_is_a_403_as_the_service_answers():
    # Captured answers: "403 Forbidden ... <Code>AccessDenied</Code>" (aws-sdk-php#1623),
    # "Status Code: 403; Error Code: AccessDenied" (aws-sdk-php#188).
    assert COMMON_ERRORS["AccessDenied"][1] == 403
    assert common_error("AccessDenied", "Access to the resource is denied.").status_hint == 403


def test_sqs_json_shape_names_for_renamed_codes():
    # LocalStack SqsJsonResponseSerializer.JSON_TO_QUERY_ERROR_CODES (recorded against AWS).
    assert COMMON_ERRORS["InvalidParameterValue"][0] == "InvalidParameterValueException"
    assert COMMON_ERRORS["MissingParameter"][0] == "MissingRequiredParameterException"
    assert COMMON_ERRORS["AccessDenied"][0] == "AccessDeniedException"


def test_server_errors_are_receiver_faults():
    for code, (_, status, sender_fault) in COMMON_ERRORS.items():
        assert sender_fault == (status < 500), code


@given(st.sampled_from(sorted(COMMON_ERRORS)), st.text())
def test_common_error_fills_everything_in(code, message):
    error = common_error(code, message)
    shape, status, sender_fault = COMMON_ERRORS[code]
    assert isinstance(error, ProtocolError)
    assert (error.code, error.message, error.status_hint) == (code, message, status)
    assert (error.shape, error.sender_fault) == (shape, sender_fault)
    assert str(error) == message


@given(st.text(), st.text(), st.integers(100, 599), st.booleans(), st.none() | st.text(min_size=1))
def test_aws_error_keeps_what_it_is_given(code, message, status, sender_fault, shape):
    error = AwsError(code, message, status=status, sender_fault=sender_fault, shape=shape)
    assert (error.code, error.message, error.status_hint) == (code, message, status)
    assert error.shape == (shape or code)
    assert error.fault == ("Sender" if sender_fault else "Receiver")
    assert repr(error).startswith("AwsError(")


def test_unknown_common_error_is_a_bug():
    with pytest.raises(KeyError):
        common_error("NoSuchCode", "x")
