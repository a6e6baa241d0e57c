"""Compiled filter-policy tests and the message views they run against.

:mod:`broker.model.filter_policy` parses a policy once into :class:`Branch` objects (its
disjunctive normal form: a policy matches when any branch matches, a branch when all its key
tests pass). A publish builds one :data:`View` of the message per scope, once, and every
subscription's branches read it; nothing is re-parsed per subscription.

A view maps a key path to the scalar values found there:

- attributes scope: the attribute name to its value, ``Number`` attributes as numbers and
  ``String.Array`` attributes as their elements. AWS "compares policy attributes only to message
  attributes that have the following data types: String, String.Array, Number" and "ignores
  message attributes with the Binary data type" (subscription-filter-policy-constraints.md).
- body scope: the message body must be a JSON object ("Filter policies for the message body
  assume that the message payload is a well-formed JSON object", message-filtering.md). Nested
  keys are joined with ``.``, which is AWS's dotted-key rule: a policy key ``"a.b"`` matches
  both ``{"a": {"b": 1}}`` and ``{"a.b": 1}`` (LocalStack ``filter.py`` and its snapshot tests
  recorded against AWS). Arrays at any depth contribute each element ("any element matches").

Values keep their JSON type: the string ``"5"`` never equals the number ``5``, and ``true`` is
not ``1``. Exact matching compares ``(type, value)`` pairs (:func:`typed`).

Cost: a path holding more than :data:`MANY_VALUES` values (a long body array, a long
``String.Array``) is a :class:`ManyValues`. Every subscription's key tests read the same view,
so its summaries (the distinct typed values, the strings sorted forwards and reversed, the
lowered strings, the comparable numbers sorted, the IP addresses sorted) are built at most
once per path per publish, on first use, and each condition of each subscription then asks
them in O(log n) or O(1) (:meth:`Predicate.any_in`) instead of calling the condition on every
value: one 60,000-element array under 200 subscriptions used to be 24 million predicate
calls, seconds on the event loop. Paths with few values keep the plain loop.

Numbers: "the value can range from -10^9 to 10^9 (-1 billion to 1 billion), with five digits
of accuracy after the decimal point" (subscription-filter-policy-constraints.md). So every
number inside that range, in a policy or a message, is cut to 5 decimal places once, when it
is read (:func:`number`), and every comparison after that sees the cut float: ``1.000001``
equals ``1``, and ``100`` equals ``1e2``. A number outside the range is kept as the text it
was written in, a :class:`NumberText`: it matches no ``numeric`` condition, and an exact
literal matches it only when the literal was written with the same text, so ``10000000000``
does not match ``1e10`` and ``9007199254740993`` does not match ``9007199254740992``. This is
event-ruler's rule (``JsonRuleCompiler``): a number literal becomes an exact match on its text
plus a numeric equality when the number is representable, which "an AWS account number" is
not. The text of a JSON integer is ``str()`` of it (JSON spells an integer beyond the range
one way only); of a JSON fraction or exponent, the characters as written, captured by
:func:`json_number` while parsing; of a ``Number`` attribute, its ``StringValue`` (Publish
accepts it only as a plain numeral, without spaces). Whether a fraction or exponent is inside
the range is decided on the float it reads as. The cut rounds down (toward -inf), as
event-ruler's fixed-point ``ComparableNumber`` did when it worked on doubles, and from the
shortest decimal text of the float, so ``0.29`` stays ``0.29`` despite its binary error.
"""

from __future__ import annotations

import ipaddress
import json
import math
from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from functools import cached_property
from itertools import islice
from typing import Final, TypeGuard

from broker.model import strict_json


@dataclass(frozen=True, slots=True)
class NumberText:
    """A JSON number beyond AWS's numeric range, kept as the text it was written in.

    Not a ``str``: string conditions (prefix, suffix, equals-ignore-case, cidr) never see a
    number, and the string ``"5000000000"`` never equals the number ``5000000000``.

    Attributes:
        text: the number as written (the module docstring says where the text comes from).
    """

    text: str


Scalar = str | float | bool | NumberText | None
View = Mapping[str, tuple[Scalar, ...]]
TypedValue = tuple[type, Scalar]

# subscription-filter-policy-constraints.md, "Numeric matching": -10^9 .. 10^9, five decimals.
NUMERIC_LIMIT: Final = 1_000_000_000
NUMERIC_STEP: Final = Decimal("0.00001")  # the fifth decimal place


def typed(value: Scalar) -> TypedValue:
    """Return the key exact matching compares: the value with its JSON type.

    Args:
        value: a view value or a policy literal.

    Returns:
        ``(type(value), value)``, so that ``True`` and ``1.0`` stay different keys, and so do
        a :class:`NumberText` and a string of the same text.
    """
    return (type(value), value)


def number(raw: int | float) -> float | NumberText:
    """Turn a JSON number into the value every comparison uses, at AWS's precision.

    Args:
        raw: an int or float from ``json.loads`` (floats beyond the range reach here only from
            callers that did not parse with :func:`json_number`).

    Returns:
        Within :data:`NUMERIC_LIMIT`, the float :func:`cut` to 5 decimal places. Beyond it,
        the :class:`NumberText` of the number: ``str()`` of an int (exact at any size),
        ``repr()`` of a float (the text ``json.dumps`` writes for it).
    """
    if isinstance(raw, int):  # the common case first: a body can hold thousands
        if -NUMERIC_LIMIT <= raw <= NUMERIC_LIMIT:
            return float(raw)  # exact within 10^9, and a whole number has no decimals to cut
        return NumberText(str(raw))
    if not -NUMERIC_LIMIT <= raw <= NUMERIC_LIMIT:  # NaN as well: it is in no range
        return NumberText(repr(raw))
    return cut(raw)


def cut(raw: int | float) -> float:
    """Cut a number within :data:`NUMERIC_LIMIT` to 5 decimal places, toward -inf.

    Args:
        raw: an int or float within the limit (beyond it the float would be inexact).

    Returns:
        The float comparisons use.
    """
    if isinstance(raw, int):
        return float(raw)  # exact within 10^9, and a whole number has no decimals to cut
    if raw.is_integer():
        return raw
    # repr() is the shortest text that reads back as this float: cut the decimal the client
    # wrote, not the binary approximation of it (0.29 is 0.28999999999999998 in binary).
    return float(Decimal(repr(raw)).quantize(NUMERIC_STEP, rounding=ROUND_FLOOR))


def json_number(text: str) -> float | NumberText:
    """Read a JSON fraction or exponent: the ``parse_float`` hook of every filtering parse.

    Args:
        text: the number token as written, e.g. ``"2.5"`` or ``"1e400"``.

    Returns:
        The float when it is within :data:`NUMERIC_LIMIT` (not cut yet: :func:`number` cuts
        it), else the :class:`NumberText` of ``text``, so ``1e400`` stays ``1e400``, not inf.
    """
    value = float(text)
    if -NUMERIC_LIMIT <= value <= NUMERIC_LIMIT:
        return value
    return NumberText(text)


def within_numeric_limit(raw: int | float) -> bool:
    """Tell whether a number is inside the range AWS's numeric matching works in.

    Args:
        raw: a number as parsed (any int, any float).

    Returns:
        True for -10^9 <= raw <= 10^9.
    """
    return -NUMERIC_LIMIT <= raw <= NUMERIC_LIMIT


@dataclass(frozen=True, slots=True)
class KeyTest:
    """Every condition a policy puts on one key path, within one branch.

    The conditions in a key's array are ORed: the test passes when any of them accepts any value
    found at the path, or when an ``exists`` condition agrees with whether the key is there.

    Attributes:
        path: the key path (attribute name, or dotted body path).
        exact: typed literals, any of which matches an equal value.
        predicates: the other value conditions (prefix, numeric, anything-but...).
        accepts_present: a ``{"exists": true}`` condition is in the array.
        accepts_absent: a ``{"exists": false}`` condition is in the array.
    """

    path: str
    exact: frozenset[TypedValue] = frozenset()
    predicates: tuple[Predicate, ...] = ()
    accepts_present: bool = False
    accepts_absent: bool = False

    def check(self, values: tuple[Scalar, ...] | None) -> bool:
        """Tell whether the values found at the path satisfy this key's conditions.

        Args:
            values: the view's values for the path (a :class:`ManyValues` when there are
                many), or None when the path is absent.

        Returns:
            True when the key's conditions pass.
        """
        if self.accepts_absent or self.accepts_present:
            # AWS: "exists": true needs "a non-null and non-empty value"; a key holding only
            # nulls and empty strings therefore counts as absent for both exists forms
            # (attribute-key-matching.md).
            if values is None:
                present = False
            elif isinstance(values, ManyValues):
                present = values.present
            else:
                present = any(value is not None and value != "" for value in values)
            if self.accepts_absent and not present:
                return True
            if self.accepts_present and present:
                return True
        if values is None:
            return False
        exact = self.exact
        if isinstance(values, ManyValues):
            # Every subscription reads the same summaries: no pass over the values here.
            if exact and not exact.isdisjoint(values.typed_values):
                return True
            return any(predicate.any_in(values) for predicate in self.predicates)
        for value in values:
            if exact and (type(value), value) in exact:
                return True
            for predicate in self.predicates:
                if predicate(value):
                    return True
        return False

    @property
    def requires_path(self) -> bool:
        """True when the test can pass only if the path is in the view at all."""
        return not self.accepts_absent

    @property
    def exact_only(self) -> bool:
        """True when the test is a plain list of literals (the index can hash it)."""
        return (
            bool(self.exact)
            and not self.predicates
            and not self.accepts_present
            and not self.accepts_absent
        )


@dataclass(frozen=True, slots=True)
class Branch:
    """One disjunct of a policy: all its key tests must pass."""

    tests: tuple[KeyTest, ...]

    def matches(self, view: View) -> bool:
        """Tell whether the message view satisfies every key test of this branch."""
        return all(test.check(view.get(test.path)) for test in self.tests)


# --- value predicates, built once per policy, and the value summaries they read -----------


# A view wraps a path's values in ManyValues past this many: below it the plain loop over
# values and predicates is cheaper than building any summary.
MANY_VALUES: Final = 8


class ManyValues(tuple[Scalar, ...]):
    """The values at one view path when there are many, with summaries for :class:`Predicate`.

    A tuple of the values like any other view entry. Each summary is computed on first use and
    kept, so every condition of every subscription reading the view shares it (the module
    docstring, "Cost").
    """

    @cached_property
    def present(self) -> bool:
        """Whether some value is neither null nor ``""`` (what ``exists`` asks)."""
        return any(value is not None and value != "" for value in self)

    @cached_property
    def typed_values(self) -> frozenset[TypedValue]:
        """The distinct values as exact matching compares them (:func:`typed`)."""
        return frozenset((type(value), value) for value in self)

    @cached_property
    def strings(self) -> tuple[str, ...]:
        """The distinct strings, sorted: the strings with a given prefix are one run of it."""
        return tuple(sorted({value for value in self if isinstance(value, str)}))

    @cached_property
    def reversed_strings(self) -> tuple[str, ...]:
        """The distinct strings reversed, sorted: a suffix is a prefix of these."""
        return tuple(sorted(value[::-1] for value in self.strings))

    @cached_property
    def folded(self) -> frozenset[str]:
        """The strings as ``equals-ignore-case`` compares them."""
        return frozenset(value.lower() for value in self.strings)

    @cached_property
    def numbers(self) -> tuple[float, ...]:
        """The distinct numbers numeric conditions compare (within the limit), sorted."""
        return tuple(sorted({value for value in self if _numeric(value)}))

    @cached_property
    def addresses(self) -> dict[int, tuple[int, ...]]:
        """IP version -> the distinct strings that are IP addresses of it, as sorted integers."""
        found: dict[int, set[int]] = {4: set(), 6: set()}
        for value in self.strings:
            address = _ip_address(value)
            if address is not None:
                found[address.version].add(int(address))
        return {version: tuple(sorted(ints)) for version, ints in found.items()}


class Predicate(ABC):
    """A value condition of a policy (prefix, numeric, anything-but...), built once per policy.

    Called with one value, it tells whether that value matches; :meth:`any_in` answers the same
    for a whole :class:`ManyValues` from its summaries, without a call per value. For any
    values, ``p.any_in(ManyValues(values)) == any(p(v) for v in values)``.
    """

    __slots__ = ()

    @abstractmethod
    def __call__(self, value: Scalar) -> bool:
        """Tell whether ``value`` matches."""

    @abstractmethod
    def any_in(self, values: ManyValues) -> bool:
        """Tell whether any of ``values`` matches."""


class Prefix(Predicate):
    """Match strings that start with ``prefix`` (string-value-matching.md, prefix matching)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, value: Scalar) -> bool:
        return isinstance(value, str) and value.startswith(self.prefix)

    def any_in(self, values: ManyValues) -> bool:
        return _run_starts(values.strings, self.prefix)


class Suffix(Predicate):
    """Match strings that end with ``suffix``."""

    __slots__ = ("reversed", "suffix")

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.reversed = suffix[::-1]

    def __call__(self, value: Scalar) -> bool:
        return isinstance(value, str) and value.endswith(self.suffix)

    def any_in(self, values: ManyValues) -> bool:
        return _run_starts(values.reversed_strings, self.reversed)


class EqualsIgnoreCase(Predicate):
    """Match strings equal to ``expected`` when case is ignored (``equals-ignore-case``)."""

    __slots__ = ("folded",)

    def __init__(self, expected: str) -> None:
        self.folded = expected.lower()

    def __call__(self, value: Scalar) -> bool:
        return isinstance(value, str) and value.lower() == self.folded

    def any_in(self, values: ManyValues) -> bool:
        return self.folded in values.folded


class NumericRange(Predicate):
    """Match numbers in a range; ``=`` is the range [x, x]. Strings and booleans never match.

    Neither do numbers beyond :data:`NUMERIC_LIMIT` (views hold them as :class:`NumberText`;
    a float beyond it is refused as well): AWS documents numeric matching for -10^9 .. 10^9
    only, and its engine cannot place a larger number in any range.

    Args:
        low: the lower bound (``-inf`` when open).
        low_inclusive: whether ``low`` itself matches.
        high: the upper bound (``inf`` when open).
        high_inclusive: whether ``high`` itself matches.
    """

    __slots__ = ("high", "high_inclusive", "low", "low_inclusive")

    def __init__(self, low: float, low_inclusive: bool, high: float, high_inclusive: bool) -> None:
        self.low = low
        self.low_inclusive = low_inclusive
        self.high = high
        self.high_inclusive = high_inclusive

    def __call__(self, value: Scalar) -> bool:
        return _numeric(value) and self._above(value) and self._below(value)

    def any_in(self, values: ManyValues) -> bool:
        numbers = values.numbers
        bisect = bisect_left if self.low_inclusive else bisect_right
        first = bisect(numbers, self.low)  # the smallest number past the low bound
        return first < len(numbers) and self._below(numbers[first])

    def _above(self, value: float) -> bool:
        return value >= self.low if self.low_inclusive else value > self.low

    def _below(self, value: float) -> bool:
        return value <= self.high if self.high_inclusive else value < self.high


class Cidr(Predicate):
    """Match strings that are IP addresses inside ``network`` (string-value-matching.md)."""

    __slots__ = ("first", "last", "network")

    def __init__(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        self.network = network
        self.first = int(network.network_address)
        self.last = int(network.broadcast_address)

    def __call__(self, value: Scalar) -> bool:
        if not isinstance(value, str):
            return False
        address = _ip_address(value)
        return (
            address is not None
            and address.version == self.network.version
            and address in self.network
        )

    def any_in(self, values: ManyValues) -> bool:
        addresses = values.addresses[self.network.version]
        index = bisect_left(addresses, self.first)
        return index < len(addresses) and addresses[index] <= self.last


class AnythingBut(Predicate):
    """Match any value that equals none of ``excluded`` (typed, as exact matching compares)."""

    __slots__ = ("excluded",)

    def __init__(self, excluded: frozenset[TypedValue]) -> None:
        self.excluded = excluded

    def __call__(self, value: Scalar) -> bool:
        return (type(value), value) not in self.excluded

    def any_in(self, values: ManyValues) -> bool:
        # Among len(excluded) + 1 distinct values one at least is not excluded.
        distinct = islice(values.typed_values, len(self.excluded) + 1)
        return any(value not in self.excluded for value in distinct)


class AnythingButPrefix(Predicate):
    """Match strings that do not start with ``prefix`` (``{"anything-but": {"prefix": ...}}``)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, value: Scalar) -> bool:
        return isinstance(value, str) and not value.startswith(self.prefix)

    def any_in(self, values: ManyValues) -> bool:
        return _outside_run(values.strings, self.prefix)


class AnythingButSuffix(Predicate):
    """Match strings that do not end with ``suffix`` (``{"anything-but": {"suffix": ...}}``)."""

    __slots__ = ("reversed", "suffix")

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.reversed = suffix[::-1]

    def __call__(self, value: Scalar) -> bool:
        return isinstance(value, str) and not value.endswith(self.suffix)

    def any_in(self, values: ManyValues) -> bool:
        return _outside_run(values.reversed_strings, self.reversed)


def _numeric(value: Scalar) -> TypeGuard[float]:
    """True for a value numeric conditions compare: a float within the limit.

    bool is an int, never a float: excluded. So are numbers beyond the limit (NaN as well):
    beyond what AWS's numeric matching can represent.
    """
    return isinstance(value, float) and -NUMERIC_LIMIT <= value <= NUMERIC_LIMIT


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _run_starts(ordered: tuple[str, ...], prefix: str) -> bool:
    """Whether a string of ``ordered`` (sorted) starts with ``prefix``.

    The strings that do are the run of ``ordered`` beginning at the first one >= ``prefix``.
    """
    index = bisect_left(ordered, prefix)
    return index < len(ordered) and ordered[index].startswith(prefix)


def _outside_run(ordered: tuple[str, ...], prefix: str) -> bool:
    """Whether a string of ``ordered`` (sorted) does not start with ``prefix``.

    Those that do form one contiguous run: all do exactly when the first and the last do.
    """
    return bool(ordered) and not (ordered[0].startswith(prefix) and ordered[-1].startswith(prefix))


def _values(items: Sequence[Scalar]) -> tuple[Scalar, ...]:
    """A path's values as a view holds them: many of them in a :class:`ManyValues`."""
    return ManyValues(items) if len(items) > MANY_VALUES else tuple(items)


# --- message views -------------------------------------------------------------------------


def attributes_view(
    attributes: Mapping[str, Mapping[str, object]] | None,
) -> dict[str, tuple[Scalar, ...]]:
    """Build the view of a message's attributes that attribute-scope policies read.

    Args:
        attributes: name -> ``{"DataType": ..., "StringValue": ...}`` (or ``BinaryValue``),
            the shape ``proto.aws.sns_shapes`` decodes Publish's MessageAttributes into.

    Returns:
        Name -> values. Binary attributes are left out (AWS ignores them); a ``Number`` is a
        float within :data:`NUMERIC_LIMIT`, its ``StringValue`` as a :class:`NumberText`
        beyond it, and a string when the text is no number at all (Publish refuses those); a
        ``String.Array`` contributes its scalar elements, numbers read as in a body (nested
        arrays and objects inside it match nothing).
    """
    view: dict[str, tuple[Scalar, ...]] = {}
    for name, attribute in (attributes or {}).items():
        data_type = attribute.get("DataType")
        text = attribute.get("StringValue")
        if not isinstance(data_type, str) or not isinstance(text, str):
            continue  # Binary attributes carry BinaryValue only
        if data_type == "String.Array":
            view[name] = _values(
                [
                    _escaped(item) if isinstance(item, str) else item
                    for item in _array_elements(text)
                ]
            )
        elif data_type == "Number" or data_type.startswith("Number."):
            view[name] = (_number_text(text),)
        elif data_type == "String" or data_type.startswith("String."):
            view[name] = (_escaped(text),)
    return view


def _escaped(text: str) -> str:
    """An attribute's string as attribute-scope policies compare it: with ``"`` and ``\\``
    escaped once, so a policy names them double-escaped in its JSON, as AWS requires
    ("Policy constraints for attribute-based filtering", subscription-filter-policy-constraints).
    """
    if '"' not in text and "\\" not in text:
        return text
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _array_elements(text: str) -> tuple[Scalar, ...]:
    try:
        document = json.loads(text, parse_float=json_number)
    except (ValueError, RecursionError):
        return (text,)  # Publish validation rejects this; match it as the plain string
    if not isinstance(document, list):
        return (text,)
    return tuple(_scalar(item) for item in document if _is_scalar(item))


def _number_text(text: str) -> Scalar:
    try:
        value = float(text)
    except ValueError:
        return text
    if math.isnan(value):
        return text
    if not -NUMERIC_LIMIT <= value <= NUMERIC_LIMIT:
        return NumberText(text)  # its text is the number: a float would lose digits
    return cut(value)


def _is_scalar(item: object) -> bool:
    return item is None or isinstance(item, (str, bool, int, float, NumberText))


def _scalar(item: object) -> Scalar:
    if isinstance(item, (bool, str, NumberText)) or item is None:
        return item
    if isinstance(item, (int, float)):
        return number(item)
    raise TypeError(item)  # pragma: no cover - callers filter with _is_scalar


def path_prefixes(paths: Iterable[str]) -> frozenset[str]:
    """The body paths a walk must build to reach ``paths``: each, and each of its dot-prefixes.

    Keys are joined with ``.``, so a path ``p`` can lead to a wanted path ``w`` only when ``w``
    is ``p`` or starts with ``p + "."``: exactly when ``p`` is in this set.
    """
    prefixes: set[str] = set()
    for path in paths:
        prefixes.add(path)
        dot = path.find(".")
        while dot != -1:
            prefixes.add(path[:dot])
            dot = path.find(".", dot + 1)
    return frozenset(prefixes)


def body_view(
    body: str, wanted: frozenset[str] | None = None
) -> dict[str, tuple[Scalar, ...]] | None:
    """Build the view of a JSON message body that body-scope policies read.

    Args:
        body: the message text.
        wanted: from :func:`path_prefixes` of the paths the policies read; only those are
            built. A path string per value of the whole body would cost memory quadratic in
            its size (one 32 KB key above 3,000 values: 3,000 strings of 32 KB). None: every
            path.

    Returns:
        Dotted path -> values, or None when the body is not a JSON object or holds no value
        anywhere (then no body-scope policy matches). Otherwise a dict, empty when no wanted
        path has a value (``exists: false`` policies may still match).
    """
    try:
        document = strict_json.loads(body, parse_float=json_number)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    collected: dict[str, list[Scalar]] = {}
    any_value = False
    # An explicit stack, not recursion: a 256 KiB body can nest deeper than Python's stack.
    # None as the path: a part no policy reads, walked only to learn whether a value is there.
    stack: list[tuple[str | None, object]] = [("", document)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for key, child in reversed(list(node.items())):
                if path is None:
                    if not any_value:
                        stack.append((None, child))
                    continue
                child_path = f"{path}.{key}" if path else key
                if wanted is None or child_path in wanted:
                    stack.append((child_path, child))
                elif not any_value:
                    stack.append((None, child))
        elif isinstance(node, list):
            if path is not None or not any_value:
                stack.extend((path, child) for child in reversed(node))
        elif _is_scalar(node):
            any_value = True
            if path is not None:
                collected.setdefault(path, []).append(_scalar(node))
    if not any_value:
        return None
    return {path: _values(values) for path, values in collected.items()}
