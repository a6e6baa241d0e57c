import ipaddress
import json
import math
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from broker.model.filter_match import (
    Branch,
    KeyTest,
    anything_but_prefix,
    anything_but_suffix,
    anything_but_values,
    attributes_view,
    body_view,
    cidr_predicate,
    ignore_case_predicate,
    number,
    numeric_predicate,
    prefix_predicate,
    suffix_predicate,
    typed,
    within_numeric_limit,
)


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
        "big": ("1e999",),
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
    assert body_view('{"x": 1' + "0" * 400 + "}") == {"x": (math.inf,)}


def test_body_view_survives_deep_nesting():
    deep = '{"k": ' + "[" * 5_000 + "1" + "]" * 5_000 + "}"
    assert body_view(deep) in (None, {"k": (1.0,)})  # never a RecursionError


def test_typed_values_keep_booleans_and_numbers_apart():
    assert typed(True) != typed(1.0)
    assert typed(1.0) == typed(number(1))
    assert number(10**400) == math.inf
    assert number(-(10**400)) == -math.inf


def test_numbers_are_cut_to_five_decimals_within_one_billion():
    # subscription-filter-policy-constraints.md: -10^9 .. 10^9, five digits after the point.
    assert number(1.000001) == 1.0
    assert number(1.000019) == 1.00001
    assert number(0.29) == 0.29  # from its decimal text, not 0.28999999999999998
    assert number(-0.000001) == -0.00001  # toward -inf, as a fixed-point cut
    assert number(301.5) == 301.5
    assert number(1e9) == 1e9
    assert number(1_000_000_000.000001) == 1_000_000_000.000001  # beyond: left alone
    assert number(-3e9) == -3e9
    assert within_numeric_limit(-(10**9))
    assert within_numeric_limit(10**9)
    assert not within_numeric_limit(10**9 + 1)
    assert not within_numeric_limit(10**400)


def test_numeric_conditions_never_match_numbers_beyond_the_limit():
    anything = numeric_predicate(-math.inf, False, math.inf, False)
    assert anything(1e9)
    assert anything(-1e9)
    assert not anything(1_000_000_000.5)
    assert not anything(-2e9)
    assert not anything(math.inf)
    # Exact literals still compare them: they are not numeric conditions.
    assert Branch((KeyTest("k", exact=frozenset({typed(number(5e9))})),)).matches({"k": (5e9,)})


def test_attribute_numbers_are_read_at_the_same_precision():
    view = attributes_view({"n": {"DataType": "Number", "StringValue": "2.500009"}})
    assert view == {"n": (2.5,)}


@given(raw=st.floats(-2e9, 2e9) | st.integers(-(2**60), 2**60))
def test_the_cut_is_the_floor_of_the_decimal_text_at_five_places(raw):
    cut = number(raw)
    if not within_numeric_limit(raw):
        assert cut == float(raw)
        return
    exact = Fraction(repr(float(raw)))
    assert cut == float(Fraction(math.floor(exact * 100_000), 100_000))


def test_predicates():
    assert prefix_predicate("ab")("abc")
    assert not prefix_predicate("ab")(None)
    assert suffix_predicate("bc")("abc")
    assert ignore_case_predicate("ÄbC")("äBc")
    between = numeric_predicate(0, False, 10, True)
    assert between(10.0)
    assert not between(0.0)
    assert not between(True)  # booleans are not numbers
    assert not between("5")
    network = ipaddress.ip_network("10.0.0.0/8")
    assert cidr_predicate(network)("10.9.9.9")
    assert not cidr_predicate(network)("::1")
    assert not cidr_predicate(network)(7.0)
    assert anything_but_values(frozenset({typed("x")}))(None)
    assert anything_but_prefix("a")("ba")
    assert not anything_but_prefix("a")(1.0)
    assert anything_but_suffix("a")("ab")
    assert not anything_but_suffix("a")("ba")


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
    assert view == expected


@given(values=st.none() | st.lists(scalars, max_size=4))
def test_exists_true_and_false_are_complements(values):
    found = None if values is None else tuple(values)
    present = KeyTest("k", accepts_present=True).check(found)
    absent = KeyTest("k", accepts_absent=True).check(found)
    assert present != absent
