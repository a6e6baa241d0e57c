"""Query protocol codec (SNS, legacy SQS), checked against botocore's query serializer, its
XML parser, a real SNS client, and request/response samples from the AWS API references."""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

import botocore.config
import botocore.parsers
import botocore.serialize
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest, AWSResponse, HeadersDict
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proto.aws import query_protocol, sigv4
from proto.aws.errors import AwsError, common_error
from proto.aws.json_protocol import sqs_error
from proto.aws.query_protocol import decode_request, encode_error, encode_response, escape_text
from proto.aws.shapes import DecodedRequest
from proto.aws.sns_shapes import ERRORS as SNS_ERRORS
from proto.aws.sns_shapes import OPERATIONS as SNS_OPERATIONS
from proto.aws.sns_shapes import SNS, sns_error
from proto.aws.sqs_shapes import OPERATIONS as SQS_OPERATIONS
from proto.aws.sqs_shapes import SQS
from tests.support.aws_models import legacy_sqs_names

SQS_NS = "http://queue.amazonaws.com/doc/2012-11-05/"
SNS_NS = "http://sns.amazonaws.com/doc/2010-03-31/"


def form_body(params: dict[str, Any]) -> bytes:
    """The body botocore sends for a serialized query request (AWSRequestPreparer)."""
    body = AWSRequest(method="POST", url="http://wharf.test/", data=params).prepare().body
    return body.encode("ascii") if isinstance(body, str) else body


@pytest.fixture(scope="module")
def sqs_legacy_model(sqs_model, make_sqs_query_model):
    return make_sqs_query_model(legacy_sqs_names(sqs_model))


@pytest.fixture(scope="module")
def sqs_plain_query_model(make_sqs_query_model):
    return make_sqs_query_model(None)


# -- requests: botocore's query serializer as the oracle ---------------------------------


def _round_trip(service, model, operations, action, params, normalizers):
    serialized = botocore.serialize.create_serializer(
        "query", include_validation=False
    ).serialize_to_request(params, model.operation_model(action))
    decoded = decode_request(service, body=form_body(serialized["body"]))
    expected = normalizers["maps"](operations[action].input, params)
    assert decoded == DecodedRequest(action, expected)


@settings(max_examples=300, deadline=None)
@given(action=st.sampled_from(sorted(SNS_OPERATIONS)), data=st.data())
def test_decodes_what_botocore_serializes_for_sns(sns_model, aws_values, normalizers, action, data):
    params = data.draw(aws_values(SNS_OPERATIONS[action].input))
    _round_trip(SNS, sns_model, SNS_OPERATIONS, action, params, normalizers)


@settings(max_examples=300, deadline=None)
@given(action=st.sampled_from(sorted(SQS_OPERATIONS)), data=st.data())
def test_decodes_legacy_sqs_query_requests(sqs_legacy_model, aws_values, normalizers, action, data):
    params = data.draw(aws_values(SQS_OPERATIONS[action].input))
    _round_trip(SQS, sqs_legacy_model, SQS_OPERATIONS, action, params, normalizers)


@settings(max_examples=300, deadline=None)
@given(action=st.sampled_from(sorted(SQS_OPERATIONS)), data=st.data())
def test_decodes_todays_sqs_model_serialized_as_query(
    sqs_plain_query_model, aws_values, normalizers, action, data
):
    # The brief's oracle: botocore's JSON-era SQS model with protocol=query. Without
    # locationName every member travels under its own name (Attributes.1.Name, Entries.1.Id).
    params = data.draw(aws_values(SQS_OPERATIONS[action].input))
    _round_trip(SQS, sqs_plain_query_model, SQS_OPERATIONS, action, params, normalizers)


def test_query_and_json_decoders_agree(sqs_model, sqs_legacy_model):
    from proto.aws import json_protocol

    params = {
        "QueueUrl": "http://q/000000000000/a",
        "Entries": [
            {
                "Id": "1",
                "MessageBody": "a b+c&d",
                "DelaySeconds": 0,
                "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "1.5"}},
            },
            {
                "Id": "2",
                "MessageBody": "x",
                "MessageSystemAttributes": {
                    "AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1"}
                },
            },
        ],
    }
    query = botocore.serialize.create_serializer(
        "query", include_validation=False
    ).serialize_to_request(params, sqs_legacy_model.operation_model("SendMessageBatch"))
    as_json = botocore.serialize.create_serializer(
        "json", include_validation=False
    ).serialize_to_request(params, sqs_model.operation_model("SendMessageBatch"))
    from_query = decode_request(SQS, body=form_body(query["body"]))
    from_json = json_protocol.decode_request(
        SQS, headers=list(as_json["headers"].items()), body=as_json["body"]
    )
    assert from_query == from_json == DecodedRequest("SendMessageBatch", params)


# -- requests: samples from the AWS API references ---------------------------------------


def test_sqs_api_reference_send_message_sample():
    # SQS API Reference (query API), SendMessage "Sample Request".
    body = (
        b"Action=SendMessage&MessageBody=This+is+a+test+message"
        b"&MessageAttribute.1.Name=my_attribute_name_1"
        b"&MessageAttribute.1.Value.StringValue=my_attribute_value_1"
        b"&MessageAttribute.1.Value.DataType=String"
        b"&MessageAttribute.2.Name=my_attribute_name_2"
        b"&MessageAttribute.2.Value.StringValue=my_attribute_value_2"
        b"&MessageAttribute.2.Value.DataType=String"
        b"&Expires=2020-05-05T22%3A52%3A43PST&Version=2012-11-05"
    )
    assert decode_request(SQS, body=body) == DecodedRequest(
        "SendMessage",
        {
            "MessageBody": "This is a test message",
            "MessageAttributes": {
                "my_attribute_name_1": {
                    "StringValue": "my_attribute_value_1",
                    "DataType": "String",
                },
                "my_attribute_name_2": {
                    "StringValue": "my_attribute_value_2",
                    "DataType": "String",
                },
            },
        },
    )


def test_sqs_api_reference_send_message_batch_sample_as_get():
    # SQS API Reference (query API), SendMessageBatch "Sample Request": a GET on the queue URL.
    query = (
        "Action=SendMessageBatch"
        "&SendMessageBatchRequestEntry.1.Id=test_msg_001"
        "&SendMessageBatchRequestEntry.1.MessageBody=test%20message%20body%201"
        "&SendMessageBatchRequestEntry.2.Id=test_msg_002"
        "&SendMessageBatchRequestEntry.2.MessageBody=test%20message%20body%202"
        "&SendMessageBatchRequestEntry.2.DelaySeconds=60"
        "&SendMessageBatchRequestEntry.2.MessageAttribute.1.Name=test_attribute_name_1"
        "&SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.StringValue=test_attribute_value_1"
        "&SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.DataType=String"
        "&Version=2012-11-05"
    )
    assert decode_request(SQS, query=query) == DecodedRequest(
        "SendMessageBatch",
        {
            "Entries": [
                {"Id": "test_msg_001", "MessageBody": "test message body 1"},
                {
                    "Id": "test_msg_002",
                    "MessageBody": "test message body 2",
                    "DelaySeconds": 60,
                    "MessageAttributes": {
                        "test_attribute_name_1": {
                            "StringValue": "test_attribute_value_1",
                            "DataType": "String",
                        }
                    },
                },
            ]
        },
    )


def test_sqs_api_reference_receive_and_set_attribute_samples():
    receive = decode_request(
        SQS,
        query="Action=ReceiveMessage&MaxNumberOfMessages=5&VisibilityTimeout=15"
        "&AttributeName=All&MessageAttributeName.1=All&Version=2012-11-05",
    )
    assert receive.params == {
        "AttributeNames": ["All"],
        "MessageAttributeNames": ["All"],
        "MaxNumberOfMessages": 5,
        "VisibilityTimeout": 15,
    }
    create = decode_request(
        SQS,
        body=b"Action=CreateQueue&QueueName=MyQueue&Attribute.1.Name=VisibilityTimeout"
        b"&Attribute.1.Value=40&Tag.Key=QueueType&Tag.Value=Production&Version=2012-11-05",
    )
    assert create.params == {
        "QueueName": "MyQueue",
        "Attributes": {"VisibilityTimeout": "40"},
        "tags": {"QueueType": "Production"},
    }


def test_boto2_and_kombu_unindexed_forms():
    # boto 2 SQSConnection.set_queue_attribute / get_queue_attributes and kombu's hand-built
    # SQS client send one attribute without an index.
    decoded = decode_request(
        SQS, body=b"Action=SetQueueAttributes&Attribute.Name=VisibilityTimeout&Attribute.Value=60"
    )
    assert decoded.params == {"Attributes": {"VisibilityTimeout": "60"}}
    decoded = decode_request(SQS, body=b"Action=GetQueueAttributes&AttributeName=All")
    assert decoded.params == {"AttributeNames": ["All"]}
    # botocore's empty list stays empty.
    decoded = decode_request(SQS, body=b"Action=GetQueueAttributes&AttributeName=")
    assert decoded.params == {"AttributeNames": []}


def test_sns_api_reference_publish_sample():
    # SNS API Reference, Publish example with message attributes.
    body = (
        b"Action=Publish&TopicArn=arn%3Aaws%3Asns%3Aus-west-2%3A123456789012%3AMyTopic"
        b"&Message=%3CmessageToPublish%3E"
        b"&MessageAttributes.entry.1.Name=Test"
        b"&MessageAttributes.entry.1.Value.DataType=String"
        b"&MessageAttributes.entry.1.Value.StringValue=Test%20Value"
        b"&MessageAttributes.entry.2.Name=bin"
        b"&MessageAttributes.entry.2.Value.DataType=Binary"
        b"&MessageAttributes.entry.2.Value.BinaryValue=AAEC"
        b"&Version=2010-03-31"
    )
    assert decode_request(SNS, body=body) == DecodedRequest(
        "Publish",
        {
            "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
            "Message": "<messageToPublish>",
            "MessageAttributes": {
                "Test": {"DataType": "String", "StringValue": "Test Value"},
                "bin": {"DataType": "Binary", "BinaryValue": b"\x00\x01\x02"},
            },
        },
    )
    subscribe = decode_request(
        SNS,
        body=b"Action=Subscribe&TopicArn=t&Protocol=sqs&Endpoint=e&ReturnSubscriptionArn=TRUE"
        b"&Attributes.entry.1.key=RawMessageDelivery&Attributes.entry.1.value=true"
        b"&Tags.member.1.Key=ignored",
    )
    assert subscribe.params == {
        "TopicArn": "t",
        "Protocol": "sqs",
        "Endpoint": "e",
        "Attributes": {"RawMessageDelivery": "true"},
        "ReturnSubscriptionArn": True,
    }


# -- request errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "MissingAction"),
        (b"Version=2012-11-05", "MissingAction"),
        (b"Action=", "MissingAction"),
        (b"Action=CreateTopic", "InvalidAction"),  # an SNS action sent to SQS
        (b"Action=ListQueues&Action=ListQueues", "InvalidQueryParameter"),
        (b"Action=ListQueues&MaxResults=1&MaxResults=2", "InvalidQueryParameter"),
        (b"Action=ListQueues&MaxResults=ten", "InvalidParameterValue"),
        (b"Action=ListQueues&MaxResults=123456789012345678901", "InvalidParameterValue"),
        (b"Action=ListQueues&MaxResults.1=1", "InvalidQueryParameter"),
        (b"Action=GetQueueAttributes&AttributeName.0=All", "InvalidQueryParameter"),
        (b"Action=GetQueueAttributes&AttributeName.x=All", "InvalidQueryParameter"),
        (b"Action=GetQueueAttributes&AttributeName.01=All", "InvalidQueryParameter"),
        (b"Action=SetQueueAttributes&Attribute.1.Value=1", "InvalidQueryParameter"),
        (b"Action=SetQueueAttributes&Attribute.1.Name=a", "InvalidQueryParameter"),
        (b"Action=SetQueueAttributes&Attribute.1=a", "InvalidQueryParameter"),
        (
            b"Action=SendMessage&MessageAttribute.1.Name=b&MessageAttribute.1.Value.DataType=Binary"
            b"&MessageAttribute.1.Value.BinaryValue=%21%21",
            "InvalidParameterValue",
        ),
        (b"Action=ListQueues&QueueNamePrefix=%FF", "InvalidQueryParameter"),
        (
            b"Action=ListQueues&" + b"&".join(b"k%d=v" % i for i in range(6000)),
            "InvalidQueryParameter",
        ),
        # A million-dot key would build a tree of a million nodes (a gigabyte) for one field.
        (b"Action=ListQueues&" + b"." * 1_000_000 + b"=1", "InvalidQueryParameter"),
        (b"Action=ListQueues&" + b"a." * 16 + b"b=1", "InvalidQueryParameter"),
    ],
)
def test_sqs_request_errors(body, code):
    with pytest.raises(AwsError) as caught:
        decode_request(SQS, body=body)
    assert caught.value.code == code
    assert caught.value.status_hint == 400


def test_sns_invalid_boolean_is_invalid_parameter():
    with pytest.raises(AwsError) as caught:
        decode_request(SNS, body=b"Action=Subscribe&ReturnSubscriptionArn=yes")
    assert (caught.value.code, caught.value.shape) == (
        "InvalidParameter",
        "InvalidParameterException",
    )


def test_key_in_both_query_and_body_is_rejected():
    with pytest.raises(AwsError):
        decode_request(SQS, query="Action=ListQueues", body=b"Action=ListQueues")


_KEY = st.lists(
    st.sampled_from(["Action", "Attribute", "Name", "Value", "1", "2", "entry", "member", "x", ""]),
    min_size=1,
    max_size=5,
).map(".".join)


@given(
    service=st.sampled_from([SQS, SNS]),
    action=st.sampled_from(sorted(SQS_OPERATIONS) + sorted(SNS_OPERATIONS)),
    fields=st.lists(st.tuples(_KEY, st.text(max_size=5)), max_size=12),
    junk=st.binary(max_size=40),
)
@example(service=SQS, action="SetQueueAttributes", fields=[("Attribute.1.Name.x", "a")], junk=b"")
def test_decoder_is_total(service, action, fields, junk):
    body = urlencode([("Action", action), *fields]).encode() + b"&" + junk
    try:
        decode_request(service, body=body)
    except AwsError:
        pass


# -- responses: botocore's XML parser as the oracle --------------------------------------


def _parse(model, action, response):
    parser = botocore.parsers.create_parser("query")
    parsed = parser.parse(
        {"body": response.body, "headers": HeadersDict(response.headers), "status_code": 200},
        model.operation_model(action).output_shape,
    )
    assert parsed.pop("ResponseMetadata")["RequestId"] == "rid-1"
    return parsed


@settings(max_examples=300, deadline=None)
@given(action=st.sampled_from([a for a, o in SNS_OPERATIONS.items() if o.output]), data=st.data())
def test_botocore_parses_our_sns_responses(sns_model, aws_values, normalizers, action, data):
    output = SNS_OPERATIONS[action].output
    result = data.draw(aws_values(output, xml=True))
    response = encode_response(SNS, action, result, request_id="rid-1")
    assert _parse(sns_model, action, response) == normalizers["flattened"](output, result)


@settings(max_examples=300, deadline=None)
@given(action=st.sampled_from([a for a, o in SQS_OPERATIONS.items() if o.output]), data=st.data())
def test_botocore_parses_our_sqs_responses(sqs_legacy_model, aws_values, normalizers, action, data):
    output = SQS_OPERATIONS[action].output
    result = data.draw(aws_values(output, xml=True))
    response = encode_response(SQS, action, result, request_id="rid-1")
    assert _parse(sqs_legacy_model, action, response) == normalizers["flattened"](output, result)


def _tree(xml: bytes | str) -> Any:
    def walk(element: ET.Element) -> Any:
        children = [walk(child) for child in element]
        return (element.tag, children or (element.text or "").strip())

    return walk(ET.fromstring(xml))


def test_receive_message_matches_the_api_reference_sample():
    # SQS API Reference (query API), ReceiveMessage "Sample Response", abridged.
    sample = f"""<ReceiveMessageResponse xmlns="{SQS_NS}">
      <ReceiveMessageResult>
        <Message>
          <MessageId>5fea7756-0ea4-451a-a703-a558b933e274</MessageId>
          <ReceiptHandle>MbZj6wDWli+JvwwJaBV+3dcjk2YW2vA3+STFFljTM8tJJg6HRG6PY</ReceiptHandle>
          <MD5OfBody>fafb00f5732ab283681e124bf8747ed1</MD5OfBody>
          <Body>This is a test message</Body>
          <Attribute><Name>SenderId</Name><Value>195004372649</Value></Attribute>
          <Attribute><Name>SentTimestamp</Name><Value>1238099229000</Value></Attribute>
          <MD5OfMessageAttributes>b6b3c63e2bd1d29ce3a8b5f0e4e0a7d6</MD5OfMessageAttributes>
          <MessageAttribute>
            <Name>answer</Name>
            <Value><StringValue>42</StringValue><DataType>Number</DataType></Value>
          </MessageAttribute>
        </Message>
      </ReceiveMessageResult>
      <ResponseMetadata><RequestId>b6633655-283d-45b4-aee4-4e84e0ae6afa</RequestId></ResponseMetadata>
    </ReceiveMessageResponse>"""
    ours = encode_response(
        SQS,
        "ReceiveMessage",
        {
            "Messages": [
                {
                    "MessageId": "5fea7756-0ea4-451a-a703-a558b933e274",
                    "ReceiptHandle": "MbZj6wDWli+JvwwJaBV+3dcjk2YW2vA3+STFFljTM8tJJg6HRG6PY",
                    "MD5OfBody": "fafb00f5732ab283681e124bf8747ed1",
                    "Body": "This is a test message",
                    "Attributes": {"SenderId": "195004372649", "SentTimestamp": "1238099229000"},
                    "MD5OfMessageAttributes": "b6b3c63e2bd1d29ce3a8b5f0e4e0a7d6",
                    "MessageAttributes": {"answer": {"StringValue": "42", "DataType": "Number"}},
                }
            ]
        },
        request_id="b6633655-283d-45b4-aee4-4e84e0ae6afa",
    )
    assert _tree(ours.body) == _tree(sample)


def test_batch_and_list_results_match_the_api_reference_samples():
    batch = encode_response(
        SQS,
        "SendMessageBatch",
        {
            "Successful": [
                {"Id": "test_msg_001", "MessageId": "0a5231c7", "MD5OfMessageBody": "0e024d30"}
            ],
            "Failed": [{"Id": "x", "SenderFault": True, "Code": "InvalidParameterValue"}],
        },
        request_id="r",
    )
    assert _tree(batch.body) == _tree(
        f"""<SendMessageBatchResponse xmlns="{SQS_NS}"><SendMessageBatchResult>
        <SendMessageBatchResultEntry><Id>test_msg_001</Id><MessageId>0a5231c7</MessageId>
        <MD5OfMessageBody>0e024d30</MD5OfMessageBody></SendMessageBatchResultEntry>
        <BatchResultErrorEntry><Id>x</Id><SenderFault>true</SenderFault>
        <Code>InvalidParameterValue</Code></BatchResultErrorEntry>
        </SendMessageBatchResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata>
        </SendMessageBatchResponse>"""
    )
    queues = encode_response(SQS, "ListQueues", {"QueueUrls": ["u1", "u2"]}, request_id="r")
    assert _tree(queues.body) == _tree(
        f"""<ListQueuesResponse xmlns="{SQS_NS}"><ListQueuesResult><QueueUrl>u1</QueueUrl>
        <QueueUrl>u2</QueueUrl></ListQueuesResult><ResponseMetadata><RequestId>r</RequestId>
        </ResponseMetadata></ListQueuesResponse>"""
    )
    topics = encode_response(SNS, "ListTopics", {"Topics": [{"TopicArn": "a"}]}, request_id="r")
    assert _tree(topics.body) == _tree(
        f"""<ListTopicsResponse xmlns="{SNS_NS}"><ListTopicsResult><Topics><member>
        <TopicArn>a</TopicArn></member></Topics></ListTopicsResult><ResponseMetadata>
        <RequestId>r</RequestId></ResponseMetadata></ListTopicsResponse>"""
    )


def test_actions_without_output_have_no_result_element():
    # SQS API Reference, DeleteQueue "Sample Response".
    response = encode_response(SQS, "DeleteQueue", None, request_id="6fde8d1e")
    assert _tree(response.body) == _tree(
        f"""<DeleteQueueResponse xmlns="{SQS_NS}"><ResponseMetadata>
        <RequestId>6fde8d1e</RequestId></ResponseMetadata></DeleteQueueResponse>"""
    )
    assert ("Content-Type", "text/xml") in response.headers


def test_escapes_quotes_and_carriage_returns_like_sqs():
    response = encode_response(
        SQS,
        "ReceiveMessage",
        {"Messages": [{"Body": 'say "hi" & <bye>\r\n'}]},
        request_id="r",
    )
    assert b"<Body>say &quot;hi&quot; &amp; &lt;bye&gt;&#xD;\n</Body>" in response.body


@given(st.text())
def test_escaped_text_parses_back(text):
    parsed = ET.fromstring(f"<a>{escape_text(text)}</a>".encode()).text or ""
    # Characters XML cannot carry at all come back as U+FFFD; everything else exactly.
    expected = "".join(
        c
        if c in "\t\n\r" or ("\x20" <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd") or c > "\uffff"
        else "\ufffd"
        for c in text
    )
    assert parsed == expected


@pytest.mark.parametrize(
    ("action", "result"),
    [
        ("ReceiveMessage", {"Messages": [{"Md5OfBody": "x"}]}),
        ("ListTopics", {"Topics": "arn"}),
        ("DeleteQueue", {"x": 1}),
        ("Nope", None),
    ],
)
def test_results_that_do_not_fit_are_internal_failures(action, result):
    service = SNS if action == "ListTopics" else SQS
    with pytest.raises(AwsError) as caught:
        encode_response(service, action, result, request_id="r")
    assert caught.value.code == "InternalFailure"


# -- errors ------------------------------------------------------------------------------


def test_sqs_error_document():
    # SQS API Reference, "Errors": <ErrorResponse><Error><Type/><Code/><Message/><Detail/>.
    response = encode_error(
        SQS, sqs_error("QueueDoesNotExist", 'No "queue"'), request_id="42d59b56"
    )
    assert response.status == 400
    assert _tree(response.body) == _tree(
        f"""<ErrorResponse xmlns="{SQS_NS}"><Error><Type>Sender</Type>
        <Code>AWS.SimpleQueueService.NonExistentQueue</Code><Message>No "queue"</Message>
        <Detail/></Error><RequestId>42d59b56</RequestId></ErrorResponse>"""
    )
    parsed = botocore.parsers.create_parser("query").parse(
        {"body": response.body, "headers": HeadersDict(response.headers), "status_code": 400},
        None,
    )
    assert parsed["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert parsed["Error"]["Message"] == 'No "queue"'
    assert parsed["Error"]["Type"] == "Sender"
    assert parsed["ResponseMetadata"]["RequestId"] == "42d59b56"


def test_receiver_faults_say_receiver():
    response = encode_error(SNS, sns_error("InternalErrorException", "boom"), request_id="r")
    assert response.status == 500
    assert b"<Type>Receiver</Type>" in response.body
    assert b"<Detail/>" not in response.body


def _sns_client(respond):
    client = botocore.session.Session().create_client(
        "sns",
        region_name="eu-west-1",
        endpoint_url="http://wharf.test:9324",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )

    class Raw:
        def __init__(self, body: bytes) -> None:
            self.body = body

        def stream(self, **_: Any):
            yield self.body

    def before_send(request, **_: Any) -> AWSResponse:
        encoded = respond(request)
        return AWSResponse(
            request.url, encoded.status, HeadersDict(encoded.headers), Raw(encoded.body)
        )

    client.meta.events.register("before-send.sns", before_send)
    return client


@pytest.mark.parametrize(
    "shape", sorted(s for s, (_, status, _) in SNS_ERRORS.items() if status < 500)
)
def test_sns_client_raises_the_modeled_exception(shape):
    client = _sns_client(
        lambda request: encode_error(SNS, sns_error(shape, "went wrong"), request_id="r")
    )
    with pytest.raises(client.exceptions.ClientError) as caught:
        client.list_topics()
    assert type(caught.value) is getattr(client.exceptions, shape)
    assert caught.value.response["Error"]["Message"] == "went wrong"


def test_sns_client_round_trip_through_sigv4_and_both_codecs():
    seen = []

    def respond(request):
        from urllib.parse import urlsplit

        url = urlsplit(request.url)
        body = request.body.encode() if isinstance(request.body, str) else request.body
        identity = sigv4.verify(
            method=request.method,
            path=url.path,
            query=url.query,
            headers=[*request.headers.items(), ("Host", url.netloc)],
            body=body,
            now=sigv4_now(request),
            secrets={"AKIDEXAMPLE": "secret"},
        )
        assert (identity.service, identity.region) == ("sns", "eu-west-1")
        decoded = decode_request(SNS, body=body, query=url.query)
        seen.append(decoded)
        try:
            from proto.aws.shapes import check_required

            check_required(SNS, SNS_OPERATIONS[decoded.action].input, decoded.params)
        except AwsError as error:
            return encode_error(SNS, error, request_id="r")
        return encode_response(SNS, decoded.action, {"MessageId": "m-1"}, request_id="r")

    client = _sns_client(respond)
    out = client.publish(
        TopicArn="arn:aws:sns:eu-west-1:000000000000:t",
        Message='{"a": "b"}\r\n',
        MessageAttributes={"n": {"DataType": "Number", "StringValue": "7"}},
    )
    assert out["MessageId"] == "m-1"
    assert seen[0].params["Message"] == '{"a": "b"}\r\n'
    assert seen[0].params["MessageAttributes"] == {"n": {"DataType": "Number", "StringValue": "7"}}


def test_missing_required_parameter_after_decoding():
    from proto.aws.shapes import check_required

    decoded = decode_request(SNS, body=b"Action=Publish&TopicArn=t")
    with pytest.raises(AwsError) as caught:
        check_required(SNS, SNS_OPERATIONS["Publish"].input, decoded.params)
    assert caught.value.code == "ValidationError"
    assert "'message'" in caught.value.message


def sigv4_now(request) -> float:
    from datetime import UTC, datetime

    stamp = request.headers["X-Amz-Date"]
    stamp = stamp.decode() if isinstance(stamp, bytes) else stamp
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def test_common_errors_render_in_both_services():
    for service in (SQS, SNS):
        response = encode_error(service, common_error("MissingAction", "m"), request_id="r")
        assert b"<Code>MissingAction</Code>" in response.body
        assert response.status == 400


def test_module_constants():
    assert query_protocol.CONTENT_TYPE == "application/x-www-form-urlencoded"


# Large form bodies: decoded like parse_qsl, faster -------------------------------------------

_FORM_PIECES = [*"%&=+aAzZ09fF\\é€ ", "%C3%A9", "%E2%82%AC", "%41", "%ff", "%2B", "%4"]
# Pieces repeated so that values pass the fast path's 64-character threshold.
_FORM_TEXT = st.lists(st.sampled_from(_FORM_PIECES), max_size=120).map(lambda p: "".join(p) * 3)


def _outcome(function: Any, *args: Any) -> Any:
    try:
        return ("ok", function(*args))
    except (ValueError, UnicodeDecodeError) as error:  # what parse_qsl/unquote raise
        return ("error", type(error))


@given(_FORM_TEXT)
@example("%C3" * 40)  # cut UTF-8: both raise
@example("%41" * 30 + "%4")  # a dangling escape: unquote keeps it literally
@example("%e2%82%ac+" * 30)  # the fast path proper
def test_unquote_plus_is_urllibs(text: str) -> None:
    assert _outcome(query_protocol.unquote_plus, text) == _outcome(
        lambda t: urllib.parse.unquote(t.replace("+", " "), errors="strict"), text
    )


@given(_FORM_TEXT)
def test_split_form_is_parse_qsl(text: str) -> None:
    expected = _outcome(
        lambda t: urllib.parse.parse_qsl(
            t, keep_blank_values=True, errors="strict", max_num_fields=query_protocol.MAX_FIELDS
        ),
        text,
    )
    assert _outcome(query_protocol.split_form, text) == expected


def test_a_large_form_body_decodes_through_the_fast_path() -> None:
    body = b"Action=ListQueues&QueueNamePrefix=" + b"%41" * 100_000
    decoded = query_protocol.decode_request(SQS, body=body)
    assert decoded.params["QueueNamePrefix"] == "A" * 100_000
