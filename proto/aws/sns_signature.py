"""SNS message signatures: the string to sign, SignatureVersion 1 and 2, and verification.

Sans-I/O: the caller loads the key and fetches certificates. One exception type,
:class:`SignatureError`. The algorithm is AWS's, from ``sns-verify-signature-of-message``:

- the string to sign is "name\\nvalue\\n" for each signed field, "in byte-sort order":
  ``Message, MessageId, Subject (if included), Timestamp, TopicArn, Type`` for a Notification,
  ``Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type`` for a
  SubscriptionConfirmation or UnsubscribeConfirmation;
- SignatureVersion 1 signs it with SHA1withRSA, version 2 with SHA256withRSA (RSA PKCS#1
  v1.5; the SetTopicAttributes reference: "The signature version corresponds to the hashing
  algorithm used while creating the signature"); the signature travels base64-encoded.

``tests/proto/aws/test_sns_signature.py`` verifies a notification that AWS itself signed,
with AWS's certificate, through :func:`verify`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from proto.errors import ProtocolError

__all__ = [
    "CONFIRMATION_SIGNED",
    "NOTIFICATION_SIGNED",
    "SignatureError",
    "SignatureVersion",
    "Signer",
    "load_signing_key",
    "sign",
    "string_to_sign",
    "verify",
]

NOTIFICATION: Final = "Notification"
SUBSCRIPTION_CONFIRMATION: Final = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION: Final = "UnsubscribeConfirmation"

SignatureVersion = Literal["1", "2"]
_HASHES: Final[Mapping[str, type[hashes.HashAlgorithm]]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# The signed fields per message type, already in byte-sort order (sns-verify-signature-of-message).
NOTIFICATION_SIGNED: Final = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_SIGNED: Final = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)


class SignatureError(ProtocolError):
    """A key that cannot sign, or an envelope whose signature cannot be checked or is wrong."""


@dataclass(frozen=True, slots=True)
class Signer:
    """What signs a topic's envelopes: the key, where its certificate is served, the version.

    Attributes:
        key: the RSA private key (the config names its file; the shell loads it).
        cert_url: the ``SigningCertURL`` the broker serves the matching certificate at.
        version: the topic's ``SignatureVersion``: ``"1"`` (SHA1withRSA, AWS's default) or
            ``"2"`` (SHA256withRSA).
    """

    key: rsa.RSAPrivateKey
    cert_url: str
    version: SignatureVersion = "1"


def load_signing_key(pem: bytes, password: bytes | None = None) -> rsa.RSAPrivateKey:
    """Load the RSA private key that signs envelopes.

    Args:
        pem: the PEM bytes (the caller reads the file the config names).
        password: the key's passphrase, if it has one.

    Returns:
        The key.

    Raises:
        SignatureError: the bytes are not a PEM private key, or the key is not RSA.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"cannot load the signing key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SignatureError("the signing key must be an RSA key (SNS signs with SHA*withRSA)")
    return key


def string_to_sign(envelope: Mapping[str, Any]) -> bytes:
    """Build the canonical text SNS signs for an envelope of any of the three types.

    Args:
        envelope: the envelope (built here, or decoded from what an endpoint received).

    Returns:
        The UTF-8 bytes of "name\\nvalue\\n" for each signed field present, in byte order.

    Raises:
        SignatureError: unknown ``Type``, or a required signed field is missing or not a string.
    """
    message_type = envelope.get("Type")
    names: tuple[str, ...]
    if message_type == NOTIFICATION:
        names, optional = NOTIFICATION_SIGNED, {"Subject"}
    elif message_type in (SUBSCRIPTION_CONFIRMATION, UNSUBSCRIBE_CONFIRMATION):
        names, optional = CONFIRMATION_SIGNED, set()
    else:
        raise SignatureError(f"unknown SNS message Type: {message_type!r}")
    parts: list[str] = []
    for name in names:
        value = envelope.get(name)
        if value is None and name in optional:
            continue
        if not isinstance(value, str):
            raise SignatureError(f"{message_type} envelope lacks the string field {name}")
        parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode("utf-8", "surrogatepass")


def sign(payload: bytes, key: rsa.RSAPrivateKey, version: SignatureVersion) -> str:
    """Sign a string-to-sign: RSA PKCS#1 v1.5 with SHA1 (version 1) or SHA256 (version 2).

    Args:
        payload: from :func:`string_to_sign`.
        key: the topic's signing key.
        version: ``"1"`` or ``"2"``.

    Returns:
        The base64 signature, the envelope's ``Signature``.

    Raises:
        SignatureError: an unknown signature version.
    """
    if version not in _HASHES:
        raise SignatureError(f"unknown SignatureVersion: {version!r}")
    signature = key.sign(payload, padding.PKCS1v15(), _HASHES[version]())
    return base64.b64encode(signature).decode("ascii")


def verify(envelope: Mapping[str, Any], public_key: rsa.RSAPublicKey | x509.Certificate) -> None:
    """Check an envelope's signature, as an endpoint does with the SigningCertURL certificate.

    Args:
        envelope: the decoded envelope.
        public_key: the signer's certificate or public key (fetching it is the caller's job).

    Raises:
        SignatureError: unsigned, malformed, of an unknown version, or the signature does not
            match the fields.
    """
    key = public_key.public_key() if isinstance(public_key, x509.Certificate) else public_key
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("SNS signatures are RSA; the certificate holds another key type")
    version = envelope.get("SignatureVersion")
    if not isinstance(version, str) or version not in _HASHES:
        raise SignatureError(f"unknown or missing SignatureVersion: {version!r}")
    encoded = envelope.get("Signature")
    if not isinstance(encoded, str):
        raise SignatureError("the envelope has no Signature")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the Signature is not base64") from None
    try:
        key.verify(signature, string_to_sign(envelope), padding.PKCS1v15(), _HASHES[version]())
    except InvalidSignature:
        raise SignatureError("the signature does not match the envelope") from None
