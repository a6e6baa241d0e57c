"""The API listener's answers to refused requests, read back as botocore reads them."""

from __future__ import annotations

import json
from typing import Any

import botocore.parsers

from broker.refusals import REQUEST_TIMEOUT_MESSAGE, ApiRefusals, too_large_body
from monitoring.httpserver import Refusal, Response

SNS_AUTHORIZATION = (
    b"AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261129/us-east-1/sns/aws4_request, "
    b"SignedHeaders=host;x-amz-date, Signature=" + b"0" * 64
)


def hook() -> ApiRefusals:
    return ApiRefusals(new_request_id=lambda: "req-1")


def parsed(response: Response, protocol: str) -> dict[str, Any]:
    """What botocore makes of the response (the error part)."""
    headers = dict(response.headers)
    headers["content-type"] = response.content_type
    raw = {"status_code": response.status, "headers": headers, "body": response.body}
    result: dict[str, Any] = botocore.parsers.create_parser(protocol).parse(raw, None)
    return result


def test_a_body_over_the_limit_gets_aws_front_end_answer():
    refusal = Refusal(
        status=413,
        message="plain",
        max_body_bytes=4_194_304,
        method=b"POST",
        target=b"/",
        headers=[(b"x-amz-target", b"AmazonSQS.SendMessage")],
    )
    response = hook()(refusal)
    assert response.status == 413
    assert response.body == too_large_body(4_194_304)
    assert response.body == b"HTTP content length exceeded 4194304 bytes.\n"
    assert response.content_type.startswith("text/plain")
    assert response.headers == []  # AWS's front end sends no request id either
    error = parsed(response, "json")["Error"]
    assert error == {"Code": "413", "Message": "HTTP content length exceeded 4194304 bytes.\n"}


def test_a_stalled_json_request_gets_a_json_request_timeout():
    refusal = Refusal(
        status=408,
        message="plain",
        max_body_bytes=1024,
        method=b"POST",
        target=b"/",
        headers=[(b"x-amz-target", b"AmazonSQS.SendMessage"), (b"content-length", b"99")],
    )
    response = hook()(refusal)
    assert response.status == 408
    assert response.content_type == "application/x-amz-json-1.0"
    headers = dict(response.headers)
    assert headers["x-amzn-query-error"] == "RequestTimeout;Sender"
    assert headers["x-amzn-RequestId"] == "req-1"
    body = json.loads(response.body)
    assert body == {
        "__type": "com.amazonaws.sqs#RequestTimeout",
        "message": REQUEST_TIMEOUT_MESSAGE,
    }
    assert parsed(response, "json")["Error"]["Message"] == REQUEST_TIMEOUT_MESSAGE


def test_a_stalled_query_request_gets_sqs_xml_and_an_sns_one_sns_xml():
    sqs = hook()(Refusal(status=408, message="plain", max_body_bytes=1024))  # no head at all
    sns = hook()(
        Refusal(
            status=408,
            message="plain",
            max_body_bytes=1024,
            method=b"POST",
            target=b"/",
            headers=[(b"authorization", SNS_AUTHORIZATION)],
        )
    )
    for response, namespace in (
        (sqs, b"http://queue.amazonaws.com/doc/2012-11-05/"),
        (sns, b"http://sns.amazonaws.com/doc/2010-03-31/"),
    ):
        assert response.status == 408
        assert b'<ErrorResponse xmlns="' + namespace + b'">' in response.body
        error = parsed(response, "query")["Error"]
        assert error["Code"] == "RequestTimeout"
        assert error["Message"] == REQUEST_TIMEOUT_MESSAGE
        assert error["Type"] == "Sender"


def test_a_malformed_signature_does_not_break_the_answer():
    refusal = Refusal(
        status=408,
        message="plain",
        max_body_bytes=1024,
        method=b"POST",
        target=b"/?X-Amz-Credential=garbage",
        headers=[(b"authorization", b"AWS4-HMAC-SHA256 nonsense")],
    )
    response = hook()(refusal)
    assert parsed(response, "query")["Error"]["Code"] == "RequestTimeout"


def test_a_head_over_the_limit_gets_a_protocol_shaped_431():
    query = hook()(Refusal(status=431, message="plain", max_body_bytes=1024))  # head cut short
    assert query.status == 431
    error = parsed(query, "query")["Error"]
    assert error["Code"] == "RequestHeaderSectionTooLarge"
    assert error["Message"] == "Your request header section exceeds the maximum allowed size."
    json_refusal = Refusal(
        status=431,
        message="plain",
        max_body_bytes=1024,
        method=b"POST",
        target=b"/",
        headers=[(b"x-amz-target", b"AmazonSQS.SendMessage")],
    )
    assert parsed(hook()(json_refusal), "json")["Error"]["Code"] == "RequestHeaderSectionTooLarge"
