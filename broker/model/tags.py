"""AWS's rules for resource tags, shared by SQS queues and SNS topics (pure).

From the SQS guide's "Quotas related to queues" and AWS's tagging rules: keys are 1-128
characters and values at most 256; both hold Unicode letters, digits and spaces and
``_ . : / = + - @``; the ``aws:`` prefix, in any case, is reserved for AWS in keys and values.
"""

from __future__ import annotations

import unicodedata
from typing import Final

MAX_TAGS: Final = 50  # per queue or topic (both quotas)
MAX_KEY_CHARACTERS: Final = 128
MAX_VALUE_CHARACTERS: Final = 256
RESERVED_PREFIX: Final = "aws:"
_PUNCTUATION: Final = frozenset("_.:/=+-@")


def tag_problem(key: str, value: str) -> str | None:
    """Why AWS would refuse this tag, or None when it is a valid one."""
    if not 1 <= len(key) <= MAX_KEY_CHARACTERS:
        return f"tag keys must be 1-{MAX_KEY_CHARACTERS} characters"
    if len(value) > MAX_VALUE_CHARACTERS:
        return f"tag values must be at most {MAX_VALUE_CHARACTERS} characters"
    for text in (key, value):
        if text[: len(RESERVED_PREFIX)].lower() == RESERVED_PREFIX:
            return f"the {RESERVED_PREFIX} prefix is reserved for AWS use"
        for character in text:
            if not _allowed(character):
                return (
                    f"{character!r} is not allowed in a tag: use letters, digits, spaces "
                    "and _ . : / = + - @"
                )
    return None


def tag_key_problem(key: str) -> str | None:
    """Why AWS would refuse this tag key (in a tag, or naming one to remove), or None."""
    return tag_problem(key, "")  # an empty value breaks no rule: only the key's are checked


def _allowed(character: str) -> bool:
    if character in _PUNCTUATION:
        return True
    category = unicodedata.category(character)
    return category[0] in "LN" or category == "Zs"
