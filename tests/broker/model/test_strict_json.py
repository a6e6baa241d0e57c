"""JSON without NaN and Infinity, as AWS's parsers read it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model import strict_json


@pytest.mark.parametrize("text", ["NaN", '{"a": Infinity}', "[-Infinity]"])
def test_non_finite_constants_are_refused(text: str) -> None:
    json.loads(text)  # Python's own parser takes them
    with pytest.raises(ValueError, match="is not JSON"):
        strict_json.loads(text)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(_JSON)
def test_every_json_document_reads_as_json_loads_reads_it(document: object) -> None:
    text = json.dumps(document)
    assert strict_json.loads(text) == json.loads(text)


def test_a_parse_float_hook_sees_fractions_as_written_and_constants_stay_refused() -> None:
    # Filter policies keep numbers beyond AWS's numeric range as their text (filter_match).
    assert strict_json.loads("[1e400, 2.50, 7]", parse_float=str) == ["1e400", "2.50", 7]
    with pytest.raises(ValueError, match="is not JSON"):
        strict_json.loads("[NaN]", parse_float=str)
