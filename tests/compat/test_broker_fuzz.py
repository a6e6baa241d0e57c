"""Black-box fuzzing of the broker's API listener: bad input gets an AWS-shaped 4xx, never more.

Requests are drawn from botocore's SQS and SNS models (tests.support.wire_fuzz) and sent over
raw HTTP to the shared anonymous broker: awsJson 1.0 and query form posts for SQS, query form
posts for SNS, and raw-wire garbage. For every example the answer must arrive within 10 s, be
200 or a 4xx in the protocol's error shape that botocore's parsers read, leave no error in the
broker's log, and the broker must still answer ListQueues afterwards.

The bugs the properties found are pinned, each by the exact request, in the tests at the end.
``HYPOTHESIS_PROFILE=deep`` runs ten times as many examples.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, note, settings

from tests.support.broker import BrokerThread
from tests.support.crash_harness import broker_process
from tests.support.http import request
from tests.support.sns import sns_client
from tests.support.wire_fuzz import (
    CHANGING_ACTIONS,
    FORM_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    TIMEOUT_SECONDS,
    Answer,
    Call,
    Protocol,
    Ref,
    Targets,
    Wire,
    calls,
    check_answer,
    encode_call,
    form,
    garbage,
    health_check,
    nested_json,
    no_new_errors,
    send,
)

pytestmark = pytest.mark.slow

# HYPOTHESIS_PROFILE=deep runs ten times as many examples.
EXAMPLES = 150 * (10 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def targets(shared_broker: BrokerThread) -> Targets:
    """Queues (two standard, one FIFO), a topic and a subscription, made as examples need them."""
    assert shared_broker.config.auth.anonymous, "the fuzz requests are unsigned"
    return Targets(
        sqs=shared_broker.client("json"),
        sns=sns_client(shared_broker.endpoint),
        prefix=f"fuzz-{uuid.uuid4().hex[:8]}",
    )


def answered(broker: BrokerThread, request: Wire) -> tuple[Answer, dict[str, Any]]:
    """Send ``request``; the answer must keep the rule (see ``check_answer``), nothing may be
    logged as an error meanwhile, and the broker must still answer after it."""
    with no_new_errors(broker.daemon.log_output):  # type: ignore[attr-defined]
        answer = send(broker.api, request)
        parsed = check_answer(request, answer)
        health_check(broker.api)
    return answer, parsed


def exercise(broker: BrokerThread, targets: Targets, call: Call) -> None:
    """Send ``call`` with live names, check the answer and the broker, retire what changed."""
    refs: set[Ref] = set()
    params = targets.resolved(call.params, refs)
    request = encode_call(call, params)
    note(request.describe())
    answer, parsed = answered(broker, request)
    event(f"{call.operation}: {answer.status} {parsed.get('Error', {}).get('Code', '')}")
    if answer.status == 200 and call.operation in CHANGING_ACTIONS:
        targets.retire(refs)


@FUZZ
@given(call=calls("sqs", "json"))
def test_sqs_json_requests_get_200_or_an_aws_error(
    shared_broker: BrokerThread, targets: Targets, call: Call
) -> None:
    exercise(shared_broker, targets, call)


@FUZZ
@given(call=calls("sqs", "query"))
def test_sqs_query_requests_get_200_or_an_aws_error(
    shared_broker: BrokerThread, targets: Targets, call: Call
) -> None:
    exercise(shared_broker, targets, call)


@FUZZ
@given(call=calls("sns", "query"))
def test_sns_query_requests_get_200_or_an_aws_error(
    shared_broker: BrokerThread, targets: Targets, call: Call
) -> None:
    exercise(shared_broker, targets, call)


@FUZZ
@given(request=garbage())
def test_raw_wire_garbage_gets_an_aws_error(shared_broker: BrokerThread, request: Wire) -> None:
    note(request.describe())
    answer, parsed = answered(shared_broker, request)
    event(f"{answer.status} {parsed.get('Error', {}).get('Code', '')}")


# ---------------------------------------------------------------------- the bugs found
# The exact requests that broke the rule (each answered 500, or not at all), with the answer
# each gets now.

JSON_DEPTH_BEYOND_RECURSION = 5000  # far past any stack the handler runs on


def json_request(action: str, body: bytes | str | dict[str, Any]) -> Wire:
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    headers = (("Content-Type", JSON_CONTENT_TYPE), ("X-Amz-Target", f"AmazonSQS.{action}"))
    return Wire("POST", "/", headers, body, "json", "sqs", action)


def assert_answered_in_shape(broker: BrokerThread, request: Wire) -> dict[str, Any]:
    answer, parsed = answered(broker, request)
    assert 400 <= answer.status < 500
    return parsed


def test_a_json_body_nested_beyond_the_recursion_limit_gets_a_serialization_error(
    shared_broker: BrokerThread,
) -> None:
    body = nested_json(JSON_DEPTH_BEYOND_RECURSION).encode()
    parsed = assert_answered_in_shape(shared_broker, json_request("ListQueues", body))
    assert parsed["Error"]["Code"] == "SerializationException"


@pytest.mark.parametrize("protocol", ["json", "query"])
def test_a_head_over_the_limit_gets_a_431_in_the_protocols_shape(
    shared_broker: BrokerThread, protocol: Protocol
) -> None:
    # Found by the raw-wire property: a query string past api.limits.max_header_bytes was
    # answered with a plain-text 431 that botocore cannot read as an error.
    long_query = "/?Action=ListQueues&" + "a." * 20_000 + "=0"
    if protocol == "json":
        request = Wire(
            "POST",
            long_query,
            (("Content-Type", JSON_CONTENT_TYPE), ("X-Amz-Target", "AmazonSQS.ListQueues")),
            b"{}",
            "json",
            "sqs",
            "ListQueues",
        )
    else:
        request = Wire("POST", long_query, (), b"", "query", "sqs", "ListQueues")
    answer, parsed = answered(shared_broker, request)
    assert answer.status == 431
    assert parsed["Error"]["Code"] == "RequestHeaderSectionTooLarge"


@pytest.mark.parametrize("protocol", ["json", "query"])
@pytest.mark.parametrize("operation", ["SendMessage", "SendMessageBatch"])
def test_a_trace_header_without_a_value_is_refused(
    shared_broker: BrokerThread, targets: Targets, protocol: Protocol, operation: str
) -> None:
    attributes = {"AWSTraceHeader": {"DataType": "String"}}
    params: dict[str, Any] = {"QueueUrl": targets.queue_url(1)}
    if operation == "SendMessage":
        params.update(MessageBody="x", MessageSystemAttributes=attributes)
    else:
        params["Entries"] = [{"Id": "a", "MessageBody": "x", "MessageSystemAttributes": attributes}]
    request = encode_call(Call("sqs", protocol, operation, params), params)
    if operation == "SendMessage":
        parsed = assert_answered_in_shape(shared_broker, request)
        assert parsed["Error"]["Code"] == "InvalidParameterValue"
        return
    # A batch refuses the entry, not the request.
    answer, parsed = answered(shared_broker, request)
    assert answer.status == 200
    assert [(f["Id"], f["Code"]) for f in parsed["Failed"]] == [("a", "InvalidParameterValue")]
    assert not parsed.get("Successful")


@pytest.mark.parametrize("attribute", ["Policy", "RedrivePolicy", "RedriveAllowPolicy"])
def test_a_queue_attribute_nested_beyond_the_recursion_limit_is_refused(
    shared_broker: BrokerThread, targets: Targets, attribute: str
) -> None:
    value = nested_json(JSON_DEPTH_BEYOND_RECURSION, "object")
    params = {"QueueUrl": targets.queue_url(1), "Attributes": {attribute: value}}
    assert_answered_in_shape(
        shared_broker, json_request("SetQueueAttributes", json.dumps(params).encode())
    )


# "*a*a*...*b" as the plain regex ".*a.*a...b" backtracked for O(n**k) steps on a name of n
# "a"s: 80 characters and 8 stars took far longer than the timeout, and stalled every other
# request meanwhile (now broker/model/globs.py).
BACKTRACKING_GLOB = "*a" * 8 + "*b"


@pytest.mark.parametrize("service", ["sqs", "sns"])
async def test_a_backtracking_policy_glob_does_not_stall_the_broker(
    tmp_path: Path, service: str
) -> None:
    # A broker process of its own: a stalled one is killed, not left to hold up other tests.
    statement = {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": BACKTRACKING_GLOB}
    async with broker_process(tmp_path, 1) as (daemon, _):
        api = daemon.addresses["api"]
        if service == "sqs":
            policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
            name = {"QueueName": "a" * 80}
            url = json.loads(await post(api, json_request("CreateQueue", json.dumps(name))))
            queue = {"QueueUrl": url["QueueUrl"]}
            await post(
                api, json_request("SetQueueAttributes", {**queue, "Attributes": {"Policy": policy}})
            )
            use = json_request("SendMessage", {**queue, "MessageBody": "x"})
        else:
            # A topic policy's Resource is its topic's ARN: the glob goes into a condition on
            # the endpoint a Subscribe names instead.
            topic = "arn:aws:sns:us-east-1:000000000000:" + "a" * 256
            statement["Resource"] = topic
            statement["Condition"] = {"StringLike": {"sns:Endpoint": BACKTRACKING_GLOB}}
            policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
            await post(api, sns_request({"Action": "CreateTopic", "Name": "a" * 256}))
            set_policy = {
                "Action": "SetTopicAttributes",
                "TopicArn": topic,
                "AttributeName": "Policy",
                "AttributeValue": policy,
            }
            await post(api, sns_request(set_policy))
            endpoint = "arn:aws:sqs:us-east-1:000000000000:" + "a" * 80
            subscribe = {"Action": "Subscribe", "TopicArn": topic, "Protocol": "sqs"}
            use = sns_request({**subscribe, "Endpoint": endpoint})
        with trio.move_on_after(TIMEOUT_SECONDS) as waiting:
            await post(api, use)
        if waiting.cancelled_caught:
            daemon.process.kill()  # stuck in the regex, it would not stop on SIGTERM
    assert not waiting.cancelled_caught, f"no answer to {use.operation} in {TIMEOUT_SECONDS} s"


def sns_request(fields: dict[str, str]) -> Wire:
    headers = (("Content-Type", FORM_CONTENT_TYPE),)
    return Wire("POST", "/", headers, form(list(fields.items())), "query", "sns", fields["Action"])


async def post(api: tuple[str, int], wire: Wire) -> bytes:
    """``wire`` to the broker at ``api``; its answer must be a 200 within the timeout."""
    status, _, body = await request(
        api,
        wire.method,
        wire.target,
        headers=list(wire.headers),
        body=wire.body,
        limit_seconds=2 * TIMEOUT_SECONDS,  # the caller's own limit comes first
    )
    assert status == 200, body
    return body
