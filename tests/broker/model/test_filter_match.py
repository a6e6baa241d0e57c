import ipaddress
import json
import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.filter_match import (
    MANY_VALUES,
    NUMERIC_LIMIT,
    AnythingBut,
    AnythingButPrefix,
    AnythingButSuffix,
    Branch,
    Cidr,
    EqualsIgnoreCase,
    KeyTest,
    ManyValues,
    NumberText,
    NumericRange,
    Predicate,
    Prefix,
    Scalar,
    Suffix,
    attributes_view,
    body_view,
    json_number,
    number,
    typed,
    within_numeric_limit,
)
from tests.support.sns_filters import BEYOND, NUMBERS, STRINGS


def test_attributes_view_types_values_by_data_type():
    view = attributes_view(
        {
            "s": {"DataType": "String", "StringValue": "5"},
            "n": {"DataType": "Number", "StringValue": "5"},
            "big": {"DataType": "Number", "StringValue": "1e999"},
            "odd": {"DataType": "Number", "StringValue": "five"},
            "a": {"DataType": "String.Array", "StringValue": '["x", 1, true, null, [2], {"k": 3}]'},
            "bad": {"DataType": "String.Array", "StringValue": "[oops"},
            "notlist": {"DataType": "String.Array", "StringValue": '"x"'},
            "custom": {"DataType": "String.custom", "StringValue": "c"},
            "b": {"DataType": "Binary", "BinaryValue": b"\x00"},
            "weird": {"DataType": "Other", "StringValue": "w"},
        }
    )
    assert view == {
        "s": ("5",),
        "n": (5.0,),
        "big": (NumberText("1e999"),),  # beyond the range: its text, not inf
        "odd": ("five",),
        "a": ("x", 1.0, True, None),
        "bad": ("[oops",),
        "notlist": ('\\"x\\"',),  # a plain string, escaped as attribute strings are
        "custom": ("c",),
    }
    assert attributes_view(None) == {}


def test_body_view_flattens_objects_arrays_and_dotted_keys():
    view = body_view(
        json.dumps({"a": {"b": 1, "c": [2, {"d": "x"}, [3]]}, "a.b": True, "e": [], "f": {}})
    )
    assert view == {"a.b": (1.0, True), "a.c": (2.0, 3.0), "a.c.d": ("x",)}
    assert body_view("[1]") is None
    assert body_view("nope") is None
    assert body_view('{"x": NaN}') is None
    assert body_view('{"x": 1' + "0" * 400 + "}") == {"x": (NumberText("1" + "0" * 400),)}


def test_body_view_survives_deep_nesting():
    deep = '{"k": ' + "[" * 5_000 + "1" + "]" * 5_000 + "}"
    assert body_view(deep) in (None, {"k": (1.0,)})  # never a RecursionError


def test_typed_values_keep_booleans_and_numbers_apart():
    assert typed(True) != typed(1.0)
    assert typed(1.0) == typed(number(1))
    assert number(10**400) == NumberText("1" + "0" * 400)
    assert number(-(10**400)) == NumberText("-1" + "0" * 400)
    assert typed(NumberText("5000000000")) != typed("5000000000")


def test_numbers_are_cut_to_five_decimals_within_one_billion():
    # subscription-filter-policy-constraints.md: -10^9 .. 10^9, five digits after the point.
    assert number(1.000001) == 1.0
    assert number(1.000019) == 1.00001
    assert number(0.29) == 0.29  # from its decimal text, not 0.28999999999999998
    assert number(-0.000001) == -0.00001  # toward -inf, as a fixed-point cut
    assert number(301.5) == 301.5
    assert number(1e9) == 1e9
    assert number(1_000_000_000.000001) == NumberText("1000000000.000001")  # beyond: its text
    assert number(-3e9) == NumberText("-3000000000.0")
    assert within_numeric_limit(-(10**9))
    assert within_numeric_limit(10**9)
    assert not within_numeric_limit(10**9 + 1)
    assert not within_numeric_limit(10**400)


def test_numeric_conditions_never_match_numbers_beyond_the_limit():
    anything = NumericRange(-math.inf, False, math.inf, False)
    assert anything(1e9)
    assert anything(-1e9)
    assert not anything(1_000_000_000.5)
    assert not anything(-2e9)
    assert not anything(math.inf)
    assert not anything(NumberText("5000000000"))
    # Exact literals still compare them, by their text: they are not numeric conditions.
    literal = Branch((KeyTest("k", exact=frozenset({typed(number(5 * 10**9))})),))
    assert literal.matches({"k": (NumberText("5000000000"),)})
    assert not literal.matches({"k": (NumberText("5e9"),)})


def test_attribute_numbers_are_read_at_the_same_precision():
    view = attributes_view({"n": {"DataType": "Number", "StringValue": "2.500009"}})
    assert view == {"n": (2.5,)}


@given(raw=st.floats(-2e9, 2e9) | st.integers(-(2**60), 2**60))
def test_the_cut_is_the_floor_of_the_decimal_text_at_five_places(raw):
    cut = number(raw)
    if not within_numeric_limit(raw):
        assert cut == NumberText(str(raw) if isinstance(raw, int) else repr(raw))
        return
    exact = Fraction(repr(float(raw)))
    assert cut == float(Fraction(math.floor(exact * 100_000), 100_000))


def test_numbers_beyond_the_limit_keep_the_text_they_were_written_in():
    # event-ruler matches a number literal by its text, and numerically only when it can
    # represent it: beyond -10^9 .. 10^9 a float would lose digits (2^53 + 1) or overflow.
    body = '{"a": 9007199254740993, "b": 1e400, "c": -1E400, "d": 1e10, "e": 2.5e3, "f": [1e9]}'
    assert body_view(body) == {
        "a": (NumberText("9007199254740993"),),
        "b": (NumberText("1e400"),),
        "c": (NumberText("-1E400"),),
        "d": (NumberText("1e10"),),
        "e": (2500.0,),
        "f": (1e9,),
    }
    attributes = {
        "n": {"DataType": "Number", "StringValue": "9007199254740993"},
        "e": {"DataType": "Number.id", "StringValue": "1.5E10"},
        "i": {"DataType": "Number", "StringValue": "-1000000000"},
        "a": {"DataType": "String.Array", "StringValue": "[12345678901234567891, 1e10, 7]"},
    }
    assert attributes_view(attributes) == {
        "n": (NumberText("9007199254740993"),),
        "e": (NumberText("1.5E10"),),
        "i": (-1e9,),
        "a": (NumberText("12345678901234567891"), NumberText("1e10"), 7.0),
    }
    assert json_number("1e400") == NumberText("1e400")
    assert json_number("-1000000000.5") == NumberText("-1000000000.5")
    assert json_number("1.5") == 1.5  # within the limit: a float, cut later by number()
    # A NumberText is no string: string conditions never see numbers.
    big = NumberText("9007199254740993")
    assert not Prefix("9007")(big)
    assert not Suffix("93")(big)
    assert not EqualsIgnoreCase("9007199254740993")(big)
    assert not Cidr(ipaddress.ip_network("0.0.0.0/0"))(big)
    assert KeyTest("k", accepts_present=True).check((big,))


@given(
    magnitude=st.integers(NUMERIC_LIMIT + 1, 10**30),
    negative=st.booleans(),
    as_float=st.booleans(),
)
def test_a_number_beyond_the_limit_views_as_its_json_text(magnitude, negative, as_float):
    value = -magnitude if negative else magnitude
    raw = float(value) if as_float else value
    text = json.dumps(raw)
    assert body_view(f'{{"k": {text}}}') == {"k": (NumberText(text),)}
    assert body_view(f'{{"k": {text}}}') == {"k": (number(raw),)}
    number_attribute = {"k": {"DataType": "Number", "StringValue": text}}
    assert attributes_view(number_attribute) == {"k": (NumberText(text),)}


def test_predicates():
    assert Prefix("ab")("abc")
    assert not Prefix("ab")(None)
    assert Suffix("bc")("abc")
    assert EqualsIgnoreCase("ÄbC")("äBc")
    between = NumericRange(0, False, 10, True)
    assert between(10.0)
    assert not between(0.0)
    assert not between(True)  # booleans are not numbers
    assert not between("5")
    network = ipaddress.ip_network("10.0.0.0/8")
    assert Cidr(network)("10.9.9.9")
    assert not Cidr(network)("::1")
    assert not Cidr(network)(7.0)
    assert AnythingBut(frozenset({typed("x")}))(None)
    assert AnythingButPrefix("a")("ba")
    assert not AnythingButPrefix("a")(1.0)
    assert AnythingButSuffix("a")("ab")
    assert not AnythingButSuffix("a")("ba")


def test_key_tests_and_branches():
    exists = KeyTest("k", accepts_present=True)
    absent = KeyTest("k", accepts_absent=True)
    assert exists.check(("v",))
    assert not exists.check((None,))  # a null is not "a non-null and non-empty value"
    assert absent.check(None)
    assert absent.check((None,))
    literal = KeyTest("k", exact=frozenset({typed("v")}))
    assert literal.exact_only
    assert literal.requires_path
    assert not KeyTest("k", exact=frozenset({typed("v")}), accepts_absent=True).exact_only
    branch = Branch((literal, KeyTest("j", accepts_absent=True)))
    assert branch.matches({"k": ("v",)})
    assert not branch.matches({"k": ("w",)})
    assert not branch.matches({"k": ("v",), "j": ("present",)})


scalars = st.one_of(
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**53), 2**53),
)


@given(
    document=st.dictionaries(
        st.text(max_size=4).filter(lambda k: "." not in k), scalars, max_size=6
    )
)
def test_a_flat_object_views_as_itself(document):
    view = body_view(json.dumps(document))
    expected = {
        key: (
            (number(value),)
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else (value,)
        )
        for key, value in document.items()
    }
    # An object with no value anywhere views as a body that is not an object: None.
    assert view == (expected or None)


@given(values=st.none() | st.lists(scalars, max_size=4))
def test_exists_true_and_false_are_complements(values):
    found = None if values is None else tuple(values)
    present = KeyTest("k", accepts_present=True).check(found)
    absent = KeyTest("k", accepts_absent=True).check(found)
    assert present != absent


# --- many values: every predicate answers from the summaries what the loop answers ---------

# Strings whose sorted order puts prefix runs next to near misses (the empty string, the
# highest code point), case pairs lower() and casefold() disagree on, IP addresses of both
# versions (one with an IPv6 scope), and the shared vocabulary.
tricky_strings = st.one_of(
    st.sampled_from(STRINGS),
    st.text(alphabet="xyXßẞ.:\U0010ffff", max_size=3),
    st.sampled_from(["ss", "SS", "10.0.0.0", "10.0.0.255", "10.0.1.0", "::", "fe80::1%eth0"]),
)
networks = st.sampled_from(
    ["10.0.0.0/24", "10.0.0.0/8", "10.0.0.7/32", "0.0.0.0/0", "::/0", "fe80::/10", "::1/128"]
).map(ipaddress.ip_network)
bounds = st.sampled_from([-math.inf, math.inf, -1e9, 1e9, 0.0, -0.0, *map(float, NUMBERS)])
# Values as views hold them: numbers through number() (NumberText beyond the limit).
view_values = st.one_of(
    tricky_strings,
    st.sampled_from(NUMBERS + BEYOND).map(number),
    st.floats(-2e9, 2e9).map(number),
    st.booleans(),
    st.none(),
)


KINDS = 8


@st.composite
def value_predicates(draw: st.DrawFn, kinds: range = range(KINDS)) -> Predicate:
    kind = draw(st.sampled_from(kinds))
    text = draw(tricky_strings)
    if kind == 0:
        return Prefix(text)
    if kind == 1:
        return Suffix(text)
    if kind == 2:
        return EqualsIgnoreCase(text)
    if kind == 3:
        return AnythingButPrefix(text)
    if kind == 4:
        return AnythingButSuffix(text)
    if kind == 5:
        return Cidr(draw(networks))
    if kind == 6:
        excluded = draw(st.lists(view_values, min_size=1, max_size=3))
        return AnythingBut(frozenset(typed(value) for value in excluded))
    low, high = sorted(draw(st.lists(bounds, min_size=2, max_size=2)))
    return NumericRange(low, draw(st.booleans()), high, draw(st.booleans()))


def near(predicate: Predicate) -> list[Scalar]:
    """Values on either side of the predicate's edges, so that sums hit and just miss."""
    if isinstance(predicate, (Prefix, AnythingButPrefix, Suffix, AnythingButSuffix)):
        text = (
            predicate.prefix
            if isinstance(predicate, (Prefix, AnythingButPrefix))
            else (predicate.suffix)
        )
        return [text, text + "y", "y" + text, text[:-1], text[1:], text + "\U0010ffff"]
    if isinstance(predicate, EqualsIgnoreCase):
        # lower() and casefold() disagree on "ß": the summary must fold as the call does.
        return [predicate.folded, predicate.folded.upper(), predicate.folded + "y", "ß", "ẞ"]
    if isinstance(predicate, Cidr):
        network = predicate.network
        edges = (predicate.first - 1, predicate.first, predicate.last, predicate.last + 1)
        address = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
        return [str(address(edge)) for edge in edges if 0 <= edge < 2**network.max_prefixlen]
    if isinstance(predicate, AnythingBut):
        return [value for _, value in predicate.excluded]
    assert isinstance(predicate, NumericRange)
    found: list[Scalar] = []
    for bound in (predicate.low, predicate.high):
        found += [bound, math.nextafter(bound, math.inf), math.nextafter(bound, -math.inf)]
    return found


def values_for(predicate: Predicate) -> st.SearchStrategy[list[Scalar]]:
    """Value lists for a predicate: near values among any, near values and one other, or
    only nulls and "" (which ``exists`` reads as absent)."""
    edges = st.sampled_from(near(predicate))
    return st.one_of(
        st.lists(st.one_of(view_values, edges), max_size=30),
        st.tuples(st.lists(edges, max_size=12), view_values).map(lambda p: [*p[0], p[1]]),
        st.lists(st.sampled_from([None, ""]), max_size=12),
    )


@pytest.mark.parametrize("kind", range(KINDS))
@given(data=st.data())
def test_any_in_many_values_is_any_over_the_values(kind, data):
    predicate = data.draw(value_predicates(range(kind, kind + 1)))
    values = data.draw(values_for(predicate))
    many = ManyValues(values)
    assert predicate.any_in(many) == any(predicate(value) for value in values)
    assert predicate.any_in(many) == any(predicate(value) for value in values)  # cached


@given(
    exact=st.lists(view_values, max_size=3),
    predicates=st.lists(value_predicates(), max_size=3),
    accepts_present=st.booleans(),
    accepts_absent=st.booleans(),
    data=st.data(),
)
def test_a_key_test_answers_the_same_on_many_values(
    exact, predicates, accepts_present, accepts_absent, data
):
    test = KeyTest(
        "k",
        exact=frozenset(typed(value) for value in exact),
        predicates=tuple(predicates),
        accepts_present=accepts_present,
        accepts_absent=accepts_absent,
    )
    near_values = [value for predicate in predicates for value in near(predicate)] + exact
    pool = st.one_of(view_values, st.sampled_from(near_values)) if near_values else view_values
    values = data.draw(
        st.one_of(st.lists(pool, max_size=30), st.lists(st.sampled_from([None, ""]), max_size=12))
    )
    assert test.check(ManyValues(values)) == test.check(tuple(values))


def test_many_values_fold_case_as_one_value_does():
    # lower() keeps "ß" (casefold() would make it "ss"): the summary must not differ.
    many = ManyValues(["ß", "ẞ"] * MANY_VALUES)
    assert not EqualsIgnoreCase("SS").any_in(many)
    assert EqualsIgnoreCase("ẞ").any_in(many)


def test_views_summarise_only_paths_with_many_values():
    few, many = list(range(MANY_VALUES)), list(range(MANY_VALUES + 1))
    view = body_view(json.dumps({"few": few, "many": many}))
    assert view is not None
    assert type(view["few"]) is tuple
    assert isinstance(view["many"], ManyValues)
    assert view == {"few": tuple(map(float, few)), "many": tuple(map(float, many))}
    attributes = attributes_view({"many": {"DataType": "String.Array", "StringValue": str(many)}})
    assert isinstance(attributes["many"], ManyValues)
    assert attributes["many"] == tuple(map(float, many))
