import base64
import datetime
import hashlib
import json
import re

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from proto.aws.md5 import md5_of_attributes
from proto.aws.sns_envelope import (
    MAX_RAW_SQS_ATTRIBUTES,
    EnvelopeError,
    Signer,
    content_deduplication_id,
    decode,
    encode,
    envelope_attributes,
    escape_unstorable,
    format_timestamp,
    http_headers,
    notification,
    raw_sqs_attributes,
    subscribe_url,
    subscription_confirmation,
    unsubscribe_confirmation,
    unsubscribe_url,
)
from proto.aws.sns_signature import verify
from tests.support.sns_vectors import AWS_NOTIFICATION, AWS_NOTIFICATION_2

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
TOPIC = "arn:aws:sns:us-west-2:123456789012:MyTopic"
SUBSCRIPTION = f"{TOPIC}:c9135db0-26c4-47ec-8998-413945fb5a96"
BASE = "https://sns.us-west-2.amazonaws.com"


def test_encode_reproduces_aws_layout_byte_for_byte():
    # Real SNS deliveries (tests/support/sns_vectors.py): decode, re-encode, same text.
    for text in (AWS_NOTIFICATION, AWS_NOTIFICATION_2):
        assert encode(decode(text)) == text


def test_notification_fields_come_in_aws_order():
    aws = decode(AWS_NOTIFICATION)
    built = notification(
        message_id=aws["MessageId"],
        topic_arn=aws["TopicArn"],
        message=aws["Message"],
        timestamp=aws["Timestamp"],
        unsubscribe_url=aws["UnsubscribeURL"],
        message_attributes={
            "SDLCEnv": {"DataType": "String", "StringValue": "DEV"},
            "CirrusVersion": {"DataType": "String", "StringValue": "v2.1.0"},
        },
        signer=Signer(KEY, aws["SigningCertURL"]),
    )
    assert list(built) == list(aws)
    assert {k: v for k, v in built.items() if k != "Signature"} == {
        k: v for k, v in aws.items() if k != "Signature"
    }


def test_the_documented_notification_with_a_subject():
    # sns-message-and-json-formats.md, "HTTP/HTTPS Notification JSON Format"
    built = notification(
        message_id="22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        topic_arn=TOPIC,
        subject="My First Message",
        message="Hello world!",
        timestamp="2012-05-02T00:54:06.655Z",
        unsubscribe_url=unsubscribe_url(BASE, SUBSCRIPTION),
        signer=Signer(
            KEY, f"{BASE}/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
        ),
    )
    assert list(built) == [
        "Type",
        "MessageId",
        "TopicArn",
        "Subject",
        "Message",
        "Timestamp",
        "SignatureVersion",
        "Signature",
        "SigningCertURL",
        "UnsubscribeURL",
    ]
    assert built["UnsubscribeURL"] == (
        "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn="
        "arn:aws:sns:us-west-2:123456789012:MyTopic:c9135db0-26c4-47ec-8998-413945fb5a96"
    )
    verify(decode(encode(built)), KEY.public_key())


def test_an_unsigned_envelope_and_an_empty_attribute_map_are_left_out():
    built = notification(
        message_id="m",
        topic_arn=TOPIC,
        message="x",
        timestamp="t",
        unsubscribe_url="u",
        message_attributes={},
    )
    assert list(built) == [
        "Type",
        "MessageId",
        "TopicArn",
        "Message",
        "Timestamp",
        "UnsubscribeURL",
    ]


def test_the_fifo_envelope_has_a_sequence_number_and_no_signature():
    built = notification(
        message_id="m",
        topic_arn=TOPIC + ".fifo",
        message="x",
        timestamp="t",
        unsubscribe_url="u",
        signer=Signer(KEY, "cert"),
        sequence_number="10000000000000003000",
    )
    assert list(built) == [
        "Type",
        "MessageId",
        "SequenceNumber",
        "TopicArn",
        "Message",
        "Timestamp",
        "UnsubscribeURL",
    ]


def test_the_documented_confirmations():
    # sns-message-and-json-formats.md, SubscriptionConfirmation and UnsubscribeConfirmation
    token = "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3"
    url = subscribe_url(BASE, TOPIC, token)
    assert url == f"{BASE}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}"
    signer = Signer(KEY, "cert", "2")
    confirmation = subscription_confirmation(
        message_id="165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        topic_arn=TOPIC,
        token=token,
        subscribe_url=url,
        timestamp="2012-04-26T20:45:04.751Z",
        signer=signer,
    )
    assert list(confirmation) == [
        "Type",
        "MessageId",
        "Token",
        "TopicArn",
        "Message",
        "SubscribeURL",
        "Timestamp",
        "SignatureVersion",
        "Signature",
        "SigningCertURL",
    ]
    assert confirmation["Message"] == (
        "You have chosen to subscribe to the topic arn:aws:sns:us-west-2:123456789012:MyTopic.\n"
        "To confirm the subscription, visit the SubscribeURL included in this message."
    )
    verify(confirmation, KEY.public_key())
    goodbye = unsubscribe_confirmation(
        message_id="47138184-6831-46b8-8f7c-afc488602d7d",
        topic_arn=TOPIC,
        subscription_arn=SUBSCRIPTION,
        token=token,
        subscribe_url=url,
        timestamp="2012-04-26T20:06:41.581Z",
        signer=signer,
    )
    assert goodbye["Type"] == "UnsubscribeConfirmation"
    assert goodbye["Message"] == (
        f"You have chosen to deactivate subscription {SUBSCRIPTION}.\nTo cancel this operation "
        "and restore the subscription, visit the SubscribeURL included in this message."
    )
    verify(goodbye, KEY.public_key())


def test_http_headers_as_documented():
    envelope = notification(
        message_id="22b80b92", topic_arn=TOPIC, message="x", timestamp="t", unsubscribe_url="u"
    )
    assert http_headers(envelope, subscription_arn=SUBSCRIPTION) == [
        ("x-amz-sns-message-type", "Notification"),
        ("x-amz-sns-message-id", "22b80b92"),
        ("x-amz-sns-topic-arn", TOPIC),
        ("x-amz-sns-subscription-arn", SUBSCRIPTION),
        ("x-amz-sns-rawdelivery", "false"),
        ("Content-Type", "text/plain; charset=UTF-8"),
        ("User-Agent", "Amazon Simple Notification Service Agent"),
    ]
    raw = dict(
        http_headers(
            envelope, subscription_arn=SUBSCRIPTION, raw=True, content_type="application/json"
        )
    )
    assert raw["x-amz-sns-rawdelivery"] == "true"
    assert raw["Content-Type"] == "application/json"
    confirmation = subscription_confirmation(
        message_id="i", topic_arn=TOPIC, token="t", subscribe_url="s", timestamp="t"
    )
    names = [name for name, _ in http_headers(confirmation, subscription_arn=SUBSCRIPTION)]
    assert "x-amz-sns-subscription-arn" not in names
    assert "x-amz-sns-rawdelivery" not in names


def test_message_attributes_in_the_envelope_and_raw_to_sqs():
    attributes = {
        "s": {"DataType": "String", "StringValue": "v"},
        "n": {"DataType": "Number", "StringValue": "1.5"},
        "a": {"DataType": "String.Array", "StringValue": '["x", 1]'},
        "b": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
    }
    assert envelope_attributes(attributes)["b"] == {"Type": "Binary", "Value": "AP8="}
    assert envelope_attributes(attributes)["a"] == {"Type": "String.Array", "Value": '["x", 1]'}
    assert raw_sqs_attributes(attributes) == attributes
    with pytest.raises(EnvelopeError, match="DataType"):
        envelope_attributes({"x": {"StringValue": "v"}})
    with pytest.raises(EnvelopeError, match="no value"):
        raw_sqs_attributes({"x": {"DataType": "String"}})


def test_raw_delivery_to_sqs_carries_at_most_ten_attributes():
    ten = {
        f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(MAX_RAW_SQS_ATTRIBUTES)
    }
    assert len(raw_sqs_attributes(ten)) == 10
    eleven = {**ten, "extra": {"DataType": "String", "StringValue": "v"}}
    with pytest.raises(EnvelopeError, match="at most 10"):
        raw_sqs_attributes(eleven)


def test_raw_delivery_to_sqs_leaves_out_the_sms_and_mobile_push_settings():
    """SQS refuses names starting with AWS., and these set nothing for a queue; they do not
    count towards the ten either."""
    ten = {
        f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(MAX_RAW_SQS_ATTRIBUTES)
    }
    settings = {
        "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"},
        "AWS.SNS.MOBILE.APNS.TTL": {"DataType": "String", "StringValue": "60"},
        "AWS.MM.SMS.EntityId": {"DataType": "String", "StringValue": "e"},
    }
    assert raw_sqs_attributes({**ten, **settings}) == ten
    assert envelope_attributes(settings)["AWS.SNS.SMS.SMSType"] == {
        "Type": "String",
        "Value": "Transactional",
    }


def test_content_based_deduplication_is_the_sha256_of_the_message():
    assert content_deduplication_id("Test") == (
        "532eaabd9574880dbf76b9b8cc00832c20a6ec113d682299550d7a6e0f345e25"
    )


def test_format_timestamp():
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(1_335_920_046_655) == "2012-05-02T00:54:06.655Z"


def test_decode_refuses_what_is_not_an_envelope():
    for text in ("not json", "[]", '{"Type": "Other"}', "{}"):
        with pytest.raises(EnvelopeError):
            decode(text)


texts = st.text(max_size=40)
attribute_maps = st.dictionaries(
    st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True),
    st.one_of(
        texts.map(lambda t: {"DataType": "String", "StringValue": t}),
        st.binary(max_size=20).map(lambda b: {"DataType": "Binary", "BinaryValue": b}),
    ),
    max_size=12,
)


@given(
    message=texts,
    subject=st.none() | texts,
    attributes=attribute_maps,
    sequence=st.none() | st.from_regex(r"[0-9]{20}", fullmatch=True),
)
def test_encode_decode_round_trip(message, subject, attributes, sequence):
    envelope = notification(
        message_id="id",
        topic_arn=TOPIC,
        message=message,
        subject=subject,
        timestamp=format_timestamp(0),
        unsubscribe_url="u",
        message_attributes=attributes,
        sequence_number=sequence,
    )
    text = encode(envelope)
    assert decode(text) == envelope
    assert decode(text.encode("utf-8")) == envelope
    assert json.loads(text) == envelope  # plain JSON any parser reads
    for name, attribute in attributes.items():
        value = envelope["MessageAttributes"][name]["Value"]
        if "BinaryValue" in attribute:
            assert base64.b64decode(value) == attribute["BinaryValue"]


@given(attributes=attribute_maps.filter(lambda a: len(a) <= MAX_RAW_SQS_ATTRIBUTES))
def test_raw_sqs_attributes_keep_the_sqs_digest(attributes):
    # The SQS subscriber checks MD5OfMessageAttributes: conversion must not change it.
    assert md5_of_attributes(raw_sqs_attributes(attributes)) == md5_of_attributes(attributes)


@given(message=st.text())
def test_content_deduplication_id_is_the_body_hash(message):
    expected = hashlib.sha256(message.encode("utf-8", "surrogatepass")).hexdigest()
    assert content_deduplication_id(message) == expected


@given(epoch_ms=st.integers(0, 253_402_300_799_999))
def test_format_timestamp_round_trips(epoch_ms):
    text = format_timestamp(epoch_ms)
    assert text.endswith("Z")
    parsed = datetime.datetime.fromisoformat(text)
    assert round(parsed.timestamp() * 1000) == epoch_ms


# What an SQS message body may hold (SendMessage's documentation), written out here.
_SQS_BODY = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")


@given(message=st.text(), subject=st.text())
def test_an_escaped_envelope_fits_in_a_queue_and_reads_back_the_same(message, subject):
    envelope = {"Type": "Notification", "Message": message, "Subject": subject}
    escaped = escape_unstorable(encode(envelope))
    assert _SQS_BODY.fullmatch(escaped)
    assert decode(escaped) == envelope


def test_non_characters_become_json_escapes():
    encoded = encode({"Message": "a\ufffeb\uffff"})
    assert escape_unstorable(encoded) == '{\n  "Message" : "a\\ufffeb\\uffff"\n}'
