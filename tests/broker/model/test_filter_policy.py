import ipaddress
import json
import math
from fractions import Fraction

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from broker.model.filter_match import attributes_view, body_view
from broker.model.filter_policy import (
    MAX_POLICIES_PER_ACCOUNT,
    MAX_POLICY_BYTES,
    FilterPolicy,
    Scope,
    check_policy_quota,
    parse_filter_policy,
)
from broker.model.sns_errors import SnsError
from tests.support.sns_filters import (
    BEYOND,
    attributes_near,
    bodies,
    bodies_near,
    candidates,
    literals,
    message_attributes,
    numbers,
    numeric_rules,
    policies,
    rules,
)

# --- a reference evaluator written straight from the AWS SNS Developer Guide -------------
# Deliberately naive and independent of broker.model: no DNF, no views, no typed keys. It
# walks the policy recursively and looks every path up in the raw message each time.


class _Written(float):
    """A JSON fraction or exponent that remembers how it was written (a parse_float hook)."""

    def __new__(cls, text):
        written = super().__new__(cls, text)
        written.text = text
        return written


def _text(number):
    # A number's text as its JSON document spelt it: a _Written keeps it; a Python int or
    # float here came from json.dumps (the policies and the generated messages), which
    # writes str() of an int and repr() of a float.
    return number.text if isinstance(number, _Written) else json.dumps(number)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _comparable(number):
    # subscription-filter-policy-constraints.md: numbers "from -10^9 to 10^9 ... with five
    # digits of accuracy after the decimal point": whole hundred-thousandths, cut toward -inf
    # from the number's decimal text; None beyond the range, where numeric matching stops.
    if not -(10**9) <= number <= 10**9:
        return None
    return math.floor(Fraction(repr(float(number))) * 100_000)


def _same(value, literal):
    # string-value-matching / numeric-value-matching "exact matching"; JSON types must agree.
    if literal is None:
        return value is None
    if isinstance(literal, bool):
        return isinstance(value, bool) and value == literal
    if _is_number(literal):
        if not _is_number(value):
            return False
        ours, theirs = _comparable(value), _comparable(literal)
        if ours is None or theirs is None:
            # event-ruler: a number literal is an exact match on its text, plus a numeric one
            # when the number is representable; beyond the range only the text is left.
            return _text(value) == _text(literal)
        return ours == theirs
    return isinstance(value, str) and value == literal


def _operator(name, argument, value):
    if name == "prefix":
        return isinstance(value, str) and value[: len(argument)] == argument
    if name == "suffix":
        return isinstance(value, str) and (not argument or value[-len(argument) :] == argument)
    if name == "equals-ignore-case":
        return isinstance(value, str) and value.lower() == argument.lower()
    if name == "anything-but":
        if isinstance(argument, dict):
            return isinstance(value, str) and not value.startswith(argument["prefix"])
        excluded = argument if isinstance(argument, list) else [argument]
        return not any(_same(value, item) for item in excluded)
    if name == "numeric":
        if not _is_number(value) or _comparable(value) is None:
            return False
        checks = {
            "=": lambda x, n: x == n,
            "<": lambda x, n: x < n,
            "<=": lambda x, n: x <= n,
            ">": lambda x, n: x > n,
            ">=": lambda x, n: x >= n,
        }
        pairs = zip(argument[::2], argument[1::2], strict=True)
        return all(checks[op](_comparable(value), _comparable(n)) for op, n in pairs)
    if name == "cidr":
        if not isinstance(value, str):
            return False
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        network = ipaddress.ip_network(argument, strict=False)
        return address.version == network.version and address in network
    raise AssertionError(name)


def _rule(rule, values):
    # attribute-key-matching: "exists": true needs "a non-null and non-empty value".
    present = values is not None and any(value not in (None, "") for value in values)
    if isinstance(rule, dict):
        ((name, argument),) = rule.items()
        if name == "exists":
            return present == argument
        return values is not None and any(_operator(name, argument, v) for v in values)
    return values is not None and any(_same(value, rule) for value in values)


def _is_or(value):
    # and-or-logic: an array of at least two objects without reserved keyword field names.
    reserved = {
        "prefix",
        "suffix",
        "anything-but",
        "numeric",
        "exists",
        "cidr",
        "equals-ignore-case",
    }
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(item, dict) and not reserved & set(item) for item in value)
    )


def _evaluate(policy, lookup, prefix):
    verdicts = []
    for key, value in policy.items():
        if key == "$or" and _is_or(value):
            verdicts.append(any(_evaluate(branch, lookup, prefix) for branch in value))
        elif isinstance(value, dict):
            verdicts.append(_evaluate(value, lookup, [*prefix, key]))
        else:
            found = lookup(".".join([*prefix, key]))
            verdicts.append(any(_rule(rule, found) for rule in value))
    return all(verdicts)


def _attribute_values(attributes, name):
    attribute = attributes.get(name)
    if attribute is None or attribute["DataType"].startswith("Binary"):
        return None  # "Amazon SNS ignores message attributes with the Binary data type"
    text = attribute["StringValue"]
    if attribute["DataType"] == "String.Array":
        items = json.loads(text, parse_float=_Written)
        return [_as_policies_see(item) for item in items if not isinstance(item, (list, dict))]
    if attribute["DataType"].startswith("Number"):
        return [_Written(text)]  # the attribute's text is the number's text
    return [_as_policies_see(text)]


def _as_policies_see(value):
    # subscription-filter-policy-constraints: attribute-based filtering needs double quotes
    # and backslashes double-escaped in the policy, so the value is compared escaped once.
    if not isinstance(value, str):
        return value
    return "".join("\\" + char if char in '"\\' else char for char in value)


def _body_values(document, path):
    found = []

    def walk(node, keys):
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, [*keys, key])
        elif isinstance(node, list):
            for child in node:
                walk(child, keys)
        elif ".".join(keys) == path:  # the dotted-key rule: "a.b" is a.b however it is spelt
            found.append(node)

    walk(document, [])
    return found or None


def reference_matches(policy, scope, attributes, body):
    if scope == "MessageAttributes":
        usable = {k: v for k, v in attributes.items() if not v["DataType"].startswith("Binary")}
        if not usable:
            return False  # '"exists": false only matches if at least one attribute is present'
        return _evaluate(policy, lambda path: _attribute_values(attributes, path), [])
    try:
        document = json.loads(body, parse_float=_Written)
    except ValueError:
        return False
    if not isinstance(document, dict) or not _has_leaf(document):
        return False  # the body must be a JSON object; an empty one is like no attributes
    return _evaluate(policy, lambda path: _body_values(document, path), [])


def _has_leaf(node):
    if isinstance(node, dict):
        return any(_has_leaf(child) for child in node.values())
    if isinstance(node, list):
        return any(_has_leaf(child) for child in node)
    return True


# --- helpers -----------------------------------------------------------------------------


def compile_policy(policy, scope: Scope = "MessageAttributes") -> FilterPolicy:
    compiled = parse_filter_policy(json.dumps(policy), scope, in_attributes_map=False)
    assert compiled is not None
    return compiled


def error_of(policy, scope: Scope = "MessageAttributes", *, in_map=False) -> str:
    text = policy if isinstance(policy, str) else json.dumps(policy)
    with pytest.raises(SnsError) as caught:
        parse_filter_policy(text, scope, in_attributes_map=in_map)
    assert caught.value.code == "InvalidParameter"
    assert caught.value.status == 400
    return caught.value.message


def attrs(**values):
    typed = {}
    for name, value in values.items():
        if isinstance(value, list):
            typed[name] = {"DataType": "String.Array", "StringValue": json.dumps(value)}
        elif isinstance(value, (int, float)):
            typed[name] = {"DataType": "Number", "StringValue": str(value)}
        else:
            typed[name] = {"DataType": "String", "StringValue": value}
    return typed


def matches_attributes(policy, attributes) -> bool:
    return compile_policy(policy).matches(attributes_view(attributes))


def matches_body(policy, body) -> bool:
    text = body if isinstance(body, str) else json.dumps(body)
    return compile_policy(policy, "MessageBody").matches(body_view(text))


# --- operators, with the AWS Developer Guide's own examples -------------------------------


def test_exact_string_matching_is_case_sensitive():
    policy = {"customer_interests": ["rugby", "tennis"]}
    assert matches_attributes(policy, attrs(customer_interests="rugby"))
    assert matches_attributes(policy, attrs(customer_interests=["rugby", "tennis"]))
    assert not matches_attributes(policy, attrs(customer_interests="baseball"))
    assert not matches_attributes(policy, attrs(customer_interests="Rugby"))
    assert matches_body(policy, {"customer_interests": "tennis"})


def test_exact_numbers_booleans_and_null_keep_their_json_type():
    assert matches_attributes({"price": [100]}, attrs(price=100.0))
    assert matches_attributes(
        {"price": [301.5]}, {"price": {"DataType": "Number", "StringValue": "3.015e2"}}
    )
    assert not matches_attributes({"price": [100]}, attrs(price="100"))  # a String attribute
    assert matches_body({"flag": [True]}, {"flag": True})
    assert not matches_body({"flag": [True]}, {"flag": 1})
    assert not matches_body({"flag": [1]}, {"flag": True})
    assert matches_body({"gone": [None]}, {"gone": None, "other": 1})
    assert not matches_body({"gone": [None]}, {"other": 1})
    # String.Array elements keep their types too.
    assert matches_attributes({"tags": [5]}, attrs(tags=["a", 5]))
    assert matches_attributes({"tags": [None]}, attrs(tags=["a", None]))


def test_exact_numbers_beyond_one_billion_match_only_the_same_text():
    # Beyond -10^9 .. 10^9 AWS does no numeric equality; event-ruler's exact match on the
    # literal's text is what is left (JsonRuleCompiler: "might not be representable ... for
    # example an AWS account number"). A float would make 2^53 + 1 equal 2^53.
    policy = {"id": [9007199254740993]}
    assert matches_body(policy, '{"id": 9007199254740993}')
    assert not matches_body(policy, '{"id": 9007199254740992}')
    assert matches_attributes(policy, attrs(id=9007199254740993))
    assert not matches_attributes(policy, attrs(id=9007199254740992))
    twenty_digits = {"id": [12345678901234567890]}
    assert not matches_body(twenty_digits, '{"id": 12345678901234567891}')
    assert matches_body(twenty_digits, {"id": [1, 12345678901234567890]})
    # Beyond a float's range there is no inf to collide on.
    huge = parse_filter_policy('{"id": [1e400]}', "MessageBody", in_attributes_map=False)
    assert huge is not None
    assert huge.matches(body_view('{"id": 1e400}'))
    assert not huge.matches(body_view('{"id": 1e999}'))
    assert not huge.matches(body_view('{"id": 1E400}'))  # another spelling, another text
    # The same number written another way is another text.
    ten_billion = {"id": [10000000000]}
    assert matches_body(ten_billion, '{"id": 10000000000}')
    assert not matches_body(ten_billion, '{"id": 1e10}')
    assert not matches_body(ten_billion, '{"id": 10000000000.0}')
    assert not matches_attributes(ten_billion, attrs(id="1e10"))
    number_attribute = {"id": {"DataType": "Number", "StringValue": "1e10"}}
    assert not matches_attributes(ten_billion, number_attribute)
    written = parse_filter_policy('{"id": [1e10]}', "MessageAttributes", in_attributes_map=False)
    assert written is not None
    assert written.matches(attributes_view(number_attribute))
    # Types still count: the string of the digits is not the number.
    assert not matches_attributes(ten_billion, attrs(id="10000000000"))
    assert not matches_body({"id": ["10000000000"]}, {"id": 10000000000})
    # Within the range equal numbers still match however they are written.
    assert matches_body({"p": [100]}, '{"p": 1e2}')
    assert matches_body({"p": [1_000_000_000]}, '{"p": 1e9}')
    assert matches_attributes({"p": [100]}, {"p": {"DataType": "Number", "StringValue": "1E2"}})
    # The text is no string: string conditions still never match a number, nor numeric ones
    # a number beyond the range.
    big = '{"id": 9007199254740993}'
    assert not matches_body({"id": [{"prefix": "9007"}]}, big)
    assert not matches_body({"id": [{"suffix": "993"}]}, big)
    assert not matches_body({"id": [{"equals-ignore-case": "9007199254740993"}]}, big)
    assert not matches_body({"id": [{"numeric": [">", 0]}]}, big)
    assert matches_body({"id": [{"anything-but": [1]}]}, big)
    assert matches_body({"id": [{"exists": True}]}, big)


def test_custom_data_types_filter_by_their_base_type():
    custom = {"n": {"DataType": "Number.float", "StringValue": "7"}}
    assert matches_attributes({"n": [{"numeric": [">", 6]}]}, custom)
    labelled = {"s": {"DataType": "String.label", "StringValue": "v"}}
    assert matches_attributes({"s": ["v"]}, labelled)


def test_binary_attributes_are_ignored():
    binary = {"b": {"DataType": "Binary", "BinaryValue": b"v"}}
    assert not matches_attributes({"b": [{"exists": True}]}, binary)
    both = binary | attrs(s="x")
    assert matches_attributes({"b": [{"exists": False}]}, both)


def test_prefix_suffix_and_equals_ignore_case():
    assert matches_attributes({"c": [{"prefix": "bas"}]}, attrs(c="baseball"))
    assert not matches_attributes({"c": [{"prefix": "bas"}]}, attrs(c="rugby"))
    assert matches_attributes({"c": [{"suffix": "ball"}]}, attrs(c="baseball"))
    assert not matches_attributes({"c": [{"suffix": "ball"}]}, attrs(c="rugby"))
    assert matches_attributes({"c": [{"equals-ignore-case": "RuGbY"}]}, attrs(c="rugby"))
    assert not matches_attributes({"c": [{"equals-ignore-case": "rug"}]}, attrs(c="rugby"))
    assert not matches_attributes({"c": [{"prefix": "1"}]}, attrs(c=10))  # numbers have no prefix


def test_anything_but_value_list_prefix_and_numbers():
    policy = {"c": [{"anything-but": ["rugby", "tennis"]}]}
    assert matches_attributes(policy, attrs(c="baseball"))
    assert matches_attributes(policy, attrs(c=["rugby", "baseball"]))  # one element isn't listed
    assert not matches_attributes(policy, attrs(c="rugby"))
    assert not matches_attributes(policy, attrs(other="x"))  # anything-but needs the key
    assert matches_attributes({"c": [{"anything-but": "rugby"}]}, attrs(c="tennis"))
    prefix = {"event": [{"anything-but": {"prefix": "order-"}}]}
    assert matches_attributes(prefix, attrs(event="data-entry"))
    assert matches_attributes(prefix, attrs(event="order_number"))
    assert not matches_attributes(prefix, attrs(event="order-cancelled"))
    numbers = {"price": [{"anything-but": [100, 500]}]}
    assert matches_attributes(numbers, attrs(price=101))
    assert matches_attributes(numbers, attrs(price=100.1))
    assert not matches_attributes(numbers, attrs(price=100))
    array = {"price": {"DataType": "String.Array", "StringValue": "[100, 50]"}}
    assert matches_attributes(numbers, array)
    assert matches_body(numbers, {"price": [100, 50]})
    assert not matches_body(numbers, {"price": 100})


def test_numeric_ranges():
    assert matches_attributes({"p": [{"numeric": ["=", 301.5]}]}, attrs(p=301.5))
    assert matches_body({"p": [{"numeric": ["=", 301.5]}]}, '{"p": 3.015e2}')
    negative = {"p": [{"numeric": ["<", 0]}]}
    assert matches_attributes(negative, attrs(p=-1))
    assert not matches_attributes(negative, attrs(p=0))
    between = {"p": [{"numeric": [">", 0, "<=", 150]}]}
    assert matches_attributes(between, attrs(p=150))
    assert not matches_attributes(between, attrs(p=0))
    assert not matches_attributes(between, attrs(p=150.001))
    assert matches_attributes({"p": [{"numeric": [">=", 0, "<", 1]}]}, attrs(p=0))
    assert not matches_body(between, {"p": "10"})  # a string is not a number
    assert not matches_body(between, {"p": True})


def test_attribute_policies_name_quotes_and_backslashes_double_escaped():
    # subscription-filter-policy-constraints, "Policy constraints for attribute-based
    # filtering": double quotes and backslashes must be double-escaped, or nothing matches.
    quoted = attrs(k='say "hi"')
    assert matches_attributes({"k": ['say \\"hi\\"']}, quoted)
    assert not matches_attributes({"k": ['say "hi"']}, quoted)
    assert matches_attributes({"k": [{"prefix": 'say \\"'}]}, quoted)
    assert not matches_attributes({"k": [{"anything-but": 'say \\"hi\\"'}]}, quoted)
    assert matches_attributes({"k": ["a\\\\b"]}, attrs(k="a\\b"))
    assert matches_attributes({"k": ['q\\"']}, attrs(k=["x", 'q"']))
    # The message body scope compares the JSON values themselves.
    assert matches_body({"k": ['say "hi"']}, {"k": 'say "hi"'})


def test_exists_true_and_false():
    assert matches_attributes({"store": [{"exists": True}]}, attrs(store="fans"))
    assert not matches_attributes({"store": [{"exists": True}]}, attrs(other="x"))
    assert matches_attributes({"store": [{"exists": False}]}, attrs(other="x"))
    assert not matches_attributes({"store": [{"exists": False}]}, attrs(store="fans"))
    # attribute-key-matching.md: an empty set of attributes does not match exists:false.
    assert not matches_attributes({"store": [{"exists": False}]}, {})
    assert matches_body({"store": [{"exists": False}]}, {"other": 1})
    assert matches_body({"store": [{"exists": False}]}, {"store": None, "other": 1})
    assert not matches_body({"store": [{"exists": True}]}, {"store": None, "other": 1})
    # attribute-key-matching: exists true needs "a non-null and non-empty value".
    assert not matches_body({"store": [{"exists": True}]}, {"store": "", "other": 1})
    assert matches_body({"store": [{"exists": False}]}, {"store": "", "other": 1})
    assert matches_body({"store": [{"exists": True}]}, {"store": ["", "x"]})
    # exists works on leaves only: an object is not a value.
    assert not matches_body({"store": [{"exists": True}]}, {"store": {"inner": 1}})


def test_cidr_ipv4_and_ipv6():
    ipv4 = {"source_ip": [{"cidr": "10.0.0.0/24"}]}
    assert matches_attributes(ipv4, attrs(source_ip="10.0.0.0"))
    assert matches_attributes(ipv4, attrs(source_ip="10.0.0.255"))
    assert not matches_attributes(ipv4, attrs(source_ip="10.1.1.0"))
    assert not matches_attributes(ipv4, attrs(source_ip="not-an-ip"))
    ipv6 = {"source_ip": [{"cidr": "2001:db8::/32"}]}
    assert matches_attributes(ipv6, attrs(source_ip="2001:db8::1"))
    assert not matches_attributes(ipv6, attrs(source_ip="2001:db9::1"))
    assert not matches_attributes(ipv6, attrs(source_ip="10.0.0.1"))


def test_cidr_masks_as_event_ruler_reads_them():
    # Integer.parseInt takes a sign; the widest masks event-ruler accepts are /31 and /127.
    signed = {"source_ip": [{"cidr": "10.0.0.0/+24"}]}
    assert matches_attributes(signed, attrs(source_ip="10.0.0.255"))
    assert not matches_attributes(signed, attrs(source_ip="10.0.1.0"))
    pair = {"source_ip": [{"cidr": "10.0.0.1/31"}]}
    assert matches_attributes(pair, attrs(source_ip="10.0.0.0"))
    assert not matches_attributes(pair, attrs(source_ip="10.0.0.2"))
    assert compile_policy({"source_ip": [{"cidr": "2001:db8::1/127"}]}) is not None


def test_and_across_keys_or_within_a_key_and_the_or_operator():
    policy = {"customer_interests": ["rugby"], "price_usd": [{"numeric": [">", 100]}]}
    assert matches_attributes(policy, attrs(customer_interests="rugby", price_usd=101))
    assert not matches_attributes(policy, attrs(customer_interests="rugby", price_usd=99))
    # and-or-logic.md, "Standard OR": source && (metricName || namespace)
    standard = {
        "source": ["aws.cloudwatch"],
        "$or": [{"metricName": ["CPUUtilization"]}, {"namespace": ["AWS/EC2"]}],
    }
    assert matches_attributes(standard, attrs(source="aws.cloudwatch", namespace="AWS/EC2"))
    assert matches_attributes(standard, attrs(source="aws.cloudwatch", metricName="CPUUtilization"))
    assert not matches_attributes(standard, attrs(source="aws.cloudwatch"))
    assert not matches_attributes(standard, attrs(namespace="AWS/EC2"))


def test_or_with_reserved_keywords_or_one_object_is_a_plain_key():
    # and-or-logic.md: {"$or": [{"numeric": 123}, {"prefix": "abc"}]} is not an OR ...
    assert error_of({"$or": [{"numeric": 123}, {"prefix": "abc"}]}) == (
        "Invalid parameter: FilterPolicy: Value of numeric must be an array."
    )
    # ... and with a single object "$or" is an ordinary attribute name.
    assert matches_attributes({"$or": [{"exists": True}]}, attrs(**{"$or": "x"}))


def test_message_body_nesting_arrays_and_the_dotted_key_rule():
    nested = {"object": {"nested": ["string.value"]}}
    assert matches_body(nested, {"object": {"nested": "string.value"}})
    assert matches_body(nested, {"object.nested": "string.value"})
    assert not matches_body(nested, {"object": {"nested": "test-auto"}})
    deep = {"object.nested.test": ["string.value"]}
    for body in (
        {"object": {"nested": {"test": "string.value"}}},
        {"object.nested.test": "string.value"},
        {"object.nested": {"test": "string.value"}},
        {"object": {"nested.test": "string.value"}},
    ):
        assert matches_body(deep, body)
    routes = {"headers": {"route-to": ["queue1"]}}
    assert matches_body(routes, {"headers": {"route-to": ["queue1", "queue2"]}})
    assert not matches_body(routes, {"headers": {"route-to": ["queue3"]}})
    # arrays of objects, even arrays of arrays of objects (AWS-recorded S3 example)
    s3 = {
        "Records": {
            "s3": {"object": {"key": [{"prefix": "auto-"}]}},
            "eventName": [{"prefix": "ObjectCreated:"}],
        }
    }
    event = {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"object": [[{"key": "auto-insurance.xml"}]]}},
            {"eventName": "ObjectRemoved:Delete", "s3": {"object": {"key": "home.xml"}}},
        ]
    }
    assert matches_body(s3, event)
    assert not matches_body(s3, {"Records": [{"eventName": "ObjectRemoved:Delete"}]})


def test_a_body_that_is_not_a_json_object_matches_nothing():
    policy = {"a": [{"exists": False}]}
    for body in ("not json", "[1, 2]", '"a"', "{}", '{"a": NaN}'):
        assert not matches_body(policy, body)


def test_a_later_duplicate_path_replaces_the_earlier_one():
    # event-ruler (whose messages AWS returns) puts each key into the branch as it reads it.
    policy = compile_policy({"a.b": ["x"], "a": {"b": ["y"]}}, "MessageBody")
    assert policy.matches(body_view('{"a": {"b": "y"}}'))
    assert not policy.matches(body_view('{"a": {"b": "x"}}'))


def test_empty_text_and_empty_object_mean_no_filtering():
    assert parse_filter_policy("", "MessageAttributes", in_attributes_map=False) is None
    assert parse_filter_policy("{}", "MessageBody", in_attributes_map=True) is None


def test_required_keys_are_the_keys_every_branch_needs():
    policy = compile_policy(
        {
            "a": ["x"],
            "b": [{"exists": False}],
            "$or": [{"c": [1], "d": [2]}, {"c": [{"prefix": "p"}]}],
        }
    )
    assert policy.required_keys == {"a", "c"}


@given(policy=policies(body=False), attributes=message_attributes)
def test_a_message_without_a_required_key_never_matches(policy, attributes):
    try:
        compiled = compile_policy(policy)
    except SnsError:
        assume(False)
    view = attributes_view(attributes)
    if not compiled.required_keys <= view.keys():
        assert not compiled.matches(view)


def test_the_compiled_policy_keeps_the_text_and_the_complexity():
    text = '{"a": ["x", "y"], "b": [1, 2, 3]}'
    policy = parse_filter_policy(text, "MessageAttributes", in_attributes_map=False)
    assert policy is not None
    assert policy.text == text
    assert policy.combinations == 6
    assert len(policy.branches) == 1


# --- validation: every message AWS was recorded answering, and the rest ------------------

RECORDED = [
    ({"key": [["value"]]}, "Match value must be String, number, true, false, or null"),
    ({"key": [{"wrong-operator": True}]}, "Unrecognized match type wrong-operator"),
    (
        {"key": [{"suffix": "value", "prefix": "value2"}]},
        "Only one key allowed in match expression",
    ),
    ({"key": [{"suffix": 100}]}, "suffix match pattern must be a string"),
    ({"key": [{"suffix": None}]}, "suffix match pattern must be a string"),
    ({"key": {"suffix": "value"}}, '"suffix" must be an object or an array'),
    ({"key": [{"suffix": []}]}, "suffix match pattern must be a string"),
    ({"key": [{"suffix": ["test", "test2"]}]}, "suffix match pattern must be a string"),
    ({"key": {"suffix": "value", "prefix": "value"}}, '"suffix" must be an object or an array'),
    ({"key": {"not-an-operator": "value"}}, '"not-an-operator" must be an object or an array'),
    ({"key": [{"numeric": []}]}, "Invalid member in numeric match: ]"),
    ({"key": [{"numeric": ["operator"]}]}, "Unrecognized numeric range operator: operator"),
    ({"key": [{"numeric": [1, "<="]}]}, "Invalid member in numeric match: 1"),
    ({"key": [{"numeric": ["=", "000"]}]}, "Value of equals must be numeric"),
    ({"key": [{"numeric": [">="]}]}, "Value of >= must be numeric"),
    ({"key": [{"numeric": ["<", 100, ">", 10]}]}, "Too many elements in numeric expression"),
    ({"key": [{"numeric": [">=", 1, ">", 2]}]}, "Bad numeric range operator: >"),
    ({"key": [{"numeric": [">", 3, "<", 1]}]}, "Bottom must be less than top"),
    ({"key": [{"numeric": [">", 20, "<="]}]}, "Value of <= must be numeric"),
    ({"key": [{"numeric": [">", 20, 30]}]}, "Bad value in numeric range: 30"),
    ({"key": [{"numeric": [">", 20, "test"]}]}, "Bad numeric range operator: test"),
    ({"key": [{"numeric": [">", "20", "<", "30"]}]}, "Value of > must be numeric"),
    ({"key": [{"numeric": [">", 20, "<", "30"]}]}, "Value of < must be numeric"),
    (
        {"key": [{"numeric": [">", 20, "<", 30, "<", 50]}]},
        "Too many terms in numeric range expression",
    ),
    ({"key": [{"exists": None}]}, "exists match pattern must be either true or false."),
    ({"key": [{"exists": "no"}]}, "exists match pattern must be either true or false."),
    (
        {"key": [{"anything-but": {"wrong-operator": None}}]},
        "Unsupported anything-but pattern: wrong-operator",
    ),
    ({"key": [{"anything-but": {"suffix": "test"}}]}, "Unsupported anything-but pattern: suffix"),
    ({"key": [{"anything-but": {"exists": False}}]}, "Unsupported anything-but pattern: exists"),
    ({"key": [{"anything-but": {"prefix": False}}]}, "prefix match pattern must be a string"),
    ({"key_a": "value_one"}, '"key_a" must be an object or an array'),
    ({"key": ["x" + str(i) for i in range(151)]}, "Filter policy is too complex"),
    ({f"key_{i}": ["v"] for i in range(6)}, "Filter policy can not have more than 5 keys"),
]


@pytest.mark.parametrize(("policy", "reason"), RECORDED)
def test_aws_recorded_validation_errors(policy, reason):
    assert (
        error_of(policy, in_map=True)
        == f"Invalid parameter: Attributes Reason: FilterPolicy: {reason}"
    )
    assert error_of(policy, in_map=False) == f"Invalid parameter: FilterPolicy: {reason}"


MIXED = (
    "Inside anything but list, either all values are number or string, mixed type is not supported"
)
MORE = [
    ({"key": []}, "Empty arrays are not allowed"),
    ({"key": {}}, "Empty objects are not allowed"),
    ({"key": [{}]}, "Match expression name not found"),
    ({"key": [{"numeric": 5}]}, "Value of numeric must be an array."),
    ({"key": [{"numeric": ["=", 1, 2]}]}, "Too many elements in numeric expression"),
    ({"key": [{"numeric": ["=", True]}]}, "Value of equals must be numeric"),
    ({"key": [{"numeric": [">", 5, "<", 5]}]}, "Bottom must be less than top"),
    ({"key": [{"prefix": 1}]}, "prefix match pattern must be a string"),
    ({"key": [{"equals-ignore-case": []}]}, "equals-ignore-case match pattern must be a string"),
    ({"key": [{"exists": True, "prefix": "a"}]}, "Only one key allowed in match expression"),
    (
        {"key": [{"anything-but": True}]},
        "Value of anything-but must be an array or single string/number value.",
    ),
    (
        {"key": [{"anything-but": None}]},
        "Value of anything-but must be an array or single string/number value.",
    ),
    (
        {"key": [{"anything-but": [None]}]},
        "Inside anything but list, start|null|boolean is not supported.",
    ),
    (
        {"key": [{"anything-but": [[1]]}]},
        "Inside anything but list, start|null|boolean is not supported.",
    ),
    ({"key": [{"anything-but": ["a", 1]}]}, MIXED),
    ({"key": [{"anything-but": []}]}, MIXED),
    ({"key": [{"anything-but": {}}]}, "Anything-But expression name not found"),
    ({"key": [{"anything-but": {"prefix": ""}}]}, "Null prefix not allowed"),
    (
        {"key": [{"anything-but": {"prefix": "a", "x": 1}}]},
        "Only one key allowed in match expression",
    ),
    ({"key": [{"cidr": 10}]}, "prefix match pattern must be a string"),
    ({"key": [{"cidr": "10.0.0.0"}]}, "Malformed CIDR, one '/' required"),
    ({"key": [{"cidr": "10.0.0.0/x"}]}, "Malformed CIDR, mask bits must be an integer"),
    # The cidr checks in event-ruler's order (CIDR.cidr): Java's split drops a trailing empty
    # field, Integer.parseInt reads the mask, an address is first matched by shape, then parsed.
    ({"key": [{"cidr": "10.0.0.0/"}]}, "Malformed CIDR, one '/' required"),
    ({"key": [{"cidr": "10.0.0.0/-1"}]}, "Malformed CIDR, mask bits must not be negative"),
    ({"key": [{"cidr": "10.0.0.0/4294967320"}]}, "Malformed CIDR, mask bits must be an integer"),
    ({"key": [{"cidr": "10.0.0.300/24"}]}, "Invalid IP address: 10.0.0.300"),
    ({"key": [{"cidr": "example.com/24"}]}, "Nonstandard IP address: example.com"),
    ({"key": [{"cidr": "fe80::%eth0/64"}]}, "Nonstandard IP address: fe80::%eth0"),
    ({"key": [{"cidr": "10.0.0.0/33"}]}, "IPv4 mask bits must be < 32"),
    ({"key": [{"cidr": "10.0.0.1/32"}]}, "IPv4 mask bits must be < 32"),
    ({"key": [{"cidr": "2001:db8::1/128"}]}, "IPv6 mask bits must be < 128"),
    ("[1]", "Filter is not an object"),
    ("{not json", "failed to parse JSON."),
    ('{"a": [NaN]}', "failed to parse JSON."),
]


@pytest.mark.parametrize(("policy", "reason"), MORE)
def test_other_validation_errors(policy, reason):
    assert error_of(policy) == f"Invalid parameter: FilterPolicy: {reason}"


OUT_OF_RANGE = "Value must be between -1.0E9 and 1.0E9, inclusive"


@pytest.mark.parametrize(
    "operands",
    [
        ["=", 1_000_000_001],
        ["<", -1_000_000_000.5],
        ["<=", 10**400],
        [">", 2e9],
        [">=", -2e9],
        [">", 0, "<", 1_000_000_000.00001],
        [">", -1_000_000_000.00001, "<=", 0],
    ],
)
def test_numeric_operands_beyond_one_billion_are_refused(operands):
    # subscription-filter-policy-constraints.md: "the value can range from -10^9 to 10^9".
    policy = {"price": [{"numeric": operands}]}
    assert error_of(policy, in_map=True) == (
        f"Invalid parameter: Attributes Reason: FilterPolicy: {OUT_OF_RANGE}"
    )
    assert error_of(policy, "MessageBody") == f"Invalid parameter: FilterPolicy: {OUT_OF_RANGE}"


def test_numeric_limits_and_precision_at_the_edges():
    assert matches_attributes({"p": [{"numeric": ["<=", 10**9]}]}, attrs(p=10**9))
    assert matches_attributes({"p": [{"numeric": [">=", -(10**9)]}]}, attrs(p=-(10**9)))
    for anything_but in (3e9, [1, -3e9], 10**20, [1, -(10**20)]):
        assert error_of({"p": [{"anything-but": anything_but}]}).endswith(OUT_OF_RANGE)
    # Numbers a float cannot hold are beyond the range too, however they are written.
    for text in ('{"p": [{"anything-but": 1e400}]}', '{"p": [{"anything-but": [1, 1e400]}]}'):
        assert error_of(text).endswith(OUT_OF_RANGE)
    assert error_of('{"p": [{"numeric": ["<", -1e400]}]}').endswith(OUT_OF_RANGE)
    assert error_of('{"p": [{"numeric": [">", 0, "<", 1.5e10]}]}').endswith(OUT_OF_RANGE)
    # Jackson's getText() names the token as written.
    assert error_of('{"p": [{"numeric": [1e10]}]}').endswith(
        "Invalid member in numeric match: 1e10"
    )
    # Structure is checked before the bounds, as event-ruler reads the whole expression first.
    assert error_of({"p": [{"numeric": ["=", 2e9, 1]}]}).endswith(
        "Too many elements in numeric expression"
    )
    # Exact literals are not numeric conditions: AWS accepts them beyond the range.
    assert matches_body({"p": [5e9]}, {"p": 5e9})
    assert not matches_body({"p": [{"numeric": [">", 0]}]}, {"p": 5e9})
    # Five decimals: both bounds cut to 1.0 leave an empty range.
    assert error_of({"p": [{"numeric": [">", 1.000001, "<", 1.000002]}]}).endswith(
        "Bottom must be less than top"
    )
    assert matches_attributes({"p": [{"numeric": ["=", 301.5]}]}, attrs(p=301.500001))
    assert not matches_attributes({"p": [{"numeric": ["=", 301.5]}]}, attrs(p=301.50001))
    assert matches_body({"p": [100]}, {"p": 100.000009})
    assert not matches_body({"p": [{"anything-but": [100]}]}, {"p": 100.000009})
    assert not matches_body({"p": [{"numeric": [">", 0]}]}, {"p": 0.000009})


def test_the_policy_quotas_per_topic_and_per_account():
    check_policy_quota(on_topic=199, in_account=9_999)
    for on_topic, in_account in ((200, 200), (0, 10_000)):
        with pytest.raises(SnsError) as caught:
            check_policy_quota(on_topic=on_topic, in_account=in_account)
        assert (caught.value.code, caught.value.status) == ("FilterPolicyLimitExceeded", 403)
    check_policy_quota(on_topic=5, in_account=5, per_topic=6, per_account=6)
    with pytest.raises(SnsError):
        check_policy_quota(on_topic=0, in_account=6, per_topic=6, per_account=6)


@given(
    on_topic=st.integers(0, 300),
    extra=st.integers(0, 20_000),
    per_topic=st.integers(1, 300),
)
def test_the_quota_refuses_exactly_when_either_count_is_full(on_topic, extra, per_topic):
    in_account = on_topic + extra  # the topic's policies are the account's too
    full = on_topic >= per_topic or in_account >= MAX_POLICIES_PER_ACCOUNT
    try:
        check_policy_quota(on_topic=on_topic, in_account=in_account, per_topic=per_topic)
    except SnsError:
        refused = True
    else:
        refused = False
    assert refused == full


def test_nested_policies_are_refused_in_the_attributes_scope():
    nested = {"object": {"key": [{"prefix": "auto-"}]}}
    reason = "Filter policy scope MessageAttributes does not support nested filter policy"
    assert error_of(nested) == f"Invalid parameter: {reason}"  # AWS-recorded
    assert error_of(nested, in_map=True) == f"Invalid parameter: Attributes Reason: {reason}"
    assert compile_policy(nested, "MessageBody").matches(body_view('{"object": {"key": "auto-1"}}'))


def test_the_key_limit_counts_top_level_keys_per_branch():
    five = {f"k{i}": ["v"] for i in range(5)}
    assert len(compile_policy(five).branches[0].tests) == 5
    # Body scope: nested keys do not count, only top-level ones (subscription-filter-policy-
    # constraints.md, "Key counting in filter policies").
    nested = {"top": {f"k{i}": ["v"] for i in range(6)}}
    assert len(compile_policy(nested, "MessageBody").branches[0].tests) == 6
    # $or branches are counted one branch at a time.
    branches = {"a": ["v"], "b": ["v"], "c": ["v"], "d": ["v"], "$or": [{"e": ["v"]}, {"f": ["v"]}]}
    assert len(compile_policy(branches).branches) == 2
    six = {**branches, "g": ["v"]}
    assert (
        error_of(six)
        == "Invalid parameter: FilterPolicy: Filter policy can not have more than 5 keys"
    )


def test_the_complexity_limit_as_aws_computes_it():
    # subscription-filter-policy-constraints.md: 3 x 1 x 2 = 6
    flat = {"key_a": ["one", "two", "three"], "key_b": ["one"], "key_c": ["one", "two"]}
    assert compile_policy(flat).combinations == 6
    # Nested keys multiply by their depth: 3 x 4 x 2 x 3 = 72 (the AWS example) ...
    nested = {
        "key_a": {"key_b": {"key_c": ["1", "2", "3", "4"]}},
        "key_d": {"key_e": ["1", "2", "3"]},
    }
    assert compile_policy(nested, "MessageBody").combinations == 72
    # ... and one more 3-value key makes 216, which AWS refused (AWS-recorded).
    refused = {**nested, "key_f": ["1", "2", "3"]}
    assert (
        error_of(refused, "MessageBody")
        == "Invalid parameter: FilterPolicy: Filter policy is too complex"
    )
    # $or adds its branches: 2 x (3 + 2) = 10
    with_or = {"a": ["1", "2"], "$or": [{"b": ["1", "2", "3"]}, {"c": ["1", "2"]}]}
    assert compile_policy(with_or).combinations == 10
    assert compile_policy({"a": [str(i) for i in range(150)]}).combinations == 150


def test_a_hostile_or_nest_is_refused_before_it_is_expanded():
    # 40 independent two-way ORs would expand to 2**40 branches; the walk stops at 150.
    levels = {f"l{i}": {"$or": [{"a": ["v"]}, {"b": ["v"]}]} for i in range(40)}
    assert "too complex" in error_of({"top": levels}, "MessageBody")


def test_the_size_limit():
    big = json.dumps({"k": ["v" * (MAX_POLICY_BYTES)]})
    assert error_of(big) == "Invalid parameter: FilterPolicy: Filter policy is too long"


# --- properties --------------------------------------------------------------------------


@given(
    case=st.one_of(
        st.tuples(policies(body=False), message_attributes),
        policies(body=False).flatmap(lambda p: st.tuples(st.just(p), attributes_near(p))),
    )
)
def test_attribute_policies_agree_with_the_reference(case):
    policy, attributes = case
    try:
        compiled = compile_policy(policy)
    except SnsError:
        assume(False)
    expected = reference_matches(policy, "MessageAttributes", attributes, "")
    assert compiled.matches(attributes_view(attributes)) == expected


@given(
    case=st.one_of(
        st.tuples(policies(body=True), bodies()),
        policies(body=True).flatmap(lambda p: st.tuples(st.just(p), bodies_near(p))),
    )
)
@example(case=({"n.a": ["x"]}, '{"n": {"a": "x"}}'))
@example(case=({"n": {"a": [{"exists": False}]}}, '{"n": [{"a": "x"}, {"b": 1}]}'))
def test_body_policies_agree_with_the_reference(case):
    policy, body = case
    try:
        compiled = compile_policy(policy, "MessageBody")
    except SnsError:
        assume(False)
    expected = reference_matches(policy, "MessageBody", {}, body)
    assert compiled.matches(body_view(body)) == expected


@given(
    case=st.one_of(
        policies(body=False).flatmap(
            lambda p: st.tuples(st.just(p), attributes_near(p, many=True), st.just(""))
        ),
        policies(body=True).flatmap(
            lambda p: st.tuples(st.just(p), st.just({}), bodies_near(p, many=True))
        ),
    )
)
def test_policies_agree_with_the_reference_on_long_arrays(case):
    # Long arrays reach the predicates as ManyValues: summaries, not a call per element.
    policy, attributes, body = case
    scope: Scope = "MessageBody" if body else "MessageAttributes"
    try:
        compiled = compile_policy(policy, scope)
    except SnsError:
        assume(False)
    view = body_view(body) if body else attributes_view(attributes)
    assert compiled.matches(view) == reference_matches(policy, scope, attributes, body)


number_rules = st.one_of(
    numeric_rules(),
    numbers.map(lambda n: [n]),
    st.sampled_from(BEYOND).map(lambda n: [n]),
    st.lists(numbers, min_size=1, max_size=2).map(lambda v: {"anything-but": v}),
)


@given(
    case=number_rules.flatmap(
        lambda rule: st.tuples(
            st.just(rule if isinstance(rule, list) else [rule]),
            st.sampled_from(candidates([rule] if isinstance(rule, dict) else rule)),
            st.booleans(),
        )
    )
)
@example(case=([{"numeric": ["=", 2.5]}], 2.500001, True))
@example(case=([{"numeric": [">", 0]}], 1_000_000_000.5, False))
def test_numbers_compare_at_five_decimals_within_one_billion(case):
    rule_list, value, in_body = case
    policy = {"k": rule_list}
    try:
        compiled = compile_policy(policy, "MessageBody" if in_body else "MessageAttributes")
    except SnsError:
        assume(False)
    if in_body:
        body = json.dumps({"k": value})
        assert compiled.matches(body_view(body)) == reference_matches(
            policy, "MessageBody", {}, body
        )
    else:
        attributes = attrs(k=value) if not isinstance(value, str) or value else {}
        assume(attributes)
        got = compiled.matches(attributes_view(attributes))
        assert got == reference_matches(policy, "MessageAttributes", attributes, "")


beyond_one_billion = st.integers(10**9 + 1, 10**30) | st.integers(-(10**30), -(10**9) - 1)


@given(
    a=beyond_one_billion,
    other=beyond_one_billion,
    nearby=st.none() | st.integers(1, 3),
    in_body=st.booleans(),
)
@example(a=9007199254740993, other=9007199254740992, nearby=None, in_body=True)
@example(a=9007199254740992, other=9007199254740993, nearby=None, in_body=False)
@example(a=-12345678901234567890, other=-(10**10), nearby=1, in_body=False)
def test_an_integer_beyond_one_billion_matches_itself_and_no_other(a, other, nearby, in_body):
    # Numbers a float cannot tell apart are the interesting ones: often take b next to a
    # (away from zero, so that b stays beyond the range).
    b = other if nearby is None else a + (nearby if a > 0 else -nearby)
    assume(a != b)
    policy = {"id": [a]}
    if in_body:
        assert matches_body(policy, {"id": a})
        assert not matches_body(policy, {"id": b})
        assert matches_body(policy, {"id": [b, a]})
    else:
        assert matches_attributes(policy, attrs(id=a))
        assert not matches_attributes(policy, attrs(id=b))
        assert matches_attributes(policy, attrs(id=[b, a]))  # a String.Array of numbers
        assert not matches_attributes(policy, attrs(id=[b]))
    for message in ({"id": b}, {"id": a}):
        body = json.dumps(message)
        got = compile_policy(policy, "MessageBody").matches(body_view(body))
        assert got == reference_matches(policy, "MessageBody", {}, body)


scalar_rules = st.one_of(
    literals.map(lambda v: [v]),
    st.lists(st.sampled_from(["x", "xy", "X"]), min_size=1, max_size=3),
    st.lists(st.sampled_from([0, 1, 2.5]), min_size=1, max_size=3),
)


@given(excluded=scalar_rules, value=literals)
def test_anything_but_matches_exactly_when_the_values_do_not(excluded, value):
    # Only lists of one JSON type are valid anything-but operands (event-ruler's rule).
    assume(
        all(isinstance(v, str) for v in excluded)
        or all(_is_number(v) and _comparable(v) is not None for v in excluded)
    )
    body = json.dumps({"k": value, "other": 1})
    positive = compile_policy({"k": excluded}, "MessageBody").matches(body_view(body))
    negative = compile_policy({"k": [{"anything-but": excluded}]}, "MessageBody")
    assert negative.matches(body_view(body)) == (not positive)


@given(
    prefix=st.sampled_from(["x", "X", "1", "::"]),
    value=st.sampled_from(["x", "xy", "yx", "X", "::1"]),
)
def test_anything_but_prefix_is_the_negation_of_prefix_on_strings(prefix, value):
    view = attributes_view(attrs(k=value))
    positive = compile_policy({"k": [{"prefix": prefix}]}).matches(view)
    negative = compile_policy({"k": [{"anything-but": {"prefix": prefix}}]}).matches(view)
    assert negative == (not positive)


@given(
    left=st.lists(rules, min_size=1, max_size=2),
    right=st.lists(rules, min_size=1, max_size=2),
    attributes=message_attributes,
)
def test_or_is_the_or_of_its_branches(left, right, attributes):
    view = attributes_view(attributes)
    either = compile_policy({"$or": [{"a": left}, {"b": right}]})
    first, second = compile_policy({"a": left}), compile_policy({"b": right})
    assert either.matches(view) == (first.matches(view) or second.matches(view))


@given(rule_list=st.lists(rules, min_size=1, max_size=3), attributes=message_attributes)
def test_a_key_array_is_the_or_of_its_conditions(rule_list, attributes):
    view = attributes_view(attributes)
    whole = compile_policy({"a": rule_list}).matches(view)
    assert whole == any(compile_policy({"a": [rule]}).matches(view) for rule in rule_list)


@given(
    text=st.one_of(
        st.text(max_size=40),
        st.builds(
            json.dumps,
            st.recursive(
                st.one_of(literals, st.sampled_from(["prefix", "numeric", "$or", "exists"])),
                lambda inner: st.one_of(
                    st.lists(inner, max_size=3),
                    st.dictionaries(
                        st.sampled_from(
                            ["a", "$or", "prefix", "numeric", "anything-but", "cidr", "exists"]
                        ),
                        inner,
                        max_size=3,
                    ),
                ),
                max_leaves=8,
            ),
        ),
    )
)
def test_parsing_arbitrary_text_answers_or_raises_invalid_parameter(text):
    # Total: a policy or None, or SnsError(InvalidParameter); never another exception.
    try:
        parse_filter_policy(text, "MessageBody", in_attributes_map=False)
    except SnsError as error:
        code = error.code
    else:
        code = "InvalidParameter"
    assert code == "InvalidParameter"
