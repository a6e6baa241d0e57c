import base64
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from proto.aws.sns_signature import (
    SignatureError,
    Signer,
    load_signing_key,
    sign,
    string_to_sign,
    verify,
)
from tests.support.sns_vectors import AWS_NOTIFICATION, AWS_NOTIFICATION_2, AWS_SIGNING_CERT_PEM

# One key for the module: RSA key generation takes tens of milliseconds.
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
AWS_CERT = x509.load_pem_x509_certificate(AWS_SIGNING_CERT_PEM)


def independent_string_to_sign(envelope):
    """A second transcription of sns-verify-signature-of-message, step 5, sharing no code.

    "The string to sign is a newline character-delimited list of specific name-value pairs ...
    Each name-value pair is represented with the name first followed by a newline character,
    followed by the value, and ending with a newline character. The name-value pairs must be
    listed in byte-sort order."
    """
    if envelope["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    names = sorted((n for n in names if n in envelope), key=lambda n: n.encode())
    return "".join(f"{name}\n{envelope[name]}\n" for name in names).encode()


def test_a_notification_signed_by_aws_verifies():
    # The strongest check available: AWS's own signature, AWS's own certificate.
    for text in (AWS_NOTIFICATION, AWS_NOTIFICATION_2):
        verify(json.loads(text), AWS_CERT)
        verify(json.loads(text), AWS_CERT.public_key())  # type: ignore[arg-type]


def test_a_tampered_aws_notification_fails():
    envelope = json.loads(AWS_NOTIFICATION)
    envelope["Message"] += " "
    with pytest.raises(SignatureError, match="does not match"):
        verify(envelope, AWS_CERT)


def test_the_documented_string_to_sign():
    # sns-verify-signature-of-message.md, "The following example is a string to sign for a
    # Notification" (the page prints it one item per line).
    envelope = {
        "Type": "Notification",
        "MessageId": "4d4dc071-ddbf-465d-bba8-08f81c89da64",
        "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
        "Subject": "My subject",
        "Message": "My Test Message",
        "Timestamp": "2019-01-31T04:37:04.321Z",
    }
    assert string_to_sign(envelope) == (
        b"Message\nMy Test Message\n"
        b"MessageId\n4d4dc071-ddbf-465d-bba8-08f81c89da64\n"
        b"Subject\nMy subject\n"
        b"Timestamp\n2019-01-31T04:37:04.321Z\n"
        b"TopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n"
        b"Type\nNotification\n"
    )
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "3d891288-136d-417f-bc05-901c108273ee",
        "Token": "233...",
        "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
        "Message": "My Test Message",
        "SubscribeURL": "https://sns.us-east-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn="
        "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P&Token=233...",
        "Timestamp": "2019-01-31T19:25:13.719Z",
    }
    assert string_to_sign(confirmation) == (
        b"Message\nMy Test Message\n"
        b"MessageId\n3d891288-136d-417f-bc05-901c108273ee\n"
        b"SubscribeURL\n" + confirmation["SubscribeURL"].encode() + b"\n"
        b"Timestamp\n2019-01-31T19:25:13.719Z\n"
        b"Token\n233...\n"
        b"TopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n"
        b"Type\nSubscriptionConfirmation\n"
    )


def test_string_to_sign_refuses_unknown_types_and_missing_fields():
    with pytest.raises(SignatureError, match="Type"):
        string_to_sign({"Type": "Other"})
    with pytest.raises(SignatureError, match="SubscribeURL"):
        string_to_sign({"Type": "UnsubscribeConfirmation", "Message": "m", "MessageId": "i"})


def test_verify_refuses_unsigned_and_malformed_envelopes():
    envelope = {"Type": "Notification", "MessageId": "i", "TopicArn": "t", "Message": "m"}
    envelope["Timestamp"] = "2020-01-01T00:00:00.000Z"
    with pytest.raises(SignatureError, match="SignatureVersion"):
        verify(envelope, KEY.public_key())
    with pytest.raises(SignatureError, match="no Signature"):
        verify({**envelope, "SignatureVersion": "1"}, KEY.public_key())
    with pytest.raises(SignatureError, match="base64"):
        verify({**envelope, "SignatureVersion": "1", "Signature": "%%%"}, KEY.public_key())
    with pytest.raises(SignatureError, match="SignatureVersion"):
        verify({**envelope, "SignatureVersion": "3", "Signature": "AAAA"}, KEY.public_key())
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(SignatureError, match="RSA"):
        verify({**envelope, "SignatureVersion": "1", "Signature": "AAAA"}, ec_key)  # type: ignore[arg-type]


def test_sign_refuses_an_unknown_version():
    with pytest.raises(SignatureError):
        sign(b"x", KEY, "3")  # type: ignore[arg-type]


def test_load_signing_key():
    pem = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    assert load_signing_key(pem, b"secret").private_numbers() == KEY.private_numbers()
    with pytest.raises(SignatureError):
        load_signing_key(pem, b"wrong")
    with pytest.raises(SignatureError):
        load_signing_key(b"not a key")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(SignatureError, match="RSA"):
        load_signing_key(ec_pem)


def test_signer_defaults_to_version_1():
    assert Signer(KEY, "https://broker/cert.pem").version == "1"


texts = st.text(st.characters(codec="utf-8"), max_size=60)
envelopes = st.one_of(
    st.fixed_dictionaries(
        {
            "Type": st.just("Notification"),
            "MessageId": texts,
            "TopicArn": texts,
            "Message": texts,
            "Timestamp": texts,
        },
        optional={"Subject": texts, "UnsubscribeURL": texts},
    ),
    st.fixed_dictionaries(
        {
            "Type": st.sampled_from(["SubscriptionConfirmation", "UnsubscribeConfirmation"]),
            "MessageId": texts,
            "Token": texts,
            "TopicArn": texts,
            "Message": texts,
            "SubscribeURL": texts,
            "Timestamp": texts,
        }
    ),
)
versions = st.sampled_from(["1", "2"])


@given(envelope=envelopes)
def test_string_to_sign_matches_an_independent_transcription(envelope):
    assert string_to_sign(envelope) == independent_string_to_sign(envelope)


@given(envelope=envelopes, version=versions)
def test_sign_then_verify_and_cryptography_agrees(envelope, version):
    signed = {**envelope, "SignatureVersion": version}
    signed["Signature"] = sign(string_to_sign(envelope), KEY, version)
    verify(signed, KEY.public_key())
    # cryptography, fed the independently built canonical string, accepts our signature ...
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    KEY.public_key().verify(
        base64.b64decode(signed["Signature"]),
        independent_string_to_sign(envelope),
        padding.PKCS1v15(),
        algorithm,
    )
    # ... and our verify accepts a signature cryptography made on its own.
    direct = KEY.sign(independent_string_to_sign(envelope), padding.PKCS1v15(), algorithm)
    verify({**signed, "Signature": base64.b64encode(direct).decode()}, KEY.public_key())


@given(envelope=envelopes, version=versions, data=st.data())
def test_any_tamper_fails_verification(envelope, version, data):
    signed = {**envelope, "SignatureVersion": version}
    signed["Signature"] = sign(string_to_sign(envelope), KEY, version)
    signed_fields = [
        name
        for name in (
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Token",
            "SubscribeURL",
        )
        if name in signed
    ]
    kind = data.draw(st.sampled_from(["field", "signature", "key", "version"]))
    tampered = dict(signed)
    key = KEY.public_key()
    if kind == "field":
        name = data.draw(st.sampled_from(signed_fields))
        tampered[name] = data.draw(texts.filter(lambda t: t != signed[name]))
    elif kind == "signature":
        raw = bytearray(base64.b64decode(signed["Signature"]))
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] ^= data.draw(st.integers(1, 255))
        tampered["Signature"] = base64.b64encode(bytes(raw)).decode()
    elif kind == "key":
        key = OTHER_KEY.public_key()
    else:
        tampered["SignatureVersion"] = "2" if version == "1" else "1"
    with pytest.raises(SignatureError):
        verify(tampered, key)
