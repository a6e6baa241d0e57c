"""awsJson 1.0 (SQS) codec, checked against botocore's serializer, parser and client."""

from __future__ import annotations

import json
from typing import Any

import botocore.config
import botocore.parsers
import botocore.serialize
import botocore.session
import msgspec
import pytest
from botocore.awsrequest import AWSResponse, HeadersDict
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proto.aws import json_protocol
from proto.aws.errors import COMMON_ERRORS, AwsError, common_error
from proto.aws.json_protocol import CONTENT_TYPE, SQS_ERRORS, sqs_error
from proto.aws.shapes import DecodedRequest
from proto.aws.sqs_shapes import OPERATIONS, SQS

ACTIONS = sorted(OPERATIONS)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):
        yield self._body


def fake_client(respond):
    """A real botocore SQS client whose HTTP layer is ``respond(request) -> EncodedResponse``."""
    session = botocore.session.Session()
    client = session.create_client(
        "sqs",
        region_name="us-east-1",
        endpoint_url="http://wharf.test:9324",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )

    def before_send(request, **_: Any) -> AWSResponse:
        encoded = respond(request)
        return AWSResponse(
            request.url, encoded.status, HeadersDict(encoded.headers), _Raw(encoded.body)
        )

    client.meta.events.register("before-send.sqs", before_send)
    return client


# -- errors ------------------------------------------------------------------------------


def test_error_table_covers_exactly_the_modeled_errors(sqs_model):
    assert set(SQS_ERRORS) == {shape.name for shape in sqs_model.error_shapes}


def test_error_matches_the_sqs_developer_guide_example():
    # "Interpreting Amazon SQS JSON API responses", JSON error response structure.
    response = json_protocol.encode_error(
        SQS, sqs_error("QueueDoesNotExist", "The specified queue does not exist."), request_id="r"
    )
    assert response.status == 400
    assert ("x-amzn-query-error", "AWS.SimpleQueueService.NonExistentQueue;Sender") in (
        response.headers
    )
    assert ("Content-Type", "application/x-amz-json-1.0") in response.headers
    assert json.loads(response.body) == {
        "__type": "com.amazonaws.sqs#QueueDoesNotExist",
        "message": "The specified queue does not exist.",
    }


@pytest.mark.parametrize("shape", sorted(SQS_ERRORS))
def test_botocore_raises_the_modeled_exception_with_the_legacy_code(shape):
    error = sqs_error(shape, f"{shape} happened")
    client = fake_client(lambda request: json_protocol.encode_error(SQS, error, request_id="req-1"))
    with pytest.raises(client.exceptions.ClientError) as caught:
        client.list_queues()
    exc = caught.value
    # botocore's handlers._handle_sqs_compatible_error maps QueryErrorCode back to the class.
    assert type(exc) is getattr(client.exceptions, shape)
    assert exc.response["Error"]["Code"] == SQS_ERRORS[shape][0]
    assert exc.response["Error"]["Message"] == f"{shape} happened"
    assert exc.response["Error"]["Type"] == "Sender"
    assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == SQS_ERRORS[shape][1]
    assert exc.response["ResponseMetadata"]["RequestId"] == "req-1"


@pytest.mark.parametrize("code", sorted(c for c in COMMON_ERRORS if COMMON_ERRORS[c][1] < 500))
def test_botocore_reports_common_error_codes(code):
    error = common_error(code, "nope")
    client = fake_client(lambda request: json_protocol.encode_error(SQS, error, request_id="r"))
    with pytest.raises(client.exceptions.ClientError) as caught:
        client.list_queues()
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == COMMON_ERRORS[code][1]


@given(
    code=st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=";#:"), min_size=1
    ),
    message=st.text(),
    status=st.integers(400, 499),
    sender=st.booleans(),
)
def test_any_error_parses_back_in_botocore(code, message, status, sender):
    error = AwsError(code, message, status=status, sender_fault=sender, shape="SomeShape")
    response = json_protocol.encode_error(SQS, error, request_id="r")
    parsed = botocore.parsers.create_parser("json").parse(
        {"body": response.body, "headers": HeadersDict(response.headers), "status_code": status},
        None,
    )
    assert parsed["Error"]["Code"] == code
    assert parsed["Error"]["Message"] == message
    assert parsed["Error"]["QueryErrorCode"] == "SomeShape"
    assert parsed["Error"]["Type"] == ("Sender" if sender else "Receiver")


def test_sqs_error_rejects_unknown_shapes():
    with pytest.raises(KeyError):
        sqs_error("NoSuchThing", "x")


# -- requests ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(action=st.sampled_from(ACTIONS), data=st.data())
def test_decodes_what_botocore_serializes(sqs_model, aws_values, action, data):
    params = data.draw(aws_values(OPERATIONS[action].input))
    request = botocore.serialize.create_serializer(
        "json", include_validation=False
    ).serialize_to_request(params, sqs_model.operation_model(action))
    decoded = json_protocol.decode_request(
        SQS, headers=list(request["headers"].items()), body=request["body"]
    )
    assert decoded == DecodedRequest(action, params)


def test_decodes_an_example_request():
    body = json.dumps(
        {
            "QueueUrl": "http://localhost:9324/000000000000/jobs",
            "MessageBody": "hello",
            "DelaySeconds": 5,
            "MessageAttributes": {"bin": {"DataType": "Binary", "BinaryValue": "AAEC"}},
            "NotInTheModel": 1,
            "MessageGroupId": None,
        }
    ).encode()
    decoded = json_protocol.decode_request(
        SQS, headers=[(b"X-Amz-Target", b"AmazonSQS.SendMessage")], body=body
    )
    assert decoded.action == "SendMessage"
    assert decoded.params == {
        "QueueUrl": "http://localhost:9324/000000000000/jobs",
        "MessageBody": "hello",
        "DelaySeconds": 5,
        "MessageAttributes": {"bin": {"DataType": "Binary", "BinaryValue": b"\x00\x01\x02"}},
    }


def send(body: bytes) -> DecodedRequest:
    return json_protocol.decode_request(
        SQS, headers=[("X-Amz-Target", "AmazonSQS.SendMessage")], body=body
    )


@pytest.mark.parametrize(
    ("escaped", "text"),
    [
        ("a\\ud800b", "a\ud800b"),  # a high surrogate, then no low one
        ("\\uDC00", "\udc00"),  # a low one alone
        ("\\ud800\\ud800\\ude00", "\ud800\U00010200"),  # one lone, then a pair
        ("\\\\ud800 \\ud800", "\\ud800 \ud800"),  # an escaped backslash, then one
    ],
)
def test_a_lone_surrogate_escape_is_decoded_not_refused(escaped, text):
    # RFC 8259 §8.2: valid JSON (JavaScript's JSON.stringify writes it); the service refuses
    # the character, with its own error, not the protocol.
    body = f'{{"QueueUrl": "u", "MessageBody": "{escaped}", "DelaySeconds": 1}}'.encode()
    assert send(body) == DecodedRequest(
        "SendMessage", {"QueueUrl": "u", "MessageBody": text, "DelaySeconds": 1}
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"QueueUrl": "u", "MessageBody": "\\ud800"',  # truncated
        b'{"QueueUrl": "u", "MessageBody": "\\ud800", "DelaySeconds": NaN}',
        b'{"QueueUrl": "u", "MessageBody": "\\ud800", "DelaySeconds": -Infinity}',
        b'{"QueueUrl": "u", "MessageBody": "\\ud800", "DelaySeconds": 1e400}',
        b'{"QueueUrl": "u", "MessageBody": "\\ud800\xff"}',  # not UTF-8
        b'{"QueueUrl": "u", "MessageBody": "\\ud800\x01"}',  # a raw control character
        b'{"QueueUrl": "u", "MessageBody": "\\ud800", "DelaySeconds": "1"}',  # the shape's
        b'{"QueueUrl": "\\ud800"}' + b"]" * 2000,
        b'{"a": "\\ud800", "b": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_a_body_with_a_lone_surrogate_is_otherwise_held_to_the_same_rules(body):
    with pytest.raises(AwsError) as caught:
        send(body)
    assert caught.value.code == "SerializationException"


_WITH_SURROGATES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(st.characters(categories=["Cs", "Ll"])),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["QueueUrl", "MessageBody", "Entries"]), children)
    ),
    max_leaves=8,
)


@given(_WITH_SURROGATES)
@example(value="a\ud800b")
@example(value=["\udc00", {"MessageBody": "\ud800"}])
@example(value="\ud800\udc00")  # a pair, escaped apart: U+10000
def test_decoding_with_lone_surrogates_is_total_and_faithful(value):
    # json.dumps escapes every lone surrogate, as JSON.stringify does.
    body = json.dumps({"QueueUrl": "u", "Value": value, "MessageBody": value}).encode()
    if value is None or isinstance(value, str):
        # As the standard decoder reads it: an escaped high and low surrogate side by side
        # are one character (RFC 8259 7), lone ones stay lone.
        expected = json.loads(json.dumps(value))
        assert send(body).params.get("MessageBody") == expected  # null members are dropped
    else:  # not the shape's string
        with pytest.raises(AwsError) as caught:
            send(body)
        assert caught.value.code == "SerializationException"


def test_an_error_that_echoes_a_lone_surrogate_is_still_json_botocore_reads():
    error = sqs_error("ReceiptHandleIsInvalid", 'The input receipt handle "h\ud800" is not ...')
    response = json_protocol.encode_error(SQS, error, request_id="r")
    assert b"h\\ud800" in response.body
    assert json.loads(response.body)["message"] == error.message
    parsed = botocore.parsers.create_parser("json").parse(
        {"body": response.body, "headers": HeadersDict(response.headers), "status_code": 404},
        None,
    )
    assert parsed["Error"]["Message"] == error.message


def test_a_batch_answer_that_echoes_a_lone_surrogate_is_still_json():
    result = {
        "Successful": [],
        "Failed": [{"Id": "a", "SenderFault": True, "Code": "C", "Message": "x\udc00"}],
    }
    response = json_protocol.encode_response(SQS, "DeleteMessageBatch", result, request_id="r")
    assert json.loads(response.body) == result


def test_empty_body_is_an_empty_object():
    decoded = json_protocol.decode_request(
        SQS, headers=[("x-amz-target", "AmazonSQS.ListQueues")], body=b""
    )
    assert decoded == DecodedRequest("ListQueues", {})


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([], "MissingAction"),
        ([("X-Amz-Target", "AmazonSQS.NoSuchAction")], "InvalidAction"),
        ([("X-Amz-Target", "DynamoDB_20120810.ListTables")], "InvalidAction"),
        ([("X-Amz-Target", "ListQueues")], "InvalidAction"),
        (
            [("X-Amz-Target", "AmazonSQS.ListQueues"), ("X-Amz-Target", "AmazonSQS.ListQueues")],
            "InvalidAction",
        ),
    ],
)
def test_target_errors(headers, code):
    with pytest.raises(AwsError) as caught:
        json_protocol.decode_request(SQS, headers=headers, body=b"{}")
    assert caught.value.code == code
    assert caught.value.status_hint == 400


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'"x"',
        b"\xff\xfe",
        b'{"QueueUrl": 5}',
        b'{"QueueUrl": "u", "MessageBody": "b", "DelaySeconds": "5"}',
        b'{"QueueUrl": "u", "MessageBody": "b", "DelaySeconds": true}',
        b'{"QueueUrl": "u", "MessageBody": "b", "DelaySeconds": 1.5}',
        b'{"QueueUrl": "u", "MessageAttributes": []}',
        b'{"QueueUrl": "u", "MessageAttributes": {"a": {"DataType": "B", "BinaryValue": "!!"}}}',
    ],
)
def test_body_errors_are_serialization_exceptions(body):
    with pytest.raises(AwsError) as caught:
        json_protocol.decode_request(
            SQS, headers=[("X-Amz-Target", "AmazonSQS.SendMessage")], body=body
        )
    assert caught.value.code == "SerializationException"
    assert caught.value.status_hint == 400


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=30), children, max_size=4)
    ),
    max_leaves=12,
)


@given(action=st.sampled_from(ACTIONS), body=st.binary() | _JSON.map(msgspec.json.encode))
def test_decoder_is_total(action, body):
    # Any body: a decoded request or an AwsError, never another exception.
    try:
        json_protocol.decode_request(
            SQS, headers=[("X-Amz-Target", f"AmazonSQS.{action}")], body=body
        )
    except AwsError:
        pass


# -- responses ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(action=st.sampled_from([a for a in ACTIONS if OPERATIONS[a].output]), data=st.data())
def test_botocore_parses_what_we_encode(sqs_model, aws_values, action, data):
    output = OPERATIONS[action].output
    result = data.draw(aws_values(output))
    response = json_protocol.encode_response(SQS, action, result, request_id="rid")
    assert response.status == 200
    parsed = botocore.parsers.create_parser("json").parse(
        {"body": response.body, "headers": HeadersDict(response.headers), "status_code": 200},
        sqs_model.operation_model(action).output_shape,
    )
    assert parsed.pop("ResponseMetadata")["RequestId"] == "rid"
    assert parsed == result


def test_actions_without_output_have_an_empty_body():
    response = json_protocol.encode_response(SQS, "DeleteQueue", None, request_id="r")
    assert (response.status, response.body) == (200, b"")
    assert ("Content-Type", CONTENT_TYPE) in response.headers


def test_empty_receive_has_no_messages_key():
    # An empty receive is {} (LocalStack snapshot "empty-fifo-receive", recorded on AWS).
    response = json_protocol.encode_response(SQS, "ReceiveMessage", {}, request_id="r")
    assert response.body == b"{}"


@pytest.mark.parametrize(
    ("action", "result"),
    [
        ("SendMessage", {"Md5OfMessageBody": "x"}),  # the msgspec rename="pascal" trap
        ("SendMessage", {"MessageId": 5}),
        ("ReceiveMessage", {"Messages": [{"Attributes": {"a": 1}}]}),
        ("DeleteQueue", {"Unexpected": "x"}),
        ("NoSuchAction", {}),
    ],
)
def test_results_that_do_not_fit_are_internal_failures(action, result):
    with pytest.raises(AwsError) as caught:
        json_protocol.encode_response(SQS, action, result, request_id="r")
    assert (caught.value.code, caught.value.status_hint) == ("InternalFailure", 500)


# -- a real client, end to end -----------------------------------------------------------


def test_boto_client_round_trip():
    seen: list[DecodedRequest] = []

    def respond(request):
        decoded = json_protocol.decode_request(
            SQS, headers=list(request.headers.items()), body=request.body
        )
        seen.append(decoded)
        return json_protocol.encode_response(
            SQS,
            decoded.action,
            {"MessageId": "m-1", "MD5OfMessageBody": "abc", "SequenceNumber": None},
            request_id="r",
        )

    client = fake_client(respond)
    out = client.send_message(
        QueueUrl="http://wharf.test:9324/000000000000/jobs",
        MessageBody="hé\r\n",
        MessageAttributes={"blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"}},
    )
    assert out["MessageId"] == "m-1"
    assert "SequenceNumber" not in out
    assert seen == [
        DecodedRequest(
            "SendMessage",
            {
                "QueueUrl": "http://wharf.test:9324/000000000000/jobs",
                "MessageBody": "hé\r\n",
                "MessageAttributes": {"blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"}},
            },
        )
    ]


_PLAIN_CHARACTERS = {"\t", "\n", "\r", *map(chr, range(0x20, 0x80))}


@given(
    st.lists(st.text(max_size=8), max_size=4),
    st.sampled_from(["json", "json-utf8", "msgspec"]),
)
def test_plain_text_promises_only_ascii_from_space_tab_lf_and_cr(texts, encoder):
    if encoder == "msgspec":
        body = msgspec.json.encode({"Entries": texts})
    else:
        body = json.dumps({"Entries": texts}, ensure_ascii=encoder == "json").encode()
    if json_protocol.plain_text(body):
        assert all(set(text) <= _PLAIN_CHARACTERS for text in msgspec.json.decode(body)["Entries"])


@pytest.mark.parametrize(
    ("body", "plain"),
    [
        (b'{"MessageBody": "plain text"}', True),
        (b'{"MessageBody": "tab\\t line\\n quote\\" slash\\/ back\\\\"}', True),
        (b'{"MessageBody": "\\u0041"}', False),  # any \u escape, even of a plain character
        (b'{"MessageBody": "bell\\b"}', False),
        (b'{"MessageBody": "feed\\f"}', False),
        ('{"MessageBody": "caf\u00e9"}'.encode(), False),
    ],
)
def test_plain_text_examples(body, plain):
    assert json_protocol.plain_text(body) is plain
