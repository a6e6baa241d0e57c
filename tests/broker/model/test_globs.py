"""IAM globs: the same answers as a reference matcher, and no backtracking blow-up."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.model.globs import compile_glob, translate


def reference(glob: str, text: str) -> bool:
    """Straight from the definition, by dynamic programming: ``*`` any run, ``?`` one char."""

    @cache
    def match(g: int, t: int) -> bool:
        if g == len(glob):
            return t == len(text)
        if glob[g] == "*":
            return match(g + 1, t) or (t < len(text) and match(g, t + 1))
        return t < len(text) and glob[g] in ("?", text[t]) and match(g + 1, t + 1)

    return match(0, 0)


@pytest.mark.parametrize(
    ("glob", "text", "expected"),
    [
        ("*", "", True),
        ("*", "anything at all", True),
        ("?", "", False),
        ("?", "x", True),
        ("a*b", "ab", True),
        ("a*b", "a-b-", False),
        (
            "arn:aws:sqs:*:123456789012:orders-*",
            "arn:aws:sqs:us-east-1:123456789012:orders-eu",
            True,
        ),
        (
            "arn:aws:sqs:*:123456789012:orders-*",
            "arn:aws:sqs:us-east-1:999999999999:orders-eu",
            False,
        ),
        ("sqs:Send*", "sqs:SendMessage", True),
        ("a.b", "axb", False),  # regular-expression characters are literal
        ("*a*a*b", "aab", True),
        ("**", "x", True),
    ],
)
def test_examples(glob, text, expected):
    assert (compile_glob(glob).fullmatch(text) is not None) is expected
    assert reference(glob, text) is expected


def test_case_is_ignored_only_when_asked():
    assert compile_glob("SQS:send*", ignore_case=True).fullmatch("sqs:SendMessage")
    assert not compile_glob("SQS:send*").fullmatch("sqs:SendMessage")


def test_a_glob_built_to_backtrack_answers_at_once():
    # With ``*`` as plain ``.*`` this took minutes on one core (found by the wire fuzz test):
    # 80 characters, six stars, no match. Atomic groups leave one way to try per star.
    glob = "*a" * 30 + "*b"
    assert compile_glob(glob).fullmatch("a" * 80) is None
    assert compile_glob(glob).fullmatch("a" * 80 + "b") is not None
    assert "(?>" in translate(glob)


@settings(max_examples=500)
@given(
    glob=st.text(alphabet="ab*?", max_size=8),
    text=st.text(alphabet="ab", max_size=10),
)
def test_same_answer_as_the_reference(glob, text):
    assert (compile_glob(glob).fullmatch(text) is not None) == reference(glob, text)
