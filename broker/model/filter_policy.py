"""Subscription filter policies: parse, validate with AWS's limits and messages, compile once.

:func:`parse_filter_policy` turns the ``FilterPolicy`` attribute text into a
:class:`FilterPolicy`: a tuple of :class:`~broker.model.filter_match.Branch` objects, the
policy's disjunctive normal form. ``$or`` forks branches; nested keys (body scope) are flattened
to dotted paths. Matching then never looks at JSON again.

Sources, in order of authority:

- the AWS SNS Developer Guide pages ``subscription-filter-policy-constraints``,
  ``string-value-matching``, ``numeric-value-matching``, ``attribute-key-matching``,
  ``and-or-logic`` (the ``$or`` rules) and ``example-filter-policies``;
- AWS's own answers, recorded by LocalStack's AWS-validated snapshot
  ``tests/aws/services/sns/test_sns_filter_policy.snapshot.json`` (every message marked
  "AWS-recorded" below comes from it; AWS appends Jackson's "at [Source: ...]" position, which
  Wharf leaves out);
- the messages of ``aws/event-ruler``'s ``JsonRuleCompiler``, the matching engine whose
  messages those recordings reproduce word for word, for the cases nobody recorded.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, NoReturn, TypeGuard

from broker.model import strict_json
from broker.model.filter_match import (
    AnythingBut,
    AnythingButPrefix,
    AnythingButSuffix,
    Branch,
    Cidr,
    EqualsIgnoreCase,
    KeyTest,
    NumberText,
    NumericRange,
    Predicate,
    Prefix,
    Scalar,
    Suffix,
    TypedValue,
    View,
    cut,
    json_number,
    number,
    typed,
    within_numeric_limit,
)
from broker.model.sns_errors import attribute_error, filter_policy_limit_exceeded

Scope = Literal["MessageAttributes", "MessageBody"]
SCOPES: Final[tuple[Scope, ...]] = ("MessageAttributes", "MessageBody")

# subscription-filter-policy-constraints.md: "A filter policy can have a maximum of five keys"
# (payload-based: only top-level keys count), "The total combination of values in a filter
# policy must not exceed 150", "The maximum size of a filter policy is 256 KB".
MAX_KEYS: Final = 5
MAX_COMBINATIONS: Final = 150
MAX_POLICY_BYTES: Final = 256 * 1024
# "By default, you can have up to 200 filter policies per topic, and 10,000 filter policies per
# AWS account" (same page): check_policy_quota() applies both. A broker is one account.
MAX_POLICIES_PER_TOPIC: Final = 200
MAX_POLICIES_PER_ACCOUNT: Final = 10_000

OR_KEY: Final = "$or"
# and-or-logic.md: "$or" is an OR only if "none of the objects in the "$or" array have field
# names that are reserved keywords"; these are the match-expression names.
RESERVED_KEYWORDS: Final = frozenset(
    {"anything-but", "cidr", "equals-ignore-case", "exists", "numeric", "prefix", "suffix"}
)
# SNS accepts only "prefix" inside anything-but: AWS answered {"anything-but": {"suffix": ...}}
# with "Unsupported anything-but pattern: suffix" (AWS-recorded, 2024-05). The matcher supports
# suffix as well; adding it here is the whole change once AWS accepts it.
ANYTHING_BUT_OPERATORS: Final = frozenset({"prefix"})
NUMERIC_OPERATORS: Final = frozenset({"=", "<", "<=", ">", ">="})

NESTED_IN_ATTRIBUTES_SCOPE: Final = (
    "Filter policy scope MessageAttributes does not support nested filter policy"
)
# The operands of numeric conditions must be within subscription-filter-policy-constraints.md's
# -10^9 .. 10^9. No AWS answer to an operand beyond it has been recorded publicly; the wording
# is event-ruler's ComparableNumber refusal (Java's Double.toString of the bounds) with SNS's
# documented bounds in place of event-ruler's 5.0E9. Exact literals are not checked: event-ruler
# keeps an unrepresentable literal as a text match ("make that condition survivable"), and
# LocalStack's AWS-validated suite found AWS accepting them; Wharf keeps such a literal as its
# NumberText, which matches only a message number written the same way.
NUMERIC_OUT_OF_RANGE: Final = "Value must be between -1.0E9 and 1.0E9, inclusive"
# event-ruler's CIDR.cidr(): the mask as Java's Integer.parseInt reads it (a sign allowed), and
# the shapes an address must have before it is parsed (its Constants.IPv4_REGEX, IPv6_REGEX).
_JAVA_INT: Final = re.compile(r"[+-]?[0-9]+")
_IPV4_SHAPE: Final = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_IPV6_SHAPE: Final = re.compile(r"[0-9a-fA-F:]*:[0-9a-fA-F:]*")


@dataclass(frozen=True, slots=True)
class FilterPolicy:
    """A validated, compiled filter policy.

    Attributes:
        scope: ``MessageAttributes`` or ``MessageBody`` (the subscription's FilterPolicyScope).
        branches: the disjuncts; the policy matches when any branch matches.
        combinations: the complexity AWS limits to 150, as computed by :func:`parse_filter_policy`.
        text: the policy as the client sent it (GetSubscriptionAttributes echoes it).
    """

    scope: Scope
    branches: tuple[Branch, ...]
    combinations: int
    text: str = field(compare=False)

    @property
    def required_keys(self) -> frozenset[str]:
        """The key paths every branch needs present: a message lacking one cannot match.

        The cheapest pre-check there is (a set lookup per key);
        :class:`~broker.model.filter_index.SubscriptionFilterIndex` goes further and hashes
        literal values too.
        """
        per_branch = [
            frozenset(test.path for test in branch.tests if test.requires_path)
            for branch in self.branches
        ]
        return frozenset.intersection(*per_branch)

    def matches(self, view: View | None) -> bool:
        """Tell whether a message view (of this policy's scope) passes the policy.

        Args:
            view: from :func:`~broker.model.filter_match.attributes_view` or
                :func:`~broker.model.filter_match.body_view`; None for a body that is not a
                JSON object.

        Returns:
            True when some branch matches.
        """
        # attribute-key-matching.md: '"exists": false only matches if at least one attribute is
        # present. An empty set of attributes results in the filter not matching.' Every other
        # condition needs a value, so an empty view matches no policy at all. Wharf reads a body
        # with no value anywhere ({}, {"a": []}) the same way; AWS does not document that case.
        if not view:
            return False
        return any(branch.matches(view) for branch in self.branches)


def check_policy_quota(
    *,
    on_topic: int,
    in_account: int,
    per_topic: int = MAX_POLICIES_PER_TOPIC,
    per_account: int = MAX_POLICIES_PER_ACCOUNT,
) -> None:
    """Refuse one more filter policy once the topic or the account holds its quota.

    subscription-filter-policy-constraints.md: the quota "won't stop Amazon SQS queue
    subscriptions from being created", but attaching a policy in Subscribe or
    SetSubscriptionAttributes fails; so call this only when a subscription gains a policy.

    Args:
        on_topic: subscriptions of the topic that have a filter policy now.
        in_account: subscriptions of every topic that have a filter policy now.
        per_topic: the topic quota (``[sns] max_filter_policies_per_topic``).
        per_account: the account quota.

    Raises:
        SnsError: ``FilterPolicyLimitExceeded`` (403) when either quota is reached.
    """
    if on_topic >= per_topic or in_account >= per_account:
        raise filter_policy_limit_exceeded()


def parse_filter_policy(
    text: str, scope: Scope, *, in_attributes_map: bool, stored: bool = False
) -> FilterPolicy | None:
    """Validate and compile a ``FilterPolicy`` attribute value.

    Args:
        text: the attribute value as sent.
        scope: the subscription's ``FilterPolicyScope``.
        in_attributes_map: True for Subscribe (the policy came in its Attributes map), False for
            SetSubscriptionAttributes; AWS words the errors differently for each.
        stored: the policy was validated when it was set, maybe by an earlier Wharf that took
            what AWS refuses (a numeric operand beyond +-1e9 before 29 Nov 2026, a ``cidr``
            event-ruler refuses, such as a /32, before 3 Dec 2026): compile such a one without
            those checks, so that the subscription still loads (a refusal here stopped the
            broker from starting).

    Returns:
        The compiled policy, or None when ``text`` is empty or ``{}`` (no filtering: an empty
        value removes the policy).

    Raises:
        SnsError: ``InvalidParameter`` with AWS's message for the first problem found.
    """
    if not text:
        return None
    parser = _Parser(scope, in_attributes_map, stored)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        parser.fail("Filter policy is too long")  # the limit is AWS's; the wording is not recorded
    try:
        # Numbers beyond the numeric range keep their text, as message numbers do (body_view).
        document = strict_json.loads(text, parse_float=json_number)
    except (ValueError, RecursionError):
        parser.fail("failed to parse JSON.")
    if not isinstance(document, dict):
        parser.fail("Filter is not an object")
    if not document:
        return None
    branches = parser.expand(document, prefix="", depth=1, top=None)
    for branch in branches:
        if len(branch.top_keys) > MAX_KEYS:
            parser.fail("Filter policy can not have more than 5 keys")  # AWS-recorded
    combinations = sum(branch.factor for branch in branches)
    if combinations > MAX_COMBINATIONS:
        parser.fail("Filter policy is too complex")  # AWS-recorded
    compiled = tuple(Branch(tuple(branch.tests.values())) for branch in branches)
    return FilterPolicy(scope=scope, branches=compiled, combinations=combinations, text=text)


@dataclass(slots=True)
class _Partial:
    """A branch under construction: its key tests, its top-level keys, its complexity."""

    tests: dict[str, KeyTest] = field(default_factory=dict)
    top_keys: frozenset[str] = frozenset()
    factor: int = 1

    def join(self, other: _Partial) -> _Partial:
        # A key seen again replaces the earlier one, as event-ruler's compiler does (it puts
        # each key's patterns into the branch map as it reads them).
        return _Partial(
            tests={**self.tests, **other.tests},
            top_keys=self.top_keys | other.top_keys,
            factor=self.factor * other.factor,
        )


class _Parser:
    """One policy's validation walk, in document order, as AWS's streaming parser reports."""

    def __init__(self, scope: Scope, in_attributes_map: bool, stored: bool = False) -> None:
        self.scope = scope
        self.in_attributes_map = in_attributes_map
        self.stored = stored

    def fail(self, reason: str, *, bare: bool = False) -> NoReturn:
        detail = reason if bare else f"FilterPolicy: {reason}"
        raise attribute_error(detail, in_attributes_map=self.in_attributes_map)

    # -- structure ------------------------------------------------------------------------

    def expand(
        self, node: dict[str, object], *, prefix: str, depth: int, top: str | None
    ) -> list[_Partial]:
        """Expand one JSON object of the policy into its branches (DNF)."""
        if not node:
            self.fail("Empty objects are not allowed")
        branches = [_Partial()]
        for key, value in node.items():
            if key == OR_KEY and _is_or(value):
                assert isinstance(value, list)
                alternatives: list[_Partial] = []
                for choice in value:
                    alternatives.extend(self.expand(choice, prefix=prefix, depth=depth, top=top))
                branches = self._cross(branches, alternatives)
                continue
            path = f"{prefix}.{key}" if prefix else key
            top_key = top if top is not None else key
            if isinstance(value, dict):
                inner = self.expand(value, prefix=path, depth=depth + 1, top=top_key)
                # Checked after the children, as AWS reports: {"key": {"suffix": "v"}} gets
                # '"suffix" must be an object or an array', not the scope error (AWS-recorded).
                if self.scope == "MessageAttributes":
                    self.fail(NESTED_IN_ATTRIBUTES_SCOPE, bare=True)
                branches = self._cross(branches, inner)
            elif isinstance(value, list):
                test = self.key_test(path, value)
                # subscription-filter-policy-constraints.md: "multiply the number of values in
                # each array"; for nested keys AWS also multiplies by the key's depth (its
                # example "3 x 4 x 2 x 3 = 72", and a 216-combination nested policy that AWS
                # refused, AWS-recorded "sub-filter-policy-nested-error-too-many-combinations").
                leaf = _Partial({path: test}, frozenset({top_key}), len(value) * depth)
                branches = self._cross(branches, [leaf])
            else:
                self.fail(f'"{key}" must be an object or an array')  # AWS-recorded
        return branches

    def _cross(self, left: list[_Partial], right: list[_Partial]) -> list[_Partial]:
        # Every branch adds at least 1 to the combination count, so more branches than the
        # limit can only end in "too complex": stop before a hostile $or nest eats memory.
        if len(left) * len(right) > MAX_COMBINATIONS:
            self.fail("Filter policy is too complex")
        return [a.join(b) for a in left for b in right]

    # -- one key's array of conditions ------------------------------------------------------

    def key_test(self, path: str, items: list[object]) -> KeyTest:
        exact: set[TypedValue] = set()
        predicates: list[Predicate] = []
        accepts_present = accepts_absent = False
        for item in items:
            if isinstance(item, dict):
                operator = self.match_expression(item)
                if isinstance(operator, bool):
                    accepts_present |= operator
                    accepts_absent |= not operator
                else:
                    predicates.append(operator)
            elif item is None or isinstance(item, (str, bool)) or _is_number(item):
                exact.add(typed(_literal(item)))
            else:
                self.fail("Match value must be String, number, true, false, or null")
        if not items:
            self.fail("Empty arrays are not allowed")
        return KeyTest(
            path=path,
            exact=frozenset(exact),
            predicates=tuple(predicates),
            accepts_present=accepts_present,
            accepts_absent=accepts_absent,
        )

    def match_expression(self, expression: dict[str, object]) -> Predicate | bool:
        """Compile ``{"<operator>": operand}``; ``exists`` compiles to its boolean."""
        if not expression:
            self.fail("Match expression name not found")
        operator, operand = next(iter(expression.items()))
        result: Predicate | bool
        if operator in ("prefix", "suffix", "equals-ignore-case"):
            if not isinstance(operand, str):
                self.fail(f"{operator} match pattern must be a string")  # AWS-recorded
            factories: dict[str, Callable[[str], Predicate]] = {
                "prefix": Prefix,
                "suffix": Suffix,
                "equals-ignore-case": EqualsIgnoreCase,
            }
            result = factories[operator](operand)
        elif operator == "exists":
            if not isinstance(operand, bool):
                self.fail("exists match pattern must be either true or false.")  # AWS-recorded
            result = operand
        elif operator == "numeric":
            result = self.numeric(operand)
        elif operator == "anything-but":
            result = self.anything_but(operand)
        elif operator == "cidr":
            result = self.cidr(operand)
        else:
            self.fail(f"Unrecognized match type {operator}")  # AWS-recorded
        if len(expression) > 1:
            self.fail("Only one key allowed in match expression")  # AWS-recorded
        return result

    def numeric(self, operand: object) -> Predicate:
        # numeric-value-matching.md; the messages are AWS-recorded (test_validate_policy_numeric).
        if not isinstance(operand, list):
            self.fail("Value of numeric must be an array.")
        terms = list(operand)
        if not terms:
            self.fail("Invalid member in numeric match: ]")
        operator = terms[0]
        if not isinstance(operator, str):
            self.fail(f"Invalid member in numeric match: {_token_text(operator)}")
        if operator not in NUMERIC_OPERATORS:
            self.fail(f"Unrecognized numeric range operator: {operator}")
        raw = self._numeric_value(terms, 1, "equals" if operator == "=" else operator)
        if operator in ("=", "<", "<="):
            if len(terms) > 2:
                self.fail("Too many elements in numeric expression")
            value = self._in_range(raw)
            if operator == "=":
                return NumericRange(value, True, value, True)
            return NumericRange(-math.inf, False, value, operator == "<=")
        if len(terms) == 2:
            return NumericRange(self._in_range(raw), operator == ">=", math.inf, False)
        upper_operator = terms[2]
        if not isinstance(upper_operator, str):
            self.fail(f"Bad value in numeric range: {_token_text(upper_operator)}")
        if upper_operator not in ("<", "<="):
            self.fail(f"Bad numeric range operator: {upper_operator}")
        raw_top = self._numeric_value(terms, 3, upper_operator)
        if len(terms) > 4:
            self.fail("Too many terms in numeric range expression")
        # event-ruler checks the bounds once the expression is read, then their order; the
        # order is of the values at AWS's precision: [">", 1.000001, "<", 1.000002] is empty.
        value, top = self._in_range(raw), self._in_range(raw_top)
        if not value < top:
            self.fail("Bottom must be less than top")
        return NumericRange(value, operator == ">=", top, upper_operator == "<=")

    def _numeric_value(
        self, terms: list[object], index: int, name: str
    ) -> int | float | NumberText:
        raw = terms[index] if index < len(terms) else None
        if not _is_number(raw):
            self.fail(f"Value of {name} must be numeric")
        return raw

    def _in_range(self, raw: int | float | NumberText) -> float:
        if isinstance(raw, NumberText) or not within_numeric_limit(raw):
            if self.stored:  # taken before 29 Nov 2026: a bound no comparable number passes
                return float(raw.text) if isinstance(raw, NumberText) else float(raw)
            self.fail(NUMERIC_OUT_OF_RANGE)
        return cut(raw)

    def anything_but(self, operand: object) -> Predicate:
        # string-value-matching.md and numeric-value-matching.md, "anything-but matching".
        if isinstance(operand, dict):
            if not operand:
                self.fail("Anything-But expression name not found")
            name, pattern = next(iter(operand.items()))
            if name not in ANYTHING_BUT_OPERATORS:
                self.fail(f"Unsupported anything-but pattern: {name}")  # AWS-recorded
            if not isinstance(pattern, str):
                self.fail("prefix match pattern must be a string")  # AWS-recorded
            if not pattern:
                self.fail(f"Null {name} not allowed")
            if len(operand) > 1:
                self.fail("Only one key allowed in match expression")
            return AnythingButPrefix(pattern) if name == "prefix" else AnythingButSuffix(pattern)
        if isinstance(operand, list):
            is_text = [isinstance(item, str) for item in operand]
            for item in operand:
                if not isinstance(item, str) and not _is_number(item):
                    self.fail("Inside anything but list, start|null|boolean is not supported.")
                # event-ruler turns each number into its fixed-point form as it reads the list,
                # and has none for a number beyond the range: no text match here.
                if not isinstance(item, str) and not _is_comparable(item) and not self.stored:
                    self.fail(NUMERIC_OUT_OF_RANGE)
            if not operand or (any(is_text) and not all(is_text)):
                self.fail(
                    "Inside anything but list, either all values are number or string, "
                    "mixed type is not supported"
                )
            return AnythingBut(frozenset(typed(_literal(item)) for item in operand))
        if not isinstance(operand, str) and not _is_number(operand):
            self.fail("Value of anything-but must be an array or single string/number value.")
        if not isinstance(operand, str) and not _is_comparable(operand) and not self.stored:
            self.fail(NUMERIC_OUT_OF_RANGE)
        return AnythingBut(frozenset({typed(_literal(operand))}))

    def cidr(self, operand: object) -> Predicate:
        # string-value-matching.md, "IP address matching"; IPv4 and IPv6. The checks, their
        # order and their messages are event-ruler's CIDR.cidr(), whose messages AWS answers.
        if not isinstance(operand, str):
            self.fail("prefix match pattern must be a string")  # sic: AWS's wording for cidr
        fields = operand.split("/")
        while fields and not fields[-1]:
            fields.pop()  # Java's String.split drops trailing empty fields: "10.0.0.0/" has one
        if len(fields) != 2:
            self.fail("Malformed CIDR, one '/' required")
        address, mask = fields
        if _JAVA_INT.fullmatch(mask) is None or not -(2**31) <= int(mask) < 2**31:
            self.fail("Malformed CIDR, mask bits must be an integer")  # Integer.parseInt's
        bits = int(mask)
        if bits < 0:
            self.fail("Malformed CIDR, mask bits must not be negative")
        if self.stored:  # what Wharf took before 3 Dec 2026 (parse_filter_policy's ``stored``)
            return Cidr(ipaddress.ip_network(f"{address}/{bits}", strict=False))
        if _IPV4_SHAPE.fullmatch(address) is None and _IPV6_SHAPE.fullmatch(address) is None:
            self.fail(f"Nonstandard IP address: {address}")
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            self.fail(f"Invalid IP address: {address}")
        # event-ruler refuses a full-length mask (one address): /32 and /128 are refused too.
        if parsed.version == 4 and bits > 31:
            self.fail("IPv4 mask bits must be < 32")
        if parsed.version == 6 and bits > 127:
            self.fail("IPv6 mask bits must be < 128")
        return Cidr(ipaddress.ip_network((parsed, bits), strict=False))


def _is_or(value: object) -> bool:
    """Apply and-or-logic.md's three conditions for "$or" to be an OR and not a key name."""
    if not isinstance(value, list) or len(value) < 2:
        return False
    return all(
        isinstance(choice, dict) and not (RESERVED_KEYWORDS & choice.keys()) for choice in value
    )


def _is_number(item: object) -> TypeGuard[int | float | NumberText]:
    """True for a JSON number as the policy parse reads it (int, float or NumberText)."""
    return isinstance(item, (int, float, NumberText)) and not isinstance(item, bool)


def _is_comparable(item: object) -> bool:
    """True for a number within AWS's numeric range (False for a NumberText: it is beyond)."""
    return isinstance(item, (int, float)) and within_numeric_limit(item)


def _literal(item: object) -> Scalar:
    if item is None or isinstance(item, (str, bool, NumberText)):
        return item
    if isinstance(item, (int, float)):
        return number(item)
    raise TypeError(item)  # pragma: no cover - callers check the type first


def _token_text(item: object) -> str:
    # What Jackson's getText() shows for the offending token in AWS's messages.
    if isinstance(item, list):
        return "["
    if isinstance(item, dict):
        return "{"
    if isinstance(item, NumberText):
        return item.text
    return json.dumps(item) if not isinstance(item, str) else item
