"""The API listener's answers to refused requests, read back as botocore reads them."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.parsers
import pytest

from broker.refusals import NO_ROOM_MESSAGE, REQUEST_TIMEOUT_MESSAGE, ApiRefusals, too_large_body
from monitoring.httpserver import Refusal, Response
from tests.support.broker import PROTOCOLS, BrokerThread, broker_config

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


def test_a_body_without_room_gets_a_protocol_shaped_service_unavailable():
    json_refusal = Refusal(
        status=503,
        message="plain",
        max_body_bytes=1024,
        method=b"POST",
        target=b"/",
        headers=[(b"x-amz-target", b"AmazonSQS.SendMessage")],
    )
    sqs = Refusal(status=503, message="plain", max_body_bytes=1024, method=b"POST", target=b"/")
    sns = Refusal(
        status=503,
        message="plain",
        max_body_bytes=1024,
        method=b"POST",
        target=b"/",
        headers=[(b"authorization", SNS_AUTHORIZATION)],
    )
    for refusal, protocol, namespace in (
        (json_refusal, "json", b""),
        (sqs, "query", b"http://queue.amazonaws.com/doc/2012-11-05/"),
        (sns, "query", b"http://sns.amazonaws.com/doc/2010-03-31/"),
    ):
        response = hook()(refusal)
        assert response.status == 503
        assert namespace in response.body
        error = parsed(response, protocol)["Error"]
        assert (error["Code"], error["Message"]) == ("ServiceUnavailable", NO_ROOM_MESSAGE)


# ------------------------------------------------------------------ a real broker, real clients


def _families(broker: BrokerThread) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    return {
        name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for name, family in broker.metrics().items()
    }


def _held(broker: BrokerThread) -> float:
    return _families(broker)["wharf_broker_http_buffered_request_bytes"][()]


def _buffers_full(broker: BrokerThread) -> float:
    refusals = _families(broker)["wharf_broker_http_refusals"]
    return refusals[(("reason", "buffers_full"),)]


def _until(predicate: Any) -> None:
    give_up = time.monotonic() + 10  # a bound on the wait, not an assertion on its length
    while not predicate():
        assert time.monotonic() < give_up
        time.sleep(0.02)


def test_boto3_gets_service_unavailable_while_slow_bodies_hold_the_budget(tmp_path: Path):
    """Bodies are read before their signature is checked: many slow uploads held up to
    max_request_bytes each, times max_connections (40 GB by default). The listener's budget
    refuses what does not fit, before reading it, in a shape every SDK retries."""
    limit = 65536
    config = broker_config(
        tmp_path, api={"max_request_bytes": limit, "max_buffered_request_bytes": limit}
    )
    with BrokerThread(config) as broker:
        urls = {
            p: broker.client(p).create_queue(QueueName=f"budget-{p}")["QueueUrl"] for p in PROTOCOLS
        }
        assert (_held(broker), _buffers_full(broker)) == (0, 0)
        assert _families(broker)["wharf_broker_http_buffered_request_bytes_limit"][()] == limit
        holders = []
        part = limit // 2 - 10  # then no SendMessage fits in the 20 bytes left
        for _ in range(2):  # each sends most of a body of half the budget, then waits
            holder = socket.create_connection(broker.api)
            holder.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (limit // 2)
                + b"x" * part
            )
            holders.append(holder)
        _until(lambda: _held(broker) == 2 * part)
        for protocol in PROTOCOLS:
            with pytest.raises(botocore.exceptions.ClientError) as info:
                broker.client(protocol).send_message(QueueUrl=urls[protocol], MessageBody="hi")
            error = info.value.response
            assert error["Error"]["Code"] == "ServiceUnavailable", error
            assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert _buffers_full(broker) == 2
        holders.pop().close()  # a connection that ends mid-body gives its part back
        _until(lambda: _held(broker) == part)
        for protocol in PROTOCOLS:
            broker.client(protocol).send_message(QueueUrl=urls[protocol], MessageBody="hi")
        holders.pop().close()
        _until(lambda: _held(broker) == 0)
        for protocol in PROTOCOLS:
            got = broker.client(protocol).receive_message(QueueUrl=urls[protocol])
            assert [m["Body"] for m in got["Messages"]] == ["hi"]
        assert _held(broker) == 0  # answered requests hold nothing
        assert _buffers_full(broker) == 2
