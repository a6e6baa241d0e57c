"""AWS's SQS message digests written out from the SQS Developer Guide, as test oracles.

Independent of ``proto/aws/md5.py`` on purpose: the broker's digests are checked against
this reading of AWS's documentation (and, elsewhere, against botocore's own computation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def expected_attributes_md5(attributes: Mapping[str, Mapping[str, Any]]) -> str:
    """MD5OfMessageAttributes ("Calculating the MD5 message digest for message attributes",
    SQS Developer Guide): per attribute, in order of name, the 4-byte big-endian length and
    UTF-8 bytes of the name and of the data type, then 1 + length + value for a string value
    or 2 + length + bytes for a binary one. Binary values are bytes."""

    def prefixed(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    buffer = b""
    for name in sorted(attributes):
        value = attributes[name]
        buffer += prefixed(name.encode()) + prefixed(value["DataType"].encode())
        if "StringValue" in value:
            buffer += b"\x01" + prefixed(value["StringValue"].encode())
        else:
            buffer += b"\x02" + prefixed(bytes(value["BinaryValue"]))
    return md5_hex(buffer)
