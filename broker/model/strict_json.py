"""JSON as AWS's parsers read it: NaN and Infinity are not JSON (RFC 8259 §6).

Python's ``json.loads`` accepts them, AWS's Jackson refuses them; every document a client
sends (policies, filter policies, structured messages, message bodies read by filter
policies) goes through :func:`loads`, so a ``NaN`` is refused everywhere or nowhere.
"""

from __future__ import annotations

import json
from typing import Any


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> Any:
    """``json.loads`` without NaN, Infinity and -Infinity.

    Raises:
        ValueError: not JSON (json.JSONDecodeError is one);
        RecursionError: nested past the parser's depth.
    """
    return json.loads(text, parse_constant=_refuse_constant)
