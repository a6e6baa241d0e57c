from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.tags import tag_key_problem, tag_problem


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("team", "web"),
        ("cost-center/2026", "a.b:c=d+e@f_g"),
        ("Équipe", "données 42"),
        ("k", ""),
        ("k" * 128, "v" * 256),
    ],
)
def test_valid_tags(key, value):
    assert tag_problem(key, value) is None


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("", "v", "1-128"),
        ("k" * 129, "v", "1-128"),
        ("k", "v" * 257, "at most 256"),
        ("aws:owner", "v", "reserved"),
        ("AWS:Owner", "v", "reserved"),
        ("k", "aws:v", "reserved"),
        ("a!b", "v", "not allowed"),
        ("tab\tkey", "v", "not allowed"),
        ("k", "line\nbreak", "not allowed"),
    ],
)
def test_tags_aws_refuses(key, value, reason):
    problem = tag_problem(key, value)
    assert problem is not None
    assert reason in problem


@given(st.text(min_size=1, max_size=20))
def test_a_key_is_refused_exactly_for_a_character_outside_the_documented_set(key):
    # Straight from the quota page: Unicode letters, digits and whitespace, plus _ . : / = + - @
    documented = all(
        c in "_.:/=+-@" or unicodedata.category(c)[0] in "LN" or unicodedata.category(c) == "Zs"
        for c in key
    )
    reserved = key.lower().startswith("aws:")
    assert (tag_problem(key, "v") is None) == (documented and not reserved)


@given(st.text(max_size=130))
def test_a_key_alone_is_judged_as_in_a_tag(key):
    # UntagResource names keys only: the same key rules, no value to break one.
    assert tag_key_problem(key) == tag_problem(key, "")
    assert (tag_key_problem(key) is None) == (tag_problem(key, "v") is None)
