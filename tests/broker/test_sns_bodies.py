"""The bodies of a published message: built once per distinct form, checked once for SQS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from broker import sns_bodies
from broker.config import SnsSettings
from broker.model.errors import SqsError
from broker.model.messages import validate_message_attributes
from broker.model.publishing import PreparedMessage, PublishRequest, check_attributes, prepare
from broker.model.sns_errors import SnsError
from broker.model.sns_mutations import SubscriptionRecord
from broker.model.subscriptions import SubscriptionSettings
from broker.model.topics import TopicSettings
from broker.sns_bodies import Bodies, sqs_attributes, timestamp
from broker.sns_keys import SigningKeys, load_signing_keys
from broker.store.base import TopicRecord
from broker.topic_state import Subscription, Topic
from proto.aws import sns_envelope
from proto.aws.sns_signature import sign, verify

NOW = 1_700_000_000_123
TOPIC_ARN = "arn:aws:sns:us-east-1:000000000000:t"


def topic() -> Topic:
    record = TopicRecord(
        topic_id=1, name="t", settings=TopicSettings(), tags={}, created_at=1, modified_at=1
    )
    return Topic(record, TOPIC_ARN)


def subscription(of: Topic, number: int, *, raw: bool = False) -> Subscription:
    record = SubscriptionRecord(
        subscription_id=f"s{number}",
        topic_id=1,
        protocol="sqs",
        endpoint=f"arn:aws:sqs:us-east-1:000000000000:q{number}",
        settings=SubscriptionSettings(raw_message_delivery=raw),
        owner="000000000000",
    )
    return Subscription(record, of)


def test_raw_attributes_are_converted_and_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A NUL in a value passes SNS's rules but SQS cannot store it: it becomes U+FFFD, as SQS
    # stores such a value. Whatever the check finds, every raw copy gets the same verdict.
    request = PublishRequest(
        message="m", attributes={"x": {"DataType": "String", "StringValue": "v\x00"}}
    )

    def no_signer(of: Topic, base_url: str) -> sns_envelope.Signer:
        raise AssertionError("raw deliveries are not signed")

    bodies = Bodies(
        no_signer,
        topic(),
        prepare(TopicSettings(), request),
        "id",
        None,
        NOW,
        "http://b",
    )
    assert bodies.raw_attributes()["x"].string_value == "v\ufffd"
    checks: list[object] = []

    def refusing(attributes: object) -> None:
        checks.append(attributes)
        raise SqsError("InvalidParameterValue", "refused")

    monkeypatch.setattr(sns_bodies, "validate_message_attributes", refusing)
    errors = []
    for _ in range(3):
        try:
            bodies.check_raw_attributes()
        except SqsError as error:
            errors.append(error)
    assert len(checks) == 1
    assert len(errors) == 3
    assert errors[0] is errors[1] is errors[2]
    assert bodies.raw_attributes() is bodies.raw_attributes()
    assert list(bodies.raw_attributes()) == ["x"]


def test_envelopes_are_signed_once_and_differ_only_by_the_unsubscribe_url(
    tmp_path: Path,
) -> None:
    keys = load_signing_keys(SnsSettings(), tmp_path)
    asked: list[str] = []

    def signer(of: Topic, base_url: str) -> sns_envelope.Signer:
        asked.append(base_url)
        return keys.signer("1", base_url)

    of = topic()
    bodies = Bodies(
        signer,
        of,
        prepare(TopicSettings(), PublishRequest(message="m")),
        "id",
        None,
        NOW,
        "http://b",
    )
    raw = subscription(of, 9, raw=True)
    bodies.prepare(raw)
    assert bodies.to_sign() == []
    assert asked == []
    assert bodies.checked_body(raw) == ("m", True)
    subscriptions = [subscription(of, n) for n in range(3)]
    for each in subscriptions:
        bodies.prepare(each)
    assert [text for text, _ in bodies.to_sign()] == ["m"]
    bodies.build()  # nobody signed ahead: signed as it is built
    assert asked == ["http://b"]
    assert bodies.to_sign() == []
    envelopes = [json.loads(bodies.body(each)) for each in subscriptions]
    urls = [envelope.pop("UnsubscribeURL") for envelope in envelopes]
    assert envelopes[0] == envelopes[1] == envelopes[2]
    assert urls == [sns_envelope.unsubscribe_url("http://b", each.arn) for each in subscriptions]
    assert envelopes[0]["Timestamp"] == sns_envelope.format_timestamp(NOW)


@given(st.integers(min_value=0, max_value=2**42))
def test_the_cached_timestamp_is_format_timestamp(now: int) -> None:
    assert timestamp(now) == sns_envelope.format_timestamp(now)
    assert timestamp(now + 1) == sns_envelope.format_timestamp(now + 1)


_NUMBER_TEXTS = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1_000", " 1", "1 ", "+1", "1e126", "-1e127", "1e127", ".5", "5.", "0x10"]),
    st.text("0123456789.eE+-_ ", min_size=1, max_size=8),
)
_PUBLISHED_ATTRIBUTE = st.one_of(
    st.builds(
        lambda kind, value: {"DataType": kind, "StringValue": value},
        st.sampled_from(["Number", "Number.int", "Number." + "x" * 251]),
        _NUMBER_TEXTS,
    ),
    st.builds(
        lambda kind, value: {"DataType": kind, "StringValue": value},
        st.sampled_from(["String", "String.custom", "String." + "y" * 260, "Strung"]),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0xD7FF), max_size=5),
    ),
    st.builds(lambda value: {"DataType": "Binary", "BinaryValue": value}, st.binary(max_size=4)),
)
_ATTRIBUTE_NAMES = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True),
    st.sampled_from(["AWS.x", "aws.trace", "Amazon.y", "AMAZON.z", "awsx", "a..b", ".a", "a."]),
)


@given(st.dictionaries(_ATTRIBUTE_NAMES, _PUBLISHED_ATTRIBUTE, max_size=10))
def test_attributes_a_publish_accepts_are_attributes_sqs_accepts(
    attributes: dict[str, dict[str, object]],
) -> None:
    """A raw SQS delivery never fails on attributes that Publish let through: Publish checks
    what SQS will (names, types, numbers), so a subscriber does not silently lose it."""
    try:
        check_attributes(attributes)
    except SnsError:
        return
    validate_message_attributes(sqs_attributes(attributes))


@given(
    message=st.text(max_size=40),
    subject=st.none() | st.text(min_size=1, max_size=10),
    version=st.sampled_from(["1", "2"]),
)
def test_an_envelope_signed_ahead_is_the_envelope_signed_as_built(
    signing_keys: SigningKeys, message: str, subject: str | None, version: str
) -> None:
    # RSA PKCS#1 v1.5 is deterministic: a signature made by a signing process from to_sign()
    # must give the very bytes signing in place gives, and verify.
    of = topic()
    try:
        prepared = prepare(TopicSettings(), PublishRequest(message=message, subject=subject))
    except SnsError:
        reject()  # Publish refuses it: nothing is signed
    made = []
    for ahead in (False, True):
        bodies = signed_bodies(signing_keys, version, of, prepared)
        each = subscription(of, 1)
        bodies.prepare(each)
        if ahead:
            signer = signing_keys.signer(version, "http://b")  # type: ignore[arg-type]
            for text, payload in bodies.to_sign():
                bodies.signed_by(text, signer, sign(payload, signer.key, signer.version))
        bodies.build()
        made.append(bodies.body(each))
    assert made[0] == made[1]
    verify(json.loads(made[1]), signing_keys.key.public_key())


def test_an_envelope_keeps_the_version_it_was_signed_with(signing_keys: SigningKeys) -> None:
    # SignatureVersion set on the topic while the signature was being made: the envelope says
    # the version that signed it, or no subscriber could verify it.
    of = topic()
    bodies = signed_bodies(
        signing_keys, "2", of, prepare(TopicSettings(), PublishRequest(message="m"))
    )
    each = subscription(of, 1)
    bodies.prepare(each)
    signer = signing_keys.signer("1", "http://b")
    ((text, payload),) = bodies.to_sign()
    bodies.signed_by(text, signer, sign(payload, signer.key, "1"))
    envelope = json.loads(bodies.body(each))
    assert envelope["SignatureVersion"] == "1"
    verify(envelope, signing_keys.key.public_key())


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    return load_signing_keys(SnsSettings(), tmp_path_factory.mktemp("keys"))


def signed_bodies(keys: SigningKeys, version: str, of: Topic, message: PreparedMessage) -> Bodies:
    """The bodies of ``message``, whose topic signs with ``version`` when nobody signed ahead."""
    return Bodies(
        lambda _, base: keys.signer(version, base),  # type: ignore[arg-type]
        of,
        message,
        "id",
        None,
        NOW,
        "http://b",
    )
