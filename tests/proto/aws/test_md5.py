"""MD5 digests of SQS messages, against digests that AWS (or AWS's own SDK tests) produced.

botocore does not check these digests (1.44.8 ``handlers.py`` has no SQS MD5 handler), so the
external oracles are published vectors: values recorded from real SQS by moto and LocalStack,
digests from AWS Lambda SQS event samples, and the "Amazon sample" vectors kept by YDB's SQS
implementation. The hypothesis tests compare against a transcription of the algorithm from the
SQS Developer Guide ("Calculating the MD5 message digest for message attributes") and check
the properties clients depend on.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto.aws.md5 import (
    DigestError,
    md5_of_attributes,
    md5_of_body,
    md5_of_message_attributes,
    md5_of_system_attributes,
)


def number(value: str) -> dict[str, str]:
    return {"DataType": "Number", "StringValue": value}


def string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


@pytest.mark.parametrize(
    ("attributes", "digest"),
    [
        # moto tests/test_sqs (values pinned from AWS) and LocalStack test_sqs_message_attrs_md5.
        ({"timestamp": number("1493147359900")}, "235c5c510d26fb653d073faed50ae77c"),
        ({"timestamp": number("1493147359901")}, "994258b45346a2cc3f9cbb611aa7af30"),
        (
            {"SOME_Valid.attribute-Name": number("1493147359900")},
            "36655e7e9d7c0e8479fa3f3f42247ae7",
        ),
        # AWS Lambda SQS event sample (digest computed by SQS).
        ({"sample-attribute": string("sample-value")}, "7c815262be77a62f56671125069ca888"),
        # "Amazon sample" vectors (ydb-platform/ydb ydb/core/ymq/actor attributes_md5 tests).
        (
            {
                "test_attribute_name_2": string("test_attribute_value_2"),
                "test_attribute_name_1": string("test_attribute_value_1"),
            },
            "d53f3b558fe951154770f25cb63dbba9",
        ),
        (
            {"test_attribute_name": {"DataType": "Binary", "BinaryValue": b"test_attribute_value"}},
            "23f6bd27ea87aab7dfeadcc9aebee495",
        ),
        # sqs-consumer style checksum tests.
        ({"SellerName": string("Example Store")}, "cd28f3b68aeee4b2eac9c66f2f694b58"),
        (
            {
                "City": string("Any City"),
                "PostalCode": string("99065"),
                "Region": string("WA"),
                "SellerName": string("Example Store"),
            },
            "66d793da93becb551e41562575418975",
        ),
        (
            {
                "City": string("Any City"),
                "PostalCode": string("99065"),
                "PricePerGallon": number("1.99"),
                "Region": string("WA"),
                "SellerName": string("Example Store"),
            },
            "10809b55e3d9b22c17220b7dbaf283ef",
        ),
    ],
)
def test_published_attribute_digests(attributes, digest):
    assert md5_of_message_attributes(attributes) == digest


@pytest.mark.parametrize(
    ("body", "digest"),
    [
        ("Sample content.", "b58e1d0a86521415d25b85b89f6ad6cd"),  # AWS Lambda SQS event sample
        ("This is a test message", "fafb00f5732ab283681e124bf8747ed1"),  # SQS API reference
        ("derp", "58fd9edd83341c29f1aebba81c31e257"),  # moto, pinned from AWS
    ],
)
def test_published_body_digests(body, digest):
    assert md5_of_body(body) == digest


def reference_digest(attributes) -> str:
    """The Developer Guide's steps, written out independently of proto.aws.md5."""
    out = b""
    for name in sorted(attributes, key=lambda n: n.encode("utf-8")):
        value = attributes[name]
        for text in (name, value["DataType"]):
            raw = text.encode("utf-8")
            out += struct.pack(">I", len(raw)) + raw
        if "StringValue" in value:
            raw = value["StringValue"].encode("utf-8")
            out += b"\x01" + struct.pack(">I", len(raw)) + raw
        elif "BinaryValue" in value:
            out += b"\x02" + struct.pack(">I", len(value["BinaryValue"])) + value["BinaryValue"]
        elif value.get("StringListValues"):
            out += b"\x03"
            for item in value["StringListValues"]:
                out += struct.pack(">I", len(item.encode())) + item.encode()
        else:
            out += b"\x04"
            for item in value["BinaryListValues"]:
                out += struct.pack(">I", len(item)) + item
    return hashlib.md5(out).hexdigest()


names = st.text(
    st.characters(codec="ascii", categories=("L", "N"), include_characters="_.-"),
    min_size=1,
    max_size=12,
)
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
attribute_values = st.one_of(
    st.builds(
        lambda t, v: {"DataType": t, "StringValue": v},
        st.sampled_from(["String", "Number", "String.json", "Number.int"]),
        texts,
    ),
    st.builds(
        lambda t, v: {"DataType": t, "BinaryValue": v},
        st.sampled_from(["Binary", "Binary.png"]),
        st.binary(max_size=20),
    ),
    st.builds(
        lambda v: {"DataType": "String.Array", "StringListValues": v},
        st.lists(texts, min_size=1, max_size=3),
    ),
    st.builds(
        lambda v: {"DataType": "Binary.Array", "BinaryListValues": v},
        st.lists(st.binary(max_size=5), min_size=1, max_size=3),
    ),
)
attribute_maps = st.dictionaries(names, attribute_values, max_size=10)


@given(attribute_maps)
def test_matches_the_developer_guide_algorithm(attributes):
    assert md5_of_attributes(attributes) == reference_digest(attributes)


@given(attribute_maps, st.randoms())
def test_order_of_the_map_does_not_matter(attributes, random):
    items = list(attributes.items())
    random.shuffle(items)
    assert md5_of_attributes(dict(items)) == md5_of_attributes(attributes)


@given(attribute_maps.filter(bool), st.data())
def test_every_field_counts(attributes, data):
    name = data.draw(st.sampled_from(sorted(attributes)))
    changed = {k: dict(v) for k, v in attributes.items()}
    field = data.draw(
        st.sampled_from([k for k in changed[name] if k != "DataType"] + ["DataType", "name"])
    )
    if field == "name":
        changed[name + "x"] = changed.pop(name)
        if name + "x" in attributes:
            return
    elif field in ("StringValue", "DataType"):
        changed[name][field] += "x"
    elif field == "BinaryValue":
        changed[name][field] += b"x"
    else:
        changed[name][field] = [*changed[name][field], changed[name][field][0]]
    assert md5_of_attributes(changed) != md5_of_attributes(attributes)


def test_length_prefixes_keep_boundaries_apart():
    # Without length prefixes these two would hash the same bytes.
    assert md5_of_attributes({"ab": string("c")}) != md5_of_attributes({"a": string("bc")})


def test_transport_follows_the_value_not_the_type_name():
    png = {"pic": {"DataType": "Binary.png", "BinaryValue": b"\x89PNG"}}
    assert md5_of_attributes(png) == reference_digest(png)


def test_system_attributes_use_the_same_digest():
    trace = {"AWSTraceHeader": string("Root=1-5759e988-bd862e3fe1be46a994272793")}
    assert (
        md5_of_system_attributes(trace)
        == md5_of_message_attributes(trace)
        == reference_digest(trace)
    )


@pytest.mark.parametrize(
    "attributes",
    [
        {"a": {"StringValue": "x"}},
        {"a": {"DataType": "String"}},
        {"a": {"DataType": "String", "StringListValues": []}},
        {"a": {"DataType": "String", "StringValue": "\ud800"}},
    ],
)
def test_undigestable_attributes(attributes):
    with pytest.raises(DigestError):
        md5_of_attributes(attributes)


def test_lone_surrogate_body():
    with pytest.raises(DigestError):
        md5_of_body("\udfff")
