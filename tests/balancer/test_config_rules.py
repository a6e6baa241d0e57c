from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.config_rules import (
    Conditions,
    FixedResponse,
    Forward,
    Redirect,
    Rule,
    WeightedTargetGroup,
    count_wildcards,
)


def conditions(**fields: Any) -> Conditions:
    return msgspec.convert(fields, Conditions)


def refused(schema: type, data: dict[str, Any]) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(data, schema)
    return str(info.value)


# Conditions --------------------------------------------------------------------------------------


def test_valid_conditions_of_every_kind():
    found = conditions(
        host_header=["*.example.com"],
        path_pattern=["/a/*"],
        http_request_method=["GET"],
        http_header=[{"name": "X-Env", "values": ["beta"]}],
        query_string=[{"values": [{"key": "v", "value": "1"}]}],
    )
    assert [field for field, _ in found.value_groups()] == [
        "host_header",
        "path_pattern",
        "http_request_method",
        "http_header",
        "query_string",
    ]
    assert conditions(source_ip=["10.0.0.0/8", "2001:db8::/32"]).source_ip[1] == "2001:db8::/32"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"host_header": ["exa mple.com"]}, "host_header value 'exa mple.com' is invalid"),
        ({"host_header": ["localhost"]}, "needs a '.'"),
        ({"host_header": ["example.c0m"]}, "only letters after the last one"),
        ({"host_header": ["www.example.*"]}, "only letters after the last one"),
        ({"host_header": ["a" * 129 + ".com"]}, "is invalid: 1-128 letters"),
        ({"path_pattern": ["/a b"]}, "path_pattern value '/a b' is invalid"),
        ({"path_pattern": ["/%41"]}, "is invalid"),
        ({"http_request_method": ["get"]}, "http_request_method value 'get' is invalid"),
        ({"http_header": [{"name": "X-*", "values": ["a"]}]}, "http_header name value"),
        ({"http_header": [{"name": "HOST", "values": ["a"]}]}, "use a host_header condition"),
        ({"path_pattern": ["/" + "a" * 128]}, "is invalid: 1-128 of"),
        ({"http_request_method": ["A" * 41]}, "is invalid: 1-40 of"),
        ({"http_header": [{"name": "X", "values": ["a\tb"]}]}, "http_header value"),
        ({"http_header": [{"name": "X", "values": []}]}, "needs at least one value"),
        ({"query_string": [{"values": []}]}, "needs at least one value"),
        ({"query_string": [{"values": [{"value": "a\tb"}]}]}, "query_string value"),
        ({"query_string": [{"values": [{"key": "k k", "value": "a"}]}]}, "query_string key"),
        ({"source_ip": ["10.0.0.1/8"]}, "has host bits set"),
        ({"source_ip": ["nope"]}, "source_ip value 'nope' is invalid"),
        ({"source_ip": ["255.255.255.255/32"]}, "not allowed"),
        ({"path_pattern": ["/a", "/b", "/c", "/d"]}, "4 values; at most 3 per condition"),
        (
            {"path_pattern": ["/a", "/b", "/c"], "http_request_method": ["GET", "PUT", "POST"]},
            "6 condition values; at most 5 per rule",
        ),
        ({"path_pattern": ["/**", "/??", "/*?"]}, "6 wildcards; at most 5 per rule"),
    ],
)
def test_bad_conditions_are_refused_with_the_reason(fields, message):
    assert message in refused(Conditions, fields)


def test_escaped_query_wildcards_do_not_count():
    fields = {"path_pattern": ["/*"], "query_string": [{"values": [{"value": r"\*\?\*\?\**"}]}]}
    assert conditions(**fields).query_string[0].values[0].value == r"\*\?\*\?\**"


@pytest.mark.parametrize(
    ("pattern", "escapes", "count"),
    [("", False, 0), ("a*b?c", False, 2), (r"a\*b", False, 1), (r"a\*b", True, 0), ("\\", True, 0)],
)
def test_count_wildcards(pattern, escapes, count):
    assert count_wildcards(pattern, escapes=escapes) == count


@given(st.text("ab*?\\", max_size=20))
def test_escaped_wildcards_never_count_more_than_plain_ones(pattern):
    assert count_wildcards(pattern, escapes=True) <= count_wildcards(pattern)


# Actions ---------------------------------------------------------------------------------------


def test_forward_forms():
    assert Forward(target_group="web").weighted() == (WeightedTargetGroup(name="web", weight=1),)
    split = Forward(
        target_groups=(WeightedTargetGroup(name="a", weight=0), WeightedTargetGroup(name="b"))
    )
    assert [g.name for g in split.weighted()] == ["a", "b"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "exactly one of target_group or target_groups"),
        (
            {"target_group": "a", "target_groups": [{"name": "b"}]},
            "exactly one of target_group or target_groups",
        ),
        ({"target_groups": [{"name": f"g{i}"} for i in range(6)]}, "at most 5 target_groups"),
        ({"target_groups": [{"name": "a"}, {"name": "a"}]}, "appears twice"),
        ({"target_groups": [{"name": "a", "weight": 0}]}, "weight above 0"),
        (
            {"target_groups": [{"name": "a", "weight": 1000}]},
            "<= 999 - at `$.target_groups[0].weight`",
        ),
        ({"target_groups": [{"name": "-a"}]}, "matching regex"),
        ({"target_group": "a", "stickiness": {"duration_seconds": 0}}, ">= 1 - at `$.stickiness"),
    ],
)
def test_bad_forwards_are_refused(data, message):
    assert message in refused(Forward, {"type": "forward", **data})


def test_redirect_defaults_keep_every_part():
    redirect = Redirect(protocol="HTTPS", status_code="HTTP_301")
    assert (redirect.host, redirect.port, redirect.path, redirect.query) == (
        "#{host}",
        "#{port}",
        "/#{path}",
        "#{query}",
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "must change at least one of protocol, host, port, path"),
        ({"host": "#{path}.example.com"}, "host cannot use the placeholder #{path}"),
        ({"path": "/#{query}"}, "path cannot use the placeholder #{query}"),
        ({"query": "#{nope}"}, "query cannot use the placeholder #{nope}"),
        ({"path": "relative"}, "must start with '/'"),
        ({"protocol": "FTP"}, "Invalid enum value 'FTP'"),
        ({"port": "80x"}, "redirect port '80x': a number from 1 to 65535 or #{port}"),
        ({"port": "65536"}, "redirect port 65536"),
        ({"port": 0}, "redirect port 0"),
        ({"host": "h" * 129}, "length <= 128"),
        # What would make a Location that is no URL, or a head h11 refuses to write:
        ({"path": "/a\r\nX-Inj: 1"}, "redirect path '/a\\r\\nX-Inj: 1': only letters, digits"),
        ({"host": "evil.test/x?"}, "redirect host 'evil.test/x?': only letters, digits"),
        ({"host": "b.test", "query": "a b\u0001"}, "redirect query"),
        ({"host": "#{host}.example/x"}, "redirect host"),
        # A '#' makes the rest of the Location a fragment: /new#top?id=7 loses the query.
        (
            {"path": "/new#top"},
            "redirect path '/new#top': only letters, digits and _-.$/~\"'@:+&*? (AWS's set): "
            "'#' would start a fragment and swallow the query",
        ),
        ({"path": "/#{path}#x"}, "'#' would start a fragment"),
        ({"path": "/a#{b"}, "redirect path '/a#{b'"),
        ({"host": "b.test", "query": "a=1#x"}, "'#' would start a fragment and swallow the rest"),
        # RedirectActionConfig.Query: "Do not include the leading "?", as it is automatically
        # added"; with it the Location had "??lang=en".
        (
            {"path": "/new", "query": "?lang=en"},
            "redirect query '?lang=en': leave out the leading '?', it is added (AWS)",
        ),
        # Outside the user guide's path set: percent-encoding, '=' and ';'.
        ({"path": "/a%20b"}, "redirect path '/a%20b': only letters, digits"),
        ({"path": "/a;v=1"}, "redirect path '/a;v=1': only letters, digits"),
        # AWS's loop guard counts protocol, host, port and path; a new query is no change.
        (
            {"query": "#{query}&v=1"},
            "must change at least one of protocol, host, port, path (AWS), or it loops: "
            "protocol, host, port and path all keep the request's; a changed query does not count",
        ),
    ],
)
def test_bad_redirects_are_refused(data, message):
    assert message in refused(Redirect, {"type": "redirect", "status_code": "HTTP_302", **data})


def test_query_values_may_hold_spaces_as_decoded_queries_do():
    parsed = conditions(query_string=[{"values": [{"key": "q", "value": "hello world"}]}])
    assert parsed.query_string[0].values[0].value == "hello world"


def test_redirects_with_placeholders_and_uri_characters_are_accepted():
    redirect = Redirect(
        protocol="HTTPS",
        host="www.#{host}",
        path="/new/#{path}/~user@x:1+2",
        query="#{query}&from=old%20site",
        status_code="HTTP_301",
    )
    assert redirect.query == "#{query}&from=old%20site"


VISIBLE_ASCII = [chr(code) for code in range(0x21, 0x7F)]
# The user guide's redirect-actions: a path "consists of alpha-numeric characters, wildcards
# (* and ?), & (using &amp;), and the following special characters: _-.$/~"'@:+".
AWS_PATH_CHARACTERS = "*?&_-.$/~\"'@:+"


def test_a_redirect_path_takes_exactly_the_user_guides_characters():
    for char in VISIBLE_ASCII:
        path = f"/a{char}b"
        data = {"type": "redirect", "status_code": "HTTP_302", "path": path}
        if char.isalnum() or char in AWS_PATH_CHARACTERS:
            assert msgspec.convert(data, Redirect).path == path
        else:
            assert f"redirect path {path!r}: only letters, digits" in refused(Redirect, data)


def test_a_redirect_query_takes_visible_ascii_but_a_fragment():
    for char in VISIBLE_ASCII:
        data = {"type": "redirect", "status_code": "HTTP_302", "path": "/n", "query": f"a{char}"}
        if char != "#":
            assert msgspec.convert(data, Redirect).query == f"a{char}"
        else:
            assert "'#' would start a fragment" in refused(Redirect, data)


@pytest.mark.parametrize(
    ("fields", "protocol", "port", "loops"),
    [
        ({"protocol": "HTTP"}, "http", 80, True),
        ({"protocol": "HTTP"}, "https", 443, False),
        ({"protocol": "HTTPS"}, "https", 443, True),
        ({"protocol": "HTTPS"}, "http", 80, False),
        ({"port": 8080}, "http", 8080, True),
        ({"port": "8080"}, "https", 8080, True),
        ({"port": 8080}, "http", 8081, False),
        ({"port": 8080}, "http", 0, False),  # the kernel's pick: not known to be 8080
        ({"protocol": "HTTPS", "port": 443}, "https", 443, True),
        ({"protocol": "HTTPS", "port": 443}, "http", 443, False),
        ({"protocol": "HTTP", "host": "#{host}.test"}, "http", 80, False),
        ({"protocol": "HTTP", "path": "/new/#{path}"}, "http", 80, False),
        ({"protocol": "HTTP", "path": "/#{path}/"}, "http", 80, False),
        ({"protocol": "HTTP", "query": "v=1"}, "http", 80, True),
    ],
)
def test_a_redirect_keeps_the_url_when_what_it_spells_out_is_the_listeners_own(
    fields, protocol, port, loops
):
    redirect = Redirect(status_code="HTTP_301", **fields)
    assert redirect.keeps_the_url(protocol, port) is loops
    assert (redirect.loop_error(protocol, port) is not None) is loops


def test_a_redirect_port_may_be_written_as_alb_writes_it():
    # The ELBv2 API's RedirectActionConfig.Port is a string ("443").
    redirect = msgspec.convert(
        {"type": "redirect", "status_code": "HTTP_301", "port": "443"}, Redirect
    )
    assert redirect.port == "443"


def test_a_redirect_needs_a_status_code():
    assert "missing required field `status_code`" in refused(
        Redirect, {"type": "redirect", "port": 1}
    )


def test_fixed_responses():
    assert FixedResponse(status_code=204).content_type == "text/plain"
    assert "2XX, 4XX or 5XX" in refused(
        FixedResponse, {"type": "fixed_response", "status_code": 301}
    )
    assert "<= 599" in refused(FixedResponse, {"type": "fixed_response", "status_code": 600})
    too_long = {"type": "fixed_response", "status_code": 200, "message_body": "é" * 1025}
    assert "longer than 1024 characters" in refused(FixedResponse, too_long)
    # AWS counts characters, not bytes: 600 two-byte characters are within its limit.
    accented = {"type": "fixed_response", "status_code": 200, "message_body": "é" * 600}
    assert msgspec.convert(accented, FixedResponse).message_body == "é" * 600
    ok = {"type": "fixed_response", "status_code": 200, "message_body": "x" * 1024}
    assert len(msgspec.convert(ok, FixedResponse).message_body) == 1024
    bad_type = {"type": "fixed_response", "status_code": 200, "content_type": "image/png"}
    assert "Invalid enum value 'image/png'" in refused(FixedResponse, bad_type)


def test_a_rule_needs_a_condition_and_a_priority_in_range():
    action = {"type": "fixed_response", "status_code": 200}
    assert "at least one condition" in refused(
        Rule, {"priority": 1, "conditions": {}, "action": action}
    )
    nested = {"priority": 1, "conditions": {"path_pattern": ["/a b"]}, "action": action}
    assert "- at `$.conditions`" in refused(Rule, nested)
    high = {"priority": 50001, "conditions": {"path_pattern": ["/"]}, "action": action}
    assert "<= 50000 - at `$.priority`" in refused(Rule, high)
    unknown = {"priority": 1, "conditions": {"path_pattern": ["/"]}, "action": {"type": "drop"}}
    assert "Invalid value 'drop' - at `$.action.type`" in refused(Rule, unknown)
