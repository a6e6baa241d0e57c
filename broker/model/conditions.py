"""IAM policy conditions: the Condition block of a policy statement, checked and evaluated.

A block maps operators to ``{key: value or [values]}``. IAM's rules ("IAM JSON policy
elements: Condition" and "Condition operators", IAM User Guide): every operator in a block
must hold, every key under an operator must hold, and the values listed for one key are
alternatives. A key the request does not carry makes its condition false, except under an
``...IfExists`` operator (true) and ``Null`` (which asks exactly that). ``ForAnyValue:`` and
``ForAllValues:`` compare a multi-valued key value by value; ``ForAllValues:`` over no
values is true. Negated operators (``StringNotEquals``, ``ArnNotLike``, ``NotIpAddress``,
...) hold when the request's value matches none of the listed values.

The request context is a mapping of lower-case key names (IAM key names are
case-insensitive) to the request's values, built by the shell; the time is one of them. A
client's own request carries no ``aws:SourceArn``/``aws:SourceAccount``; a request an AWS
service makes on behalf of a resource does (SNS delivering to a subscribed queue: the topic's
ARN and account, :mod:`broker.model.sns_to_sqs_access`).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from broker.model.globs import compile_glob

Context = Mapping[str, Sequence[str]]
# An assumed-role session: arn:aws:sts::<account>:assumed-role/<role name>/<session name>.
_ROLE_SESSION: Final = re.compile(r"arn:aws:sts::(\d{12}):assumed-role/([^/]+)/[^/]+")
# The keys that differ between two requests of the same caller, action, resource and source.
TIME_KEYS: Final = frozenset({"aws:currenttime", "aws:epochtime"})


class ConditionError(ValueError):
    """A Condition block this evaluator cannot read (unknown operator, malformed value)."""


def _string_like(value: str, pattern: str) -> bool:
    return compile_glob(pattern).fullmatch(value) is not None


def _arn_like(value: str, pattern: str) -> bool:
    # "Each of the six colon-delimited components of the ARN is checked separately and each
    # can include multi-character match wildcards (*) or single-character match wildcards (?)."
    ours, theirs = value.split(":", 5), pattern.split(":", 5)
    if len(ours) != 6 or len(theirs) != 6:
        return False
    return all(_string_like(v, p) for v, p in zip(ours, theirs, strict=True))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _numeric(compare: Callable[[float, float], bool]) -> Callable[[str, str], bool]:
    def match(value: str, pattern: str) -> bool:
        a, b = _number(value), _number(pattern)
        return a is not None and b is not None and compare(a, b)

    return match


def _seconds(text: str) -> float | None:
    """An ISO 8601 date or time, or seconds since the epoch (IAM accepts both)."""
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _date(compare: Callable[[float, float], bool]) -> Callable[[str, str], bool]:
    def match(value: str, pattern: str) -> bool:
        a, b = _seconds(value), _seconds(pattern)
        return a is not None and b is not None and compare(a, b)

    return match


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _in_network(value: str, pattern: str) -> bool:
    network = _network(pattern)
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return network is not None and address.version == network.version and address in network


def _bool(value: str, pattern: str) -> bool:
    return value.lower() == pattern.lower()


def _is_bool(text: str) -> bool:
    return text.lower() in ("true", "false")


def _is_network(text: str) -> bool:
    return _network(text) is not None


def _is_number(text: str) -> bool:
    return _number(text) is not None


def _is_date(text: str) -> bool:
    return _seconds(text) is not None


# Base operator (lower-case) -> (value test, negated, check for a policy value).
_Test = Callable[[str, str], bool]
_OPERATORS: dict[str, tuple[_Test, bool, Callable[[str], bool] | None]] = {
    "stringequals": (str.__eq__, False, None),
    "stringnotequals": (str.__eq__, True, None),
    "stringequalsignorecase": (lambda a, b: a.casefold() == b.casefold(), False, None),
    "stringnotequalsignorecase": (lambda a, b: a.casefold() == b.casefold(), True, None),
    "stringlike": (_string_like, False, None),
    "stringnotlike": (_string_like, True, None),
    "arnequals": (_arn_like, False, None),
    "arnlike": (_arn_like, False, None),
    "arnnotequals": (_arn_like, True, None),
    "arnnotlike": (_arn_like, True, None),
    "bool": (_bool, False, _is_bool),
    "ipaddress": (_in_network, False, _is_network),
    "notipaddress": (_in_network, True, _is_network),
    "numericequals": (_numeric(float.__eq__), False, _is_number),
    "numericnotequals": (_numeric(float.__eq__), True, _is_number),
    "numericlessthan": (_numeric(float.__lt__), False, _is_number),
    "numericlessthanequals": (_numeric(float.__le__), False, _is_number),
    "numericgreaterthan": (_numeric(float.__gt__), False, _is_number),
    "numericgreaterthanequals": (_numeric(float.__ge__), False, _is_number),
    "dateequals": (_date(float.__eq__), False, _is_date),
    "datenotequals": (_date(float.__eq__), True, _is_date),
    "datelessthan": (_date(float.__lt__), False, _is_date),
    "datelessthanequals": (_date(float.__le__), False, _is_date),
    "dategreaterthan": (_date(float.__gt__), False, _is_date),
    "dategreaterthanequals": (_date(float.__ge__), False, _is_date),
    "null": (_bool, False, _is_bool),
}
_SET_PREFIXES = ("foranyvalue:", "forallvalues:")


def _split(operator: str) -> tuple[str, str, bool]:
    """``ForAnyValue:StringLikeIfExists`` -> ("foranyvalue:", "stringlike", True).

    Raises:
        ConditionError: not an operator this evaluator knows.
    """
    name = operator.lower()
    prefix = next((p for p in _SET_PREFIXES if name.startswith(p)), "")
    name = name.removeprefix(prefix)
    if_exists = name.endswith("ifexists") and name != "null"
    name = name.removesuffix("ifexists") if if_exists else name
    if name not in _OPERATORS or (name == "null" and (prefix or if_exists)):
        raise ConditionError(f"unsupported condition operator {operator!r}")
    return prefix, name, if_exists


def _values(raw: Any) -> list[str]:
    """A key's policy values as strings (JSON ``true`` and numbers are written as text).

    Raises:
        ConditionError: a value that is not a string, number or boolean.
    """
    items = raw if isinstance(raw, list) else [raw]
    values = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, (str, int, float)):
            values.append(str(item))
        else:
            raise ConditionError(f"condition value {item!r} is not a string, number or boolean")
    return values


def check(block: Any) -> None:
    """Refuse a Condition block that :func:`holds` could not evaluate as IAM does.

    Raises:
        ConditionError: the block is not an object of objects, names an unknown operator,
            or lists a value its operator cannot read (a number for ``NumericEquals``, ...).
    """
    if not isinstance(block, dict):
        raise ConditionError("Condition must be an object")
    for operator, keys in block.items():
        _prefix, name, _if_exists = _split(operator)
        if not isinstance(keys, dict) or not keys:
            raise ConditionError(f"{operator} must map condition keys to values")
        readable = _OPERATORS[name][2]
        for values in keys.values():
            listed = _values(values)
            if not listed:
                raise ConditionError(f"{operator} lists no values")
            if readable is not None and not all(readable(v) for v in listed):
                raise ConditionError(f"{operator} lists a value it cannot compare")


def _one(test: _Test, negated: bool, value: str, patterns: list[str]) -> bool:
    matched = any(test(value, p) for p in patterns)
    return not matched if negated else matched


def _key_holds(operator: str, key: str, raw: Any, context: Context) -> bool:
    prefix, name, if_exists = _split(operator)
    patterns = _values(raw)
    present = context.get(key.lower())
    if name == "null":
        # "true": the key must be absent; "false": present. Listed values are alternatives.
        return any((p.lower() == "true") == (not present) for p in patterns)
    test, negated, _readable = _OPERATORS[name]
    if prefix == "forallvalues:":
        return all(_one(test, negated, v, patterns) for v in present or ())
    if not present:
        # IAM ("Condition operators"): an absent key matches nothing, except under ...IfExists
        # and except that a negated operator (StringNotEquals, ArnNotLike, NotIpAddress...)
        # then holds: "Deny unless aws:SourceArn is my topic" denies a request without one.
        return if_exists or (negated and not prefix)
    return any(_one(test, negated, v, patterns) for v in present)


def holds(block: Any, context: Context) -> bool:
    """Whether every condition in ``block`` holds for a request with ``context``.

    Args:
        block: a statement's Condition value (parsed JSON).
        context: the request's condition keys, lower-case, to their values.

    Raises:
        ConditionError: the block cannot be read (see :func:`check`).
    """
    if not isinstance(block, dict):
        raise ConditionError("Condition must be an object")
    for operator, keys in block.items():
        if not isinstance(keys, dict):
            raise ConditionError(f"{operator} must map condition keys to values")
        for key, raw in keys.items():
            if not _key_holds(operator, key, raw, context):
                return False
    return True


def keys_read(block: Any) -> frozenset[str]:
    """The condition keys (lower-case) a Condition block compares.

    No other key of a request can change what :func:`holds` answers for the block (or whether
    it raises); a block that is not an object reads none.
    """
    if not isinstance(block, dict):
        return frozenset()
    return frozenset(
        key.lower()
        for keys in block.values()
        if isinstance(keys, dict)
        for key in keys
        if isinstance(key, str)
    )


def role_of_session(principal_arn: str) -> tuple[str, str] | None:
    """The account and role name of an assumed-role session's ARN; None for other principals.

    IAM treats a role session as its role: in a resource policy, the role's ARN as Principal
    covers its sessions, and ``aws:PrincipalArn`` is "the ARN of the role, not the ARN of the
    user that assumed the role" ("AWS global condition context keys", IAM User Guide).
    """
    match = _ROLE_SESSION.fullmatch(principal_arn)
    return (match[1], match[2]) if match else None


def request_context(
    *,
    now_ms: int,
    secure: bool,
    source_ip: str | None,
    principal_arn: str | None,
    principal_account: str | None,
    source_arn: str | None = None,
    source_account: str | None = None,
) -> dict[str, tuple[str, ...]]:
    """The global condition keys of one request ("AWS global condition context keys").

    A None leaves its keys out: anonymous callers carry no principal keys (nor, here, does a
    service), and a client's own request no ``aws:SourceArn``/``aws:SourceAccount`` (AWS: they
    are there only when an AWS service principal calls the resource directly). SNS's
    deliveries to queues carry them: the topic's ARN and the topic owner's account.
    """
    moment = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC)
    context: dict[str, tuple[str, ...]] = {
        "aws:securetransport": ("true" if secure else "false",),
        "aws:currenttime": (moment.strftime("%Y-%m-%dT%H:%M:%SZ"),),
        "aws:epochtime": (str(now_ms // 1000),),
    }
    if source_ip:
        context["aws:sourceip"] = (source_ip,)
    if principal_arn:
        role = role_of_session(principal_arn)
        # A session's ARN carries no role path: its role is named without one.
        arn = f"arn:aws:iam::{role[0]}:role/{role[1]}" if role else principal_arn
        context["aws:principalarn"] = (arn,)
        kind, _, name = principal_arn.split(":", 5)[-1].partition("/")
        if kind == "user" and name:
            context["aws:username"] = (name.rsplit("/", 1)[-1],)
    if principal_account:
        context["aws:principalaccount"] = (principal_account,)
    if source_arn:
        context["aws:sourcearn"] = (source_arn,)
    if source_account:
        context["aws:sourceaccount"] = (source_account,)
    return context
