"""IAM-style globs (``*`` any run of characters, ``?`` one character) in time linear in the text.

Policies put globs in Resource, Action and Principal values and in StringLike/ArnLike
conditions; their authors are clients. The plain translation (``*`` -> ``.*``) backtracks
exponentially: ``*a*a*a*a*a*a*b`` against a queue ARN of 80 ``a``s kept the event loop busy for
minutes, and no other request was answered meanwhile. So each ``*`` but the last is an atomic
lazy group: the run of literal characters (and ``?``) after it is matched at its leftmost
place and never given back. That loses no match: if the pattern matches at all, it matches
with each middle run at the leftmost place the runs before it leave. The last ``*`` is
greedy, bounded by the end of the text.
"""

from __future__ import annotations

import re
from functools import lru_cache


def _run(text: str) -> str:
    return "".join("." if c == "?" else re.escape(c) for c in text)


def translate(glob: str) -> str:
    """The regular expression (for ``fullmatch``) of ``glob``."""
    head, *middle_and_last = glob.split("*")
    if not middle_and_last:
        return _run(head)
    *middle, last = middle_and_last
    lazy = "".join(f"(?>.*?{_run(part)})" for part in middle if part)
    return f"{_run(head)}{lazy}.*{_run(last)}"


@lru_cache(maxsize=4096)
def compile_glob(glob: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """The compiled :func:`translate` of ``glob`` (cached): use its ``fullmatch``."""
    return re.compile(translate(glob), re.DOTALL | (re.IGNORECASE if ignore_case else 0))
