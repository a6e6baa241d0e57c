"""Hypothesis strategies for SNS filter policies and the messages they filter.

Everything is drawn from small vocabularies so that random policies and random messages
actually meet: a handful of key names (with a dotted one for the body's dotted-key rule), a
handful of strings that prefixes, suffixes, case and CIDR blocks can hit, and a few numbers.
Generated policies are valid by construction and never name the same key path twice (AWS
lets a later duplicate replace an earlier one; that rule has its own example test).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from broker.model.filter_match import MANY_VALUES

KEYS = ("a", "b", "c")
NESTED = "n"
# 'q"' and 'q\\"' meet: attribute-scope policies name quotes and backslashes double-escaped.
STRINGS = ("x", "xy", "yx", "X", "Xy", "10.0.0.7", "10.1.0.1", "::1", "fe80::1", "", 'q"', 'q\\"')
# Numeric operands must lie in -10^9 .. 10^9; 2.500001 equals 2.5 at AWS's five decimals.
NUMBERS = (-1, 0, 1, 2.5, 2.500001, 100, 10**9, -(10**9))
# Valid as exact literals and as message values, beyond what numeric conditions compare.
BEYOND = (1_000_000_000.5, -3e9)

strings = st.sampled_from(STRINGS)
numbers = st.sampled_from(NUMBERS)
nonempty_strings = st.sampled_from([s for s in STRINGS if s])
literals = st.one_of(strings, numbers, st.sampled_from(BEYOND), st.booleans(), st.none())


@st.composite
def numeric_rules(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["=", "<", "<=", ">", ">=", "range"]))
    if kind != "range":
        return {"numeric": [kind, draw(numbers)]}
    # Bounds equal at AWS's five decimals (2.5 and 2.500001) make an empty, refused range.
    pairs = st.lists(numbers, min_size=2, max_size=2, unique=True)
    low, high = sorted(draw(pairs.filter(lambda pair: abs(pair[0] - pair[1]) >= 0.00001)))
    return {
        "numeric": [
            draw(st.sampled_from([">", ">="])),
            low,
            draw(st.sampled_from(["<", "<="])),
            high,
        ]
    }


anything_but_rules = st.one_of(
    strings.map(lambda s: {"anything-but": s}),
    numbers.map(lambda n: {"anything-but": n}),
    st.lists(strings, min_size=1, max_size=3).map(lambda v: {"anything-but": v}),
    st.lists(numbers, min_size=1, max_size=3).map(lambda v: {"anything-but": v}),
    nonempty_strings.map(lambda s: {"anything-but": {"prefix": s}}),
)

rules = st.one_of(
    literals,
    strings.map(lambda s: {"prefix": s}),
    strings.map(lambda s: {"suffix": s}),
    strings.map(lambda s: {"equals-ignore-case": s}),
    anything_but_rules,
    numeric_rules(),
    st.booleans().map(lambda b: {"exists": b}),
    st.sampled_from(["10.0.0.0/24", "10.0.0.0/8", "::/0", "fe80::/10"]).map(lambda c: {"cidr": c}),
)
rule_lists = st.lists(rules, min_size=1, max_size=2)


@st.composite
def policies(draw: st.DrawFn, *, body: bool) -> dict[str, Any]:
    """A valid policy over KEYS (and, for the body scope, the nested object NESTED)."""
    policy: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True)):
        policy[key] = draw(rule_lists)
    if body and draw(st.booleans()):
        inner = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):  # the dotted-key spelling of the nested object
            for key in inner:
                policy[f"{NESTED}.{key}"] = draw(rule_lists)
        else:
            policy[NESTED] = {key: draw(rule_lists) for key in inner}
    if draw(st.booleans()):
        used = set(policy)
        free = [key for key in ("d", "e", "f") if key not in used]
        choices = draw(st.lists(st.sampled_from(free), min_size=2, max_size=2, unique=True))
        policy["$or"] = [{key: draw(rule_lists)} for key in choices]
    return policy


attribute_values = st.one_of(
    strings.filter(bool).map(lambda s: {"DataType": "String", "StringValue": s}),
    st.one_of(numbers, st.sampled_from(BEYOND)).map(
        lambda n: {"DataType": "Number", "StringValue": str(n)}
    ),
    st.lists(literals, max_size=3).map(
        lambda v: {"DataType": "String.Array", "StringValue": json.dumps(v)}
    ),
    st.just({"DataType": "Binary", "BinaryValue": b"\x00"}),
)
message_attributes = st.dictionaries(
    st.sampled_from((*KEYS, "d", "e", "f")), attribute_values, max_size=4
)

json_leaves = st.one_of(literals, st.lists(literals, max_size=3))


@st.composite
def bodies(draw: st.DrawFn) -> str:
    """A JSON object body over the same keys, nested and dotted, sometimes not an object."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from(["[1]", '"text"', "not json", "{}"]))
    document: dict[str, Any] = draw(
        st.dictionaries(st.sampled_from((*KEYS, "d", "e", "f")), json_leaves, max_size=4)
    )
    shape = draw(st.sampled_from(["none", "object", "dotted", "array-of-objects"]))
    inner = draw(st.dictionaries(st.sampled_from(KEYS), json_leaves, min_size=1, max_size=3))
    if shape == "object":
        document[NESTED] = inner
    elif shape == "dotted":
        document.update({f"{NESTED}.{key}": value for key, value in inner.items()})
    elif shape == "array-of-objects":
        other = draw(st.dictionaries(st.sampled_from(KEYS), json_leaves, max_size=2))
        document[NESTED] = [inner, other]
    return json.dumps(document)


def _leaves(policy: dict[str, Any], prefix: str = "") -> list[tuple[str, list[Any]]]:
    found: list[tuple[str, list[Any]]] = []
    for key, value in policy.items():
        if key == "$or" and isinstance(value, list):
            for branch in value:
                found.extend(_leaves(branch, prefix))
        elif isinstance(value, dict):
            found.extend(_leaves(value, f"{prefix}{key}."))
        else:
            found.append((f"{prefix}{key}", value))
    return found


def candidates(rule_list: list[Any]) -> list[Any]:
    """Values likely to hit (or just miss) the rules: their operands and neighbours."""
    values: list[Any] = list(STRINGS) + list(NUMBERS) + list(BEYOND)
    for rule in rule_list:
        if not isinstance(rule, dict):
            values.append(rule)
            continue
        ((name, argument),) = rule.items()
        if name in ("prefix", "suffix", "equals-ignore-case"):
            values += [argument, argument + "y", "y" + argument, argument.upper()]
        elif name == "numeric":
            operands = [n for n in argument if not isinstance(n, str)]
            # the operand, just past it, and within AWS's precision of it either side
            values += operands + [n + 0.5 for n in operands]
            values += [n + 0.000001 for n in operands] + [n - 0.000001 for n in operands]
        elif name == "anything-but":
            if isinstance(argument, dict):
                values += [argument["prefix"], argument["prefix"] + "y"]
            else:
                values += argument if isinstance(argument, list) else [argument]
        elif name == "cidr":
            values += ["10.0.0.7", "10.200.0.1", "::1", "fe80::1"]
    return values


def _near_values(rule_list: list[Any], many: bool) -> st.SearchStrategy[Any]:
    pool = st.sampled_from(candidates(rule_list))
    if many:  # arrays the views summarise (filter_match.ManyValues)
        return st.lists(pool, min_size=MANY_VALUES + 1, max_size=MANY_VALUES + 12)
    return st.one_of(pool, st.lists(pool, min_size=1, max_size=2))


@st.composite
def attributes_near(
    draw: st.DrawFn, policy: dict[str, Any], *, many: bool = False
) -> dict[str, Any]:
    """Message attributes built from the policy's own operands, so matches are common.

    ``many``: every value the policy reads is a String.Array of many elements.
    """
    attributes = draw(message_attributes)
    for path, rule_list in _leaves(policy):
        if not draw(st.integers(0, 4)):
            continue  # leave some keys out
        value = draw(_near_values(rule_list, many))
        if isinstance(value, list):
            attributes[path] = {"DataType": "String.Array", "StringValue": json.dumps(value)}
        elif isinstance(value, str) and value:
            attributes[path] = {"DataType": "String", "StringValue": value}
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[path] = {"DataType": "Number", "StringValue": str(value)}
    return attributes


@st.composite
def bodies_near(draw: st.DrawFn, policy: dict[str, Any], *, many: bool = False) -> str:
    """A JSON body built from the policy's own operands, nested or dotted at random.

    ``many``: every value the policy reads is an array of many elements.
    """
    document: dict[str, Any] = {"z": draw(json_leaves)}
    for path, rule_list in _leaves(policy):
        if not draw(st.integers(0, 4)):
            continue
        value = draw(_near_values(rule_list, many))
        head, dot, tail = path.partition(".")
        if dot and draw(st.booleans()):
            inner = document.setdefault(head, {})
            if isinstance(inner, dict):
                inner[tail] = value
                continue
        document[path] = value
    return json.dumps(document)
