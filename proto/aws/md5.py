"""The MD5 digests SQS returns with every message, computed the way AWS computes them.

Clients check these. The Java (v1 ``MessageMD5ChecksumHandler``, v2
``MessageMD5ChecksumInterceptor``), .NET, PHP and JavaScript v3 SDKs recompute them and throw
when they differ (elasticmq #13/#947, localstack #1841), so a byte out of place breaks real
consumers. botocore does not check them.

``MD5OfMessageBody`` is the hex MD5 of the body's UTF-8 bytes.

``MD5OfMessageAttributes`` (and ``MD5OfMessageSystemAttributes``, same algorithm over the
system attributes such as ``AWSTraceHeader``) is the hex MD5 of, for each attribute in order of
name:

    length(name) name  length(DataType) DataType  transport  value...

where every ``length`` is a 4-byte big-endian byte count of the UTF-8 text that follows, and
``transport`` is one byte chosen by which value the attribute carries (not by its DataType, so
``Number.float`` and ``Binary.png`` work): 1 for ``StringValue`` (String and Number types), then
``length(value) value``; 2 for ``BinaryValue``, then ``length(bytes) bytes``; 3 and 4 for the
list values, reserved by AWS, then each element length-prefixed. (AWS SQS Developer Guide,
"Calculating the MD5 message digest for message attributes".)

AWS leaves ``MD5OfMessageAttributes`` out of a response when a message has no attributes;
handlers do the same (PHP and others break on an empty one, elasticmq #114).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from proto.errors import ProtocolError

__all__ = [
    "DigestError",
    "md5_of_attributes",
    "md5_of_body",
    "md5_of_message_attributes",
    "md5_of_system_attributes",
]

# Transport type bytes (AWS SQS Developer Guide, "Calculating the MD5 message digest for message
# attributes", step 4).
_STRING: Final = b"\x01"
_BINARY: Final = b"\x02"
_STRING_LIST: Final = b"\x03"
_BINARY_LIST: Final = b"\x04"


class DigestError(ProtocolError):
    """An attribute that cannot be digested: no DataType, or no value of any kind."""


def md5_of_body(body: str) -> str:
    """Return ``MD5OfMessageBody``: the hex MD5 of the body encoded as UTF-8.

    Args:
        body: the message body.

    Returns:
        32 lowercase hex digits.

    Raises:
        DigestError: the body holds a lone surrogate, which has no UTF-8 encoding (SQS
            rejects such bodies on send with InvalidMessageContents).
    """
    try:  # _utf8's, inline: this runs for every message sent
        data = body.encode("utf-8")
    except UnicodeEncodeError:
        raise _not_unicode("body") from None
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_of_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> str:
    """Return the digest of a message-attribute map, as AWS computes it.

    Args:
        attributes: attribute name to ``{"DataType": ..., "StringValue": ...}`` (or
            ``BinaryValue`` bytes, ``StringListValues``, ``BinaryListValues``), the shape both
            protocol decoders produce.

    Returns:
        32 lowercase hex digits.

    Raises:
        DigestError: an attribute has no ``DataType`` or no value.
    """
    digest = hashlib.md5(usedforsecurity=False)
    # Sorted by name: the SDKs sort with their string order (Java's TreeMap over UTF-16 code
    # units). Attribute names are limited to [A-Za-z0-9_.-] (SendMessage docs), where every
    # order agrees.
    for name in sorted(attributes):
        value = attributes[name]
        data_type = value.get("DataType")
        if not isinstance(data_type, str):
            raise DigestError(f"Message attribute {name!r} has no DataType.")
        digest.update(_prefixed(_utf8(name, name)))
        digest.update(_prefixed(_utf8(data_type, name)))
        string_value = value.get("StringValue")
        binary_value = value.get("BinaryValue")
        if string_value is not None:
            digest.update(_STRING + _prefixed(_utf8(string_value, name)))
        elif binary_value is not None:
            digest.update(_BINARY + _prefixed(bytes(binary_value)))
        elif value.get("StringListValues"):
            digest.update(_STRING_LIST)
            digest.update(b"".join(_prefixed(_utf8(v, name)) for v in value["StringListValues"]))
        elif value.get("BinaryListValues"):
            digest.update(_BINARY_LIST)
            digest.update(b"".join(_prefixed(bytes(v)) for v in value["BinaryListValues"]))
        else:
            raise DigestError(f"Message attribute {name!r} has no value.")
    return digest.hexdigest()


# The two digests SQS returns are the same function over different maps; the names say which.
md5_of_message_attributes = md5_of_attributes
md5_of_system_attributes = md5_of_attributes


def _prefixed(data: bytes) -> bytes:
    # 4-byte big-endian length: SQS limits a message to 1 MiB, far below 2**32.
    return len(data).to_bytes(4, "big") + data


def _utf8(text: str, where: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise _not_unicode(where) from None


def _not_unicode(where: str) -> DigestError:
    return DigestError(f"{where!r}: text is not valid Unicode (lone surrogate).")
