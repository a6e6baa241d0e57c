"""The API front end over raw HTTP: protocol detection, error shapes, malformed input, limits.

These run the broker in the test's own trio loop and speak bytes to it, for what an SDK never
sends: broken JSON and forms, unknown actions, oversized and slow requests.
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import frontend
from broker.cli import SPEC
from broker.config import ApiSettings
from broker.frontend import aws_error, request_ids
from broker.model.errors import SqsError
from monitoring.httpserver import Request
from monitoring.settings import HttpLimits
from proto.aws import json_protocol
from proto.aws.errors import AwsError
from proto.aws.sqs_shapes import SQS
from tests.support.broker import BrokerThread, broker_config, open_broker
from tests.support.daemons import address, running
from tests.support.http import raw_exchange, request

NS = {"q": "http://queue.amazonaws.com/doc/2012-11-05/"}
JSON = "application/x-amz-json-1.0"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
async def api(tmp_path: Path):
    async with open_broker(broker_config(tmp_path)) as daemon:
        yield address(daemon, "api")


async def call_json(
    addr: tuple[str, int], action: str, payload: object | bytes, *, target: str | None = None
) -> tuple[int, dict[str, str], object]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, headers, reply = await request(
        addr,
        "POST",
        "/",
        headers=[
            ("content-type", JSON),
            ("x-amz-target", target if target is not None else f"AmazonSQS.{action}"),
        ],
        body=body,
    )
    return status, headers, json.loads(reply) if reply else None


async def call_query(
    addr: tuple[str, int], params: dict[str, str] | bytes, *, path: str = "/", method: str = "POST"
) -> tuple[int, dict[str, str], ET.Element]:
    encoded = params if isinstance(params, bytes) else urlencode(params).encode()
    if method == "GET":
        status, headers, reply = await request(addr, "GET", f"{path}?{encoded.decode()}")
    else:
        status, headers, reply = await request(
            addr, "POST", path, headers=[("content-type", FORM)], body=encoded
        )
    return status, headers, ET.fromstring(reply)


def query_error(document: ET.Element) -> tuple[str, str]:
    code = document.findtext("q:Error/q:Code", namespaces=NS)
    fault = document.findtext("q:Error/q:Type", namespaces=NS)
    assert code is not None
    assert fault is not None
    return code, fault


# ---------------------------------------------------------------------- protocols


async def test_json_protocol_round_trip(api):
    status, headers, body = await call_json(api, "CreateQueue", {"QueueName": "raw-json"})
    assert status == 200
    assert headers["content-type"] == JSON
    assert headers["x-amzn-requestid"]
    assert body == {"QueueUrl": f"http://{api[0]}:{api[1]}/000000000000/raw-json"}
    # Actions without output answer 200 with an empty body.
    status, _, body = await call_json(
        api, "TagQueue", {"QueueUrl": "http://h/000000000000/raw-json", "Tags": {"a": "b"}}
    )
    assert (status, body) == (200, None)
    # An empty receive has no Messages member at all.
    status, _, body = await call_json(
        api, "ReceiveMessage", {"QueueUrl": "http://h/000000000000/raw-json"}
    )
    assert (status, body) == (200, {})


async def test_json_sends_check_bodies_whether_or_not_the_request_is_plain_text(api):
    # Plain-text JSON skips the per-body scan (json_protocol.plain_text); escaped control
    # characters must still be refused, whichever way they are written.
    await call_json(api, "CreateQueue", {"QueueName": "bodies"})
    url = "http://h/000000000000/bodies"
    bodies = ["plain", 'line\nquote"tab\t', "bell\b", "feed\f", "nul\u0000", "A"]
    payload = json.dumps(
        {
            "QueueUrl": url,
            "Entries": [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)],
        }
    )
    status, _, body = await call_json(api, "SendMessageBatch", payload.encode())
    assert status == 200
    assert sorted(entry["Id"] for entry in body["Successful"]) == ["0", "1", "5"]
    assert {entry["Id"]: entry["Code"] for entry in body["Failed"]} == {
        "2": "InvalidMessageContents",
        "3": "InvalidMessageContents",
        "4": "InvalidMessageContents",
    }
    entries = [{"Id": "a", "MessageBody": "plain"}, {"Id": "b", "MessageBody": "tab\tline\n"}]
    status, _, body = await call_json(
        api, "SendMessageBatch", {"QueueUrl": url, "Entries": entries}
    )
    assert (status, len(body["Successful"]), body["Failed"]) == (200, 2, [])
    for text in ("plain", "with\nline"):
        payload = json.dumps({"QueueUrl": url, "MessageBody": text})
        status, _, body = await call_json(api, "SendMessage", payload.encode())
        assert status == 200, body
    payload = json.dumps({"QueueUrl": url, "MessageBody": "unit\u001f"})
    status, _, body = await call_json(api, "SendMessage", payload.encode())
    assert status == 400
    assert body["__type"].endswith("InvalidMessageContents")


async def test_query_protocol_round_trip(api):
    status, headers, document = await call_query(
        api, {"Action": "CreateQueue", "Version": "2012-11-05", "QueueName": "raw-query"}
    )
    assert status == 200
    assert headers["content-type"].startswith("text/xml")
    assert document.tag == "{{{}}}CreateQueueResponse".format(NS["q"])
    url = document.findtext("q:CreateQueueResult/q:QueueUrl", namespaces=NS)
    assert url == f"http://{api[0]}:{api[1]}/000000000000/raw-query"
    assert document.findtext("q:ResponseMetadata/q:RequestId", namespaces=NS)


async def test_query_requests_may_name_the_queue_by_their_path(api):
    await call_query(api, {"Action": "CreateQueue", "QueueName": "by-path"})
    path = "/000000000000/by-path"
    status, _, _ = await call_query(
        api, {"Action": "SendMessage", "MessageBody": "posted to the queue url"}, path=path
    )
    assert status == 200
    # A GET with everything in the query string, as the SQS docs show.
    status, _, document = await call_query(
        api,
        {"Action": "ReceiveMessage", "Version": "2012-11-05", "AttributeName": "All"},
        path=path,
        method="GET",
    )
    assert status == 200
    body = document.findtext("q:ReceiveMessageResult/q:Message/q:Body", namespaces=NS)
    assert body == "posted to the queue url"


async def test_json_requests_may_be_posted_to_the_queue_url(api):
    await call_json(api, "CreateQueue", {"QueueName": "json-path"})
    url = f"http://{api[0]}:{api[1]}/000000000000/json-path"
    status, _, reply = await request(
        api,
        "POST",
        "/000000000000/json-path",
        headers=[("content-type", JSON), ("x-amz-target", "AmazonSQS.SendMessage")],
        body=json.dumps({"QueueUrl": url, "MessageBody": "x"}).encode(),
    )
    assert status == 200
    assert "MessageId" in json.loads(reply)


async def test_unindexed_legacy_query_forms(api):
    # boto 2 and kombu send single list items without an index.
    await call_query(
        api,
        {
            "Action": "CreateQueue",
            "QueueName": "legacy",
            "Attribute.Name": "DelaySeconds",
            "Attribute.Value": "5",
        },
    )
    status, _, document = await call_query(
        api,
        {
            "Action": "GetQueueAttributes",
            "QueueUrl": "http://x/000000000000/legacy",
            "AttributeName": "DelaySeconds",
        },
    )
    assert status == 200
    assert document.findtext("q:GetQueueAttributesResult/q:Attribute/q:Value", namespaces=NS) == "5"


# ---------------------------------------------------------------------- errors in both shapes


async def test_json_errors_carry_the_shape_and_the_legacy_code(api):
    status, headers, body = await call_json(api, "GetQueueUrl", {"QueueName": "missing-queue"})
    assert status == 400
    assert body == {
        "__type": "com.amazonaws.sqs#QueueDoesNotExist",
        "message": "The specified queue does not exist.",
    }
    assert headers["x-amzn-query-error"] == "AWS.SimpleQueueService.NonExistentQueue;Sender"


async def test_query_errors(api):
    status, _, document = await call_query(
        api, {"Action": "GetQueueUrl", "QueueName": "missing-queue"}
    )
    assert status == 400
    assert query_error(document) == ("AWS.SimpleQueueService.NonExistentQueue", "Sender")
    assert document.findtext("q:RequestId", namespaces=NS)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "SerializationException"),
        (b"[1, 2]", "SerializationException"),
        (b'{"QueueName": 42}', "SerializationException"),
        (b'"a string"', "SerializationException"),
        (b"\xff\xfe", "SerializationException"),
    ],
)
async def test_malformed_json(api, body, code):
    status, headers, reply = await call_json(api, "CreateQueue", body)
    assert status == 400
    assert isinstance(reply, dict)
    assert reply["__type"].endswith(f"#{code}")
    assert headers["x-amzn-query-error"].startswith(f"{code};")


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("AmazonSQS.NoSuchAction", "InvalidAction"),
        ("AmazonSNS.Publish", "InvalidAction"),
        ("SendMessage", "InvalidAction"),
        ("", "InvalidAction"),
    ],
)
async def test_unknown_json_actions(api, target, code):
    status, headers, reply = await call_json(api, "", {}, target=target)
    assert status == 400
    assert isinstance(reply, dict)
    assert reply["__type"].endswith("#UnknownOperationException")
    assert headers["x-amzn-query-error"] == f"{code};Sender"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        (b"Action=NoSuchAction", "InvalidAction"),
        (b"Version=2012-11-05", "MissingAction"),
        (b"", "MissingAction"),
        (b"Action=ListQueues&Action=ListQueues", "InvalidQueryParameter"),
        (b"Action=ListQueues&MaxResults=many", "InvalidParameterValue"),
        (b"Action=GetQueueUrl&QueueName=%ff", "InvalidQueryParameter"),
        (
            b"Action=TagQueue&QueueUrl=http://x/000000000000/q&Tag.0.Key=a&Tag.0.Value=b",
            "InvalidQueryParameter",
        ),
    ],
)
async def test_malformed_forms(api, params, code):
    status, _, document = await call_query(api, params)
    assert status in (400, 404)
    assert query_error(document)[0] == code


@pytest.mark.parametrize(
    ("action", "params", "missing"),
    [
        ("SendMessage", {"MessageBody": "x"}, "QueueUrl"),
        ("CreateQueue", {}, "QueueName"),
        ("DeleteMessageBatch", {"QueueUrl": "http://x/000000000000/q"}, "Entries"),
    ],
)
async def test_missing_parameters_in_both_protocols(api, action, params, missing):
    status, headers, body = await call_json(api, action, params)
    assert status == 400
    assert isinstance(body, dict)
    assert body["__type"].endswith("#MissingRequiredParameterException")
    assert missing in body["message"]
    assert headers["x-amzn-query-error"] == "MissingParameter;Sender"
    status, _, document = await call_query(api, {"Action": action, **params})
    assert status == 400
    assert query_error(document) == ("MissingParameter", "Sender")


async def test_unsupported_actions_answer_with_an_sqs_error(api):
    # Move tasks are not built yet; whatever is missing must fail cleanly, never crash.
    status, _, document = await call_query(
        api, {"Action": "ListMessageMoveTasks", "SourceArn": "arn:aws:sqs:us-east-1:000000000000:q"}
    )
    assert status in (200, 400, 404)
    if status != 200:
        assert query_error(document)[1] == "Sender"


def test_model_errors_map_to_their_json_shapes():
    error = aws_error(SqsError("AWS.SimpleQueueService.NonExistentQueue", "gone"))
    assert (error.code, error.shape) == (
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
    )
    error = aws_error(SqsError("InvalidParameterValue", "bad"))
    assert error.shape == "InvalidParameterValueException"
    # The model's status wins over the model error's default (AWS answers 404 here).
    error = aws_error(SqsError("ReceiptHandleIsInvalid", "bad"))
    assert (error.shape, error.status_hint) == ("ReceiptHandleIsInvalid", 404)


# ---------------------------------------------------------------------- size and time limits


async def test_a_body_over_the_limit_is_refused_before_it_is_sent(tmp_path: Path):
    config = broker_config(tmp_path, api={"max_request_bytes": 65536})
    async with open_broker(config) as daemon:
        api = address(daemon, "api")
        # Only the head: the broker must answer 413 without waiting for a byte of the body.
        head = (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.0\r\n"
            b"X-Amz-Target: AmazonSQS.ListQueues\r\nContent-Length: 10000000\r\n\r\n"
        )
        with trio.fail_after(5):
            reply = await raw_exchange(api, head)
        assert reply.startswith(b"HTTP/1.1 413 ")
        # A chunked body is cut off as soon as it passes the limit. (Only just over it: bytes
        # the broker never reads would turn its close into a reset that eats the answer.)
        chunk = b"5800\r\n" + b"a" * 0x5800 + b"\r\n"
        chunked = (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3
        )
        with trio.fail_after(5):
            reply = await raw_exchange(api, chunked)
        assert reply.startswith(b"HTTP/1.1 413 ")
        # Just under the limit is served.
        body = urlencode({"Action": "ListQueues", "QueueNamePrefix": "p" * 60000}).encode()
        status, _, _ = await request(api, "POST", "/", headers=[("content-type", FORM)], body=body)
        assert status == 200


async def test_a_slow_client_times_out(tmp_path: Path):
    limits = HttpLimits(header_timeout_seconds=0.5, body_timeout_seconds=0.5)
    config = broker_config(tmp_path, api=ApiSettings(port=0, limits=limits))
    async with open_broker(config) as daemon:
        api = address(daemon, "api")
        # Headers that never end.
        with trio.fail_after(5):
            reply = await raw_exchange(api, b"POST / HTTP/1.1\r\nHost: x\r\n")
        assert reply.startswith(b"HTTP/1.1 408 ")
        # A body that stops arriving.
        with trio.fail_after(5):
            reply = await raw_exchange(
                api,
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 100\r\n\r\nAction=List",
            )
        assert reply.startswith(b"HTTP/1.1 408 ")
        # The listener is fine afterwards.
        status, _, _ = await call_query(api, {"Action": "ListQueues"})
        assert status == 200


async def test_stopping_closes_idle_keep_alive_connections_at_once(tmp_path: Path):
    # Regression: an idle keep-alive connection (boto3 keeps them) held the stop for the whole
    # grace period, because the draining scope was never entered.
    async with open_broker(broker_config(tmp_path)) as daemon:
        api = address(daemon, "api")
        stream = await trio.open_tcp_stream(*api)
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 17\r\n\r\nAction=ListQueues"
        )
        reply = await stream.receive_some(65536)
        assert reply.startswith(b"HTTP/1.1 200 ")
        started = trio.current_time()
        daemon.request_stop()
        with trio.fail_after(5):
            while await stream.receive_some(65536):
                pass
        await stream.aclose()
        assert trio.current_time() - started < daemon.config.lifecycle.grace_period_seconds


async def test_a_long_poll_in_flight_returns_at_shutdown(tmp_path: Path):
    async with open_broker(broker_config(tmp_path)) as daemon:
        api = address(daemon, "api")
        await call_json(api, "CreateQueue", {"QueueName": "polled"})
        url = f"http://{api[0]}:{api[1]}/000000000000/polled"
        results: list[tuple[int, object]] = []
        answered = trio.Event()

        async def poll() -> None:
            status, _, body = await call_json(
                api, "ReceiveMessage", {"QueueUrl": url, "WaitTimeSeconds": 20}
            )
            results.append((status, body))
            answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.2)
            daemon.request_stop()
            with trio.fail_after(5):
                await answered.wait()
        assert results == [(200, {})]


async def test_queue_urls_follow_the_host_header_or_public_url(tmp_path: Path):
    async with open_broker(broker_config(tmp_path / "a")) as daemon:
        payload = b'{"QueueName": "hosted"}'
        reply = await raw_exchange(
            address(daemon, "api"),
            b"POST / HTTP/1.1\r\nHost: sqs.internal:8443\r\nConnection: close\r\n"
            b"Content-Type: application/x-amz-json-1.0\r\nX-Amz-Target: AmazonSQS.CreateQueue\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload),
        )
        assert reply.startswith(b"HTTP/1.1 200 ")
        reply = reply.partition(b"\r\n\r\n")[2]
        assert json.loads(reply)["QueueUrl"] == "http://sqs.internal:8443/000000000000/hosted"
    config = broker_config(tmp_path / "b", api={"public_url": "https://queues.example.com"})
    async with open_broker(config) as daemon:
        status, _, body = await call_json(
            address(daemon, "api"), "CreateQueue", {"QueueName": quote("public")}
        )
        assert status == 200
        assert body == {"QueueUrl": "https://queues.example.com/000000000000/public"}


# ---------------------------------------------------------------------- no input crashes it

_ACTIONS = sorted(SQS.operations)
_URL = "http://127.0.0.1/000000000000/fuzzed"
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.sampled_from(["", _URL, "fuzzed", "All", ".*", "String", "Binary.x", "AQID", "\x00"])
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "QueueUrl",
                    "QueueName",
                    "MessageBody",
                    "Entries",
                    "Id",
                    "ReceiptHandle",
                    "Attributes",
                    "MessageAttributes",
                    "DataType",
                    "StringValue",
                    "BinaryValue",
                    "VisibilityTimeout",
                    "MaxNumberOfMessages",
                    "WaitTimeSeconds",
                    "AttributeNames",
                    "MessageAttributeNames",
                    "Tags",
                    "TagKeys",
                    "Label",
                    "Actions",
                    "AWSAccountIds",
                    "MessageGroupId",
                    "MessageDeduplicationId",
                    "DelaySeconds",
                    "NextToken",
                    "MaxResults",
                    "MessageSystemAttributes",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
_form_keys = st.sampled_from(
    [
        "Action",
        "QueueUrl",
        "QueueName",
        "MessageBody",
        "Attribute.1.Name",
        "Attribute.1.Value",
        "AttributeName.1",
        "MessageAttribute.1.Name",
        "MessageAttribute.1.Value.DataType",
        "MessageAttribute.1.Value.StringValue",
        "MessageAttribute.1.Value.BinaryValue",
        "SendMessageBatchRequestEntry.1.Id",
        "SendMessageBatchRequestEntry.1.MessageBody",
        "SendMessageBatchRequestEntry.2.Id",
        "DeleteMessageBatchRequestEntry.1.ReceiptHandle",
        "Entries.1.Id",
        "ReceiptHandle",
        "VisibilityTimeout",
        "MaxNumberOfMessages",
        "Tag.1.Key",
        "Tag.1.Value",
        "TagKey.1",
        "Label",
        "ActionName.1",
        "AWSAccountId.1",
        "Attribute.0.Name",
        "Attribute.x.Name",
        "MaxResults",
        "NextToken",
    ]
)
_form_values = st.sampled_from(["", _URL, "fuzzed", "1", "-1", "99999999999", "All", "x y"]) | (
    st.sampled_from(_ACTIONS)
)


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerThread]:
    with BrokerThread(broker_config(tmp_path_factory.mktemp("fuzz"))) as broker:
        broker.client("json").create_queue(QueueName="fuzzed")
        yield broker


def _handle(broker: BrokerThread, request: Request) -> int:
    frontend = broker.app.frontend
    assert frontend is not None
    response = broker.call(frontend.handle, request)
    return response.status


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=st.sampled_from(_ACTIONS), body=_json_values)
def test_no_json_request_crashes_the_broker(fuzz_target, action, body):
    request = Request(
        method=b"POST",
        target=b"/",
        headers=[
            (b"host", b"127.0.0.1"),
            (b"content-type", JSON.encode()),
            (b"x-amz-target", f"AmazonSQS.{action}".encode()),
        ],
        body=json.dumps(body).encode(),
        client=("127.0.0.1", 1),
    )
    assert _handle(fuzz_target, request) < 500


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=st.sampled_from(_ACTIONS), fields=st.lists(st.tuples(_form_keys, _form_values)))
def test_no_form_request_crashes_the_broker(fuzz_target, action, fields):
    body = urlencode([("Action", action), *fields]).encode()
    request = Request(
        method=b"POST",
        target=b"/",
        headers=[(b"host", b"127.0.0.1"), (b"content-type", FORM.encode())],
        body=body,
        client=("127.0.0.1", 1),
    )
    assert _handle(fuzz_target, request) < 500


def test_request_ids_are_distinct_uuid4_shaped_and_differ_between_sources():
    ids = request_ids()
    issued = [ids() for _ in range(1000)]
    assert len(set(issued)) == len(issued)
    for value in issued[:10]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    other = request_ids()()
    assert other[:24] != issued[0][:24]  # 74 random bits apart: equal once in 2**74


async def test_the_peer_address_and_transport_reach_the_queue_policy(api):
    status, _, created = await call_json(api, "CreateQueue", {"QueueName": "by-address"})
    assert status == 200
    url = created["QueueUrl"]  # type: ignore[index]

    async def deny_when(condition: dict[str, object]) -> str:
        statement = {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "sqs:SendMessage",
            "Resource": "*",
            "Condition": condition,
        }
        policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
        attributes = {"QueueUrl": url, "Attributes": {"Policy": policy}}
        assert (await call_json(api, "SetQueueAttributes", attributes))[0] == 200
        _, headers, _ = await call_json(api, "SendMessage", {"QueueUrl": url, "MessageBody": "x"})
        return headers.get("x-amzn-query-error", "sent").split(";")[0]

    assert await deny_when({"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}) == "AccessDenied"
    assert await deny_when({"NotIpAddress": {"aws:SourceIp": "127.0.0.0/8"}}) == "sent"
    # Plain HTTP, and an anonymous caller has no principal.
    assert await deny_when({"Bool": {"aws:SecureTransport": "false"}}) == "AccessDenied"
    assert await deny_when({"Null": {"aws:PrincipalArn": "true"}}) == "AccessDenied"


# ---------------------------------------------------------------------- unchecked outputs

NORMAL_RESULTS = {
    "SendMessage": {"MessageId": "m-1", "MD5OfMessageBody": "0" * 32},
    "SendMessageBatch": {
        "Successful": [{"Id": "a", "MessageId": "m-1", "MD5OfMessageBody": "0" * 32}],
        "Failed": [{"Id": "b", "SenderFault": True, "Code": "InvalidParameterValue"}],
    },
    "ReceiveMessage": {
        "Messages": [
            {
                "MessageId": "m-1",
                "ReceiptHandle": "h",
                "MD5OfBody": "0" * 32,
                "Body": "x",
                "Attributes": {"SentTimestamp": "1"},
            }
        ]
    },
    "DeleteMessageBatch": {"Successful": [{"Id": "a"}], "Failed": []},
}


@pytest.mark.parametrize("action", sorted(NORMAL_RESULTS))
def test_an_unchecked_output_answers_what_the_checked_one_does(action, monkeypatch):
    assert action in frontend.UNCHECKED_OUTPUTS
    result = NORMAL_RESULTS[action]
    checked = json_protocol.encode_response(SQS, action, result, request_id="r")
    for check_every_output in (False, True):
        monkeypatch.setattr(frontend, "CHECK_EVERY_OUTPUT", check_every_output)
        unchecked = frontend.JSON_SQS.response(action, result, "r")
        assert (unchecked.status, unchecked.headers) == (checked.status, checked.headers)
        assert json.loads(unchecked.body) == json.loads(checked.body)


def test_under_the_test_suite_a_result_out_of_normal_form_fails(monkeypatch):
    assert frontend.CHECK_EVERY_OUTPUT  # tests/conftest.py sets WHARF_CHECK_OUTPUTS=1
    with_none = {"MessageId": "m-1", "MD5OfMessageBody": "0" * 32, "SequenceNumber": None}
    with pytest.raises(AwsError) as excinfo:
        frontend.JSON_SQS.response("SendMessage", with_none, "r")
    assert excinfo.value.code == "InternalFailure"
    monkeypatch.setattr(frontend, "CHECK_EVERY_OUTPUT", False)
    assert b"null" in frontend.JSON_SQS.response("SendMessage", with_none, "r").body


async def test_debug_level_logs_one_line_per_api_request(tmp_path: Path) -> None:
    async with running(SPEC, broker_config(tmp_path), level="debug") as daemon:
        addr = address(daemon, "api")
        await call_json(addr, "ListQueues", {})
        await call_json(addr, "GetQueueUrl", {"QueueName": "absent"})
        await call_query(addr, {"Action": "ListTopics"})
        output = daemon.log_output.getvalue()  # type: ignore[attr-defined]
    lines = [line for line in output.splitlines() if "event=api.request" in line]
    assert len(lines) == 3
    assert "service=sqs action=ListQueues status=200 error=null" in lines[0]
    assert "action=GetQueueUrl status=400 error=AWS.SimpleQueueService.NonExistentQueue" in lines[1]
    assert "service=sns action=ListTopics status=200" in lines[2]
    assert all("client=127.0.0.1" in line and "request_id=" in line for line in lines)


async def test_info_level_logs_no_line_per_request(tmp_path: Path) -> None:
    async with running(SPEC, broker_config(tmp_path), level="info") as daemon:
        await call_json(address(daemon, "api"), "ListQueues", {})
        output = daemon.log_output.getvalue()  # type: ignore[attr-defined]
    assert "api.request" not in output


# ---------------------------------------------------------------------- browsers and methods


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "DELETE"])
async def test_methods_other_than_get_and_post_run_no_action(api, method):
    create = {"Action": "CreateQueue", "Version": "2012-11-05", "QueueName": "by-method"}
    status, headers, _ = await request(api, method, f"/?{urlencode(create)}")
    assert status == 405
    assert headers["allow"] == "GET, POST"
    status, _, document = await call_query(
        api, {"Action": "ListQueues", "Version": "2012-11-05"}, method="GET"
    )
    assert status == 200
    assert document.findtext("q:ListQueuesResult/q:QueueUrl", namespaces=NS) is None


@pytest.mark.parametrize(
    ("site", "mode", "status"),
    [
        ("none", "navigate", 200),  # typed, pasted or bookmarked: the person's own choice
        ("cross-site", "no-cors", 403),  # <img src> on another site's page
        ("same-origin", "cors", 403),  # a page whose name was rebound to 127.0.0.1
    ],
)
async def test_an_anonymous_broker_serves_a_url_a_person_opens_in_a_browser(
    api, site, mode, status
):
    # An SNS SubscribeURL is meant to be pasted into a browser's address bar.
    query = urlencode({"Action": "ListQueues", "Version": "2012-11-05"})
    headers = [("sec-fetch-site", site), ("sec-fetch-mode", mode), ("sec-fetch-dest", "document")]
    answer, _, _ = await request(api, "GET", f"/?{query}", headers=headers)
    assert answer == status


@pytest.mark.parametrize(
    "browser_header",
    [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")],
)
async def test_an_anonymous_broker_refuses_what_a_browser_sends(api, browser_header):
    # A page can post this form to a loopback port without a CORS preflight.
    form = urlencode({"Action": "CreateQueue", "Version": "2012-11-05", "QueueName": "csrf"})
    status, _, reply = await request(
        api,
        "POST",
        "/",
        headers=[("content-type", FORM), browser_header],
        body=form.encode(),
    )
    assert status == 403
    assert query_error(ET.fromstring(reply)) == ("AccessDenied", "Sender")
    status, _, document = await call_query(
        api, {"Action": "GetQueueUrl", "Version": "2012-11-05", "QueueName": "csrf"}
    )
    assert status == 400  # never created
    assert query_error(document)[0] == "AWS.SimpleQueueService.NonExistentQueue"


def test_a_url_named_by_a_link_local_address_encodes_its_zone() -> None:
    """HTTP/1.0 without Host, to fe80::1%eth0: the URL is ``http://[fe80::1%25eth0]:9324``
    (RFC 6874), not ``[fe80::1%eth0]``, which URL parsers refuse or read as another zone."""
    serving = object.__new__(frontend.Frontend)  # _base_url reads public_url and scheme only
    serving.public_url = ""
    serving.scheme = "http"
    request = Request(
        method=b"POST",
        target=b"/",
        headers=[],
        body=b"",
        client=("fe80::2%eth0", 50000),
        local=("fe80::1%eth0", 9324),
    )
    assert serving._base_url(request) == "http://[fe80::1%25eth0]:9324"
