"""JSON as AWS's parsers read it: NaN and Infinity are not JSON (RFC 8259 §6).

Python's ``json.loads`` accepts them, AWS's Jackson refuses them; every document a client
sends (policies, filter policies, structured messages, message bodies read by filter
policies) goes through :func:`loads`, so a ``NaN`` is refused everywhere or nowhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r} is repeated")
            seen.add(key)
    return document


def loads(
    text: str | bytes,
    *,
    parse_float: Callable[[str], Any] | None = None,
    unique_keys: bool = False,
) -> Any:
    """``json.loads`` without NaN, Infinity and -Infinity.

    Args:
        text: the document.
        parse_float: what reads a number with a fraction or an exponent from its text, as
            ``json.loads`` takes it; None for ``float`` (the C fast path).
        unique_keys: refuse an object that repeats a key (``json.loads`` keeps the last),
            where AWS says "Duplicate keys are not allowed".

    Raises:
        ValueError: not JSON (json.JSONDecodeError is one), or a repeated key;
        RecursionError: nested past the parser's depth.
    """
    return json.loads(
        text,
        parse_constant=_refuse_constant,
        parse_float=parse_float,
        object_pairs_hook=_unique_keys if unique_keys else None,
    )
