"""Shared helpers for the AWS codec tests: value strategies built from our shape tables,
and botocore models turned into the oracles the tests compare against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import botocore.model
import pytest
from hypothesis import strategies as st

from proto.aws.shapes import ListOf, MapOf, Scalar, Shape, Structure
from tests.support.aws_models import botocore_model, sqs_query_model

# XML 1.0 §2.2 Char: the codepoints an XML document can carry at all. Query responses can only
# round-trip these; the JSON protocol carries any string.
_XML_CHARS = st.characters(
    exclude_categories=("Cs",),
    exclude_characters="".join(chr(c) for c in range(0x20) if c not in (0x9, 0xA, 0xD))
    + "\ufffe\uffff",
)
_ANY_CHARS = st.characters(exclude_categories=("Cs",))

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def values_for(shape: Shape, *, xml: bool = False, max_items: int = 3) -> st.SearchStrategy[Any]:
    """Valid values for ``shape``: required members always, optional ones sometimes."""
    text = st.text(_XML_CHARS if xml else _ANY_CHARS, max_size=12)
    if isinstance(shape, Scalar):
        if shape.type == "string":
            return text
        if shape.type == "integer":
            return st.integers(*INT32)
        if shape.type == "long":
            return st.integers(*INT64)
        if shape.type == "boolean":
            return st.booleans()
        return st.binary(max_size=16)
    if isinstance(shape, Structure):
        required = {
            name: values_for(m.shape, xml=xml, max_items=max_items)
            for name, m in shape.members.items()
            if m.required
        }
        optional = {
            name: values_for(m.shape, xml=xml, max_items=max_items)
            for name, m in shape.members.items()
            if not m.required
        }
        return st.fixed_dictionaries(required, optional=optional)
    if isinstance(shape, ListOf):
        return st.lists(values_for(shape.member, xml=xml, max_items=max_items), max_size=max_items)
    return st.dictionaries(
        text, values_for(shape.value, xml=xml, max_items=max_items), max_size=max_items
    )


@pytest.fixture(scope="session")
def aws_values() -> Callable[..., st.SearchStrategy[Any]]:
    return values_for


@pytest.fixture(scope="session")
def sqs_model() -> botocore.model.ServiceModel:
    return botocore_model("sqs")


@pytest.fixture(scope="session")
def sns_model() -> botocore.model.ServiceModel:
    return botocore_model("sns")


@pytest.fixture(scope="session")
def make_sqs_query_model() -> Callable[..., botocore.model.ServiceModel]:
    return sqs_query_model


def drop_empty_maps(shape: Shape, value: Any) -> Any:
    """What survives a trip through botocore's query serializer, which writes nothing at all
    for an empty map (``_serialize_type_map``)."""
    if isinstance(shape, Structure):
        out = {}
        for name, item in value.items():
            spec = shape.members[name].shape
            if isinstance(spec, MapOf) and not item:
                continue
            out[name] = drop_empty_maps(spec, item)
        return out
    if isinstance(shape, ListOf):
        return [drop_empty_maps(shape.member, item) for item in value]
    if isinstance(shape, MapOf):
        return {key: drop_empty_maps(shape.value, item) for key, item in value.items()}
    return value


def drop_empty_flattened(shape: Shape, value: Any) -> Any:
    """What survives a trip through XML, where an empty flattened list or map is no element."""
    if isinstance(shape, Structure):
        out = {}
        for name, item in value.items():
            spec = shape.members[name].shape
            if isinstance(spec, (ListOf, MapOf)) and spec.flattened and not item:
                continue
            out[name] = drop_empty_flattened(spec, item)
        return out
    if isinstance(shape, ListOf):
        return [drop_empty_flattened(shape.member, item) for item in value]
    if isinstance(shape, MapOf):
        return {key: drop_empty_flattened(shape.value, item) for key, item in value.items()}
    return value


@pytest.fixture(scope="session")
def normalizers() -> dict[str, Callable[[Shape, Any], Any]]:
    return {"maps": drop_empty_maps, "flattened": drop_empty_flattened}
