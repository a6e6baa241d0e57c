"""NextTokens: they resume their own listing after their key, and nothing else verifies."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from broker.model.page_tokens import PageTokens

TOKENS = PageTokens(b"k" * 32)
listings = st.sampled_from(
    ["ListTopics", "ListSubscriptions", "ListSubscriptionsByTopic arn:aws:sns:r:1:t"]
)


@given(listings, st.text())
def test_a_token_resumes_its_listing_after_its_key(listing: str, key: str) -> None:
    assert TOKENS.key_of(listing, TOKENS.issue(listing, key)) == key


@given(st.text(max_size=200))
def test_base64_of_a_bare_key_is_no_token(key: str) -> None:
    bare = base64.urlsafe_b64encode(key.encode("utf-8", "surrogatepass")).decode()
    assert TOKENS.key_of("ListTopics", bare) is None


@given(st.text(), st.data())
def test_a_token_does_not_verify_elsewhere_or_edited(key: str, data: st.DataObject) -> None:
    token = TOKENS.issue("ListTopics", key)
    assert TOKENS.key_of("ListSubscriptions", token) is None
    assert PageTokens(b"x" * 32).key_of("ListTopics", token) is None  # the broker before
    raw = bytearray(base64.urlsafe_b64decode(token))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    assert TOKENS.key_of("ListTopics", base64.urlsafe_b64encode(raw).decode()) is None


def test_text_that_is_no_base64_is_no_token() -> None:
    for text in ("%%%", "eg==", "", "é", "=" * 4, "A" * 22):
        assert TOKENS.key_of("ListTopics", text) is None
