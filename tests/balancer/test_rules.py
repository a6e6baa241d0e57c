from __future__ import annotations

import ipaddress
from functools import cache

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from balancer.config import (
    Conditions,
    FixedResponse,
    Forward,
    HttpHeaderCondition,
    HttpListener,
    QueryPair,
    QueryStringCondition,
    Redirect,
    Rule,
)
from balancer.rules import (
    Match,
    RequestView,
    RuleTable,
    Wildcard,
    ascii_lower,
    parse_query,
    redirect_status,
    render_redirect,
    strip_port,
)

DEFAULT = FixedResponse(status_code=404)


def forward(name: str) -> Forward:
    return Forward(target_group=name)


def rule(priority: int, name: str = "", **conditions: object) -> Rule:
    return Rule(
        priority=priority,
        conditions=Conditions(**conditions),  # type: ignore[arg-type]
        action=forward(name or f"r{priority}"),
    )


def view(target: str = "/", *, method: str = "GET", host: str = "example.com", **headers: str):
    fields = [("Host", host), *((k.replace("_", "-"), v) for k, v in headers.items())]
    return RequestView.from_target(method, target, fields)


def winner(rules: list[Rule], request: RequestView, source: str | None = "192.0.2.1") -> str:
    action = RuleTable(rules, forward("default")).match(request, source).action
    assert isinstance(action, Forward)
    return action.target_group


# A reference glob, written independently of balancer.rules: plain recursion over the pattern.


def reference_glob(pattern: str, text: str, *, fold: bool = False, escapes: bool = False) -> bool:
    tokens: list[str | None] = []  # None = '*', '\0?' = any one character, else a literal
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if escapes and char == "\\" and i + 1 < len(pattern):
            tokens.append(pattern[i + 1])
            i += 2
            continue
        tokens.append(None if char == "*" else "\0?" if char == "?" else char)
        i += 1
    if fold:
        tokens = [t.lower() if t is not None and t.isascii() else t for t in tokens]
        text = "".join(c.lower() if c.isascii() else c for c in text)

    @cache
    def match(p: int, t: int) -> bool:
        if p == len(tokens):
            return t == len(text)
        token = tokens[p]
        if token is None:
            return match(p + 1, t) or (t < len(text) and match(p, t + 1))
        if t == len(text):
            return False
        return (token == "\0?" or token == text[t]) and match(p + 1, t + 1)

    return match(0, 0)


# Wildcards -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("*.example.com", "test.example.com", True),
        ("*.example.com", "example.com", False),  # AWS's own example
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("*", "", True),
        ("", "", True),
        ("", "x", False),
        ("a*", "a", True),
        ("*b", "ab", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("ab*ba", "aba", False),  # the two ends must not overlap
        ("*a*a*a*a*a", "a" * 65536 + "b", False),  # linear, no catastrophic backtracking
        ("/img/*.jpg", "/img/a/b.jpg", True),
    ],
)
def test_wildcards(pattern, text, expected):
    assert Wildcard(pattern, case_sensitive=True).matches(text) is expected


def test_case_folding_is_ascii_only():
    wildcard = Wildcard("KEY", case_sensitive=False)
    assert wildcard.matches("key")
    assert not wildcard.matches("\u212aey")  # KELVIN SIGN lowers to 'k' with str.lower
    assert ascii_lower("ÄB") == "Äb"
    assert not Wildcard("KEY", case_sensitive=True).matches("key")


def test_escapes_make_stars_and_question_marks_literal():
    wildcard = Wildcard(r"a\*b\?", case_sensitive=True, escapes=True)
    assert wildcard.matches("a*b?")
    assert not wildcard.matches("axbc")
    assert Wildcard("a\\", case_sensitive=True, escapes=True).matches("a\\")  # trailing '\'
    assert Wildcard(r"a\*", case_sensitive=True).matches("a\\anything")  # no escapes


alphabet = st.text("ab?*\\", max_size=8)


@given(alphabet, st.text("abAB\\*?", max_size=10), st.booleans(), st.booleans())
def test_wildcard_agrees_with_a_reference_glob(pattern, text, case_sensitive, escapes):
    compiled = Wildcard(pattern, case_sensitive=case_sensitive, escapes=escapes)
    expected = reference_glob(pattern, text, fold=not case_sensitive, escapes=escapes)
    assert compiled.matches(text) is expected


@given(st.text(max_size=12), st.text(max_size=12))
def test_wildcard_on_any_text(pattern, text):
    assert Wildcard(pattern, case_sensitive=False).matches(text) is reference_glob(
        pattern, text, fold=True
    )


# Request views -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "stripped"),
    [
        ("example.com:8080", "example.com"),
        ("example.com", "example.com"),
        ("[::1]:80", "[::1]"),
        ("[::1]", "[::1]"),
        ("[::1", "[::1"),
        ("a:b", "a:b"),
        ("", ""),
    ],
)
def test_strip_port(host, stripped):
    assert strip_port(host) == stripped


def test_parse_query_decodes_percent_escapes_and_keeps_plus():
    assert parse_query("a=1&b&c=%20x+y&&=z&k=%zz") == [
        ("a", "1"),
        (None, "b"),
        ("c", " x+y"),
        ("", "z"),
        ("k", "%zz"),
    ]


def test_request_view_from_an_origin_form_target():
    request = view("/a/b?x=1#frag", host="Example.com:8080")
    assert (request.method, request.host, request.path, request.query) == (
        "GET",
        "Example.com:8080",
        "/a/b",
        "x=1",
    )


def test_an_absolute_form_target_names_the_host():
    request = RequestView.from_target("GET", "http://user@api.example.com:81/p?q", [("Host", "x")])
    assert (request.host, request.path, request.query) == ("api.example.com:81", "/p", "q")


def test_request_view_from_h11_bytes():
    request = RequestView.from_h11(b"PUT", b"/\xe9?q", [(b"host", b"a.example"), (b"x", b"\xff")])
    assert request == RequestView(
        "PUT", "a.example", "/\xe9", "q", (("host", "a.example"), ("x", "\xff"))
    )


def test_a_request_without_host_matches_no_host_condition():
    request = RequestView.from_target("GET", "/", [])
    assert request.host == ""
    assert winner([rule(1, host_header=("*.example.com",))], request) == "default"


# Conditions --------------------------------------------------------------------------------------


def test_host_header_is_case_insensitive_and_ignores_the_port():
    rules = [rule(1, host_header=("*.Example.COM",))]
    assert winner(rules, view(host="API.example.com:8443")) == "r1"
    assert winner(rules, view(host="example.com")) == "default"


def test_path_pattern_is_case_sensitive_and_ignores_the_query():
    rules = [rule(1, path_pattern=("/img/*",))]
    assert winner(rules, view("/img/a.png?x=/img/")) == "r1"
    assert winner(rules, view("/IMG/a.png")) == "default"
    assert winner(rules, view("/other?p=/img/x")) == "default"


def test_http_header_name_and_value_are_case_insensitive_and_any_instance_counts():
    rules = [rule(1, http_header=(HttpHeaderCondition(name="User-Agent", values=("*mobile*",)),))]
    assert winner(rules, view(user_agent="Foo MOBILE bar")) == "r1"
    request = RequestView.from_target(
        "GET", "/", [("user-agent", "desktop"), ("USER-AGENT", "Mobile")]
    )
    assert winner(rules, request) == "r1"
    assert winner(rules, view(user_agent="desktop")) == "default"
    assert winner(rules, view()) == "default"


def test_header_conditions_combine_with_and():
    rules = [
        rule(
            1,
            http_header=(
                HttpHeaderCondition(name="A", values=("1",)),
                HttpHeaderCondition(name="B", values=("2",)),
            ),
        )
    ]
    assert winner(rules, view(A="1", B="2")) == "r1"
    assert winner(rules, view(A="1")) == "default"


def test_http_request_method_is_exact_and_case_sensitive():
    rules = [rule(1, http_request_method=("GET", "HEAD"))]
    assert winner(rules, view(method="HEAD")) == "r1"
    assert winner(rules, view(method="get")) == "default"
    assert winner(rules, view(method="GETX")) == "default"


def test_query_string_pairs_keys_values_and_decoding():
    rules = [
        rule(
            1,
            query_string=(
                QueryStringCondition(
                    values=(QueryPair(key="Version", value="v1"), QueryPair(value="*example*"))
                ),
            ),
        )
    ]
    assert winner(rules, view("/?version=V1")) == "r1"
    assert winner(rules, view("/?x=my%20Example%21")) == "r1"  # key-less, decoded
    assert winner(rules, view("/?anexampleflag")) == "r1"  # a bare value
    assert winner(rules, view("/?version=v2")) == "default"
    assert winner(rules, view("/?ver%73ion=v1")) == "r1"  # keys are decoded too
    assert winner(rules, view("/")) == "default"


def test_query_string_escapes():
    rules = [rule(1, query_string=(QueryStringCondition(values=(QueryPair(value=r"a\*"),)),))]
    assert winner(rules, view("/?k=a*")) == "r1"
    assert winner(rules, view("/?k=ab")) == "default"


def test_query_conditions_combine_with_and():
    rules = [
        rule(
            1,
            query_string=(
                QueryStringCondition(values=(QueryPair(key="a", value="1"),)),
                QueryStringCondition(values=(QueryPair(key="b", value="2"),)),
            ),
        )
    ]
    assert winner(rules, view("/?b=2&a=1")) == "r1"
    assert winner(rules, view("/?a=1")) == "default"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("10.1.2.3", "r1"),
        ("11.0.0.1", "default"),
        ("2001:db8::5", "r1"),
        ("2001:db9::5", "default"),
        ("::ffff:10.9.9.9", "r1"),  # an IPv4 client on a dual-stack socket
        ("fe80::1%eth0", "default"),  # a zone id is dropped before matching
        ("not-an-ip", "default"),
        (None, "default"),
        (ipaddress.ip_address("10.0.0.1"), "r1"),
    ],
)
def test_source_ip_uses_the_peer_address(source, expected):
    rules = [rule(1, source_ip=("10.0.0.0/8", "2001:db8::/32"))]
    assert winner(rules, view(), source) == expected


def test_source_ip_never_reads_x_forwarded_for():
    rules = [rule(1, source_ip=("10.0.0.0/8",))]
    assert winner(rules, view(x_forwarded_for="10.0.0.1"), "203.0.113.9") == "default"


def test_conditions_combine_with_and_values_with_or():
    rules = [rule(1, host_header=("a.example", "b.example"), path_pattern=("/x",))]
    assert winner(rules, view("/x", host="b.example")) == "r1"
    assert winner(rules, view("/y", host="a.example")) == "default"


# Tables ----------------------------------------------------------------------------------------


def test_the_lowest_priority_number_wins_and_the_default_comes_last():
    rules = [rule(20, path_pattern=("/a*",)), rule(10, path_pattern=("/ab",))]
    table = RuleTable(rules, DEFAULT)
    match = table.match(view("/ab"), None)
    assert match == Match(rules[1], rules[1].action)
    assert match.priority == 10
    assert table.match(view("/ax"), None).priority == 20
    default = table.match(view("/b"), None)
    assert default == Match(None, DEFAULT)
    assert default.priority == 0


def test_table_from_a_listener():
    listener = HttpListener(
        name="web", port=80, default_action=DEFAULT, rules=(rule(5, path_pattern=("/x",)),)
    )
    table = RuleTable.from_listener(listener)
    assert table.match(view("/x"), None).priority == 5
    assert table.match(view("/y"), None).action is DEFAULT


paths = st.text("ab/", max_size=5)
path_patterns = st.text("ab/*?", min_size=1, max_size=5)


@given(
    st.lists(st.tuples(st.integers(1, 50000), path_patterns), max_size=8, unique_by=lambda t: t[0]),
    paths,
)
def test_the_matching_rule_with_the_lowest_priority_wins(specs, path):
    assume(all(p.count("*") + p.count("?") <= 5 for _, p in specs))
    rules = [rule(priority, path_pattern=(pattern,)) for priority, pattern in specs]
    matching = [priority for priority, pattern in specs if reference_glob(pattern, "/" + path)]
    match = RuleTable(rules, DEFAULT).match(view("/" + path), None)
    assert match.priority == min(matching, default=0)
    assert match.action == (DEFAULT if not matching else forward(f"r{min(matching)}"))


# Redirects -------------------------------------------------------------------------------------


def test_redirect_to_https_keeps_host_path_and_query():
    action = Redirect(protocol="HTTPS", port=443, status_code="HTTP_301")
    request = view("/a/b?x=1&y", host="Example.com:8080")
    assert render_redirect(action, request, protocol="http", port=8080) == (
        "https://Example.com:443/a/b?x=1&y"
    )
    assert redirect_status(action) == 301


def test_redirect_placeholders_and_an_empty_query():
    action = Redirect(
        host="new.#{host}",
        path="/#{port}/#{path}",
        query="from=#{protocol}://#{host}:#{port}#{path}&#{query}",
        status_code="HTTP_302",
    )
    location = render_redirect(action, view("/p", host="[::1]:8080"), protocol="https", port=8443)
    assert location == "https://new.[::1]:8443/8443/p?from=https://[::1]:8443p&"
    assert redirect_status(action) == 302
    bare = Redirect(path="/new", query="#{query}", status_code="HTTP_302")
    assert render_redirect(bare, view("/old"), protocol="http", port=80) == (
        "http://example.com:80/new"
    )


def test_redirect_placeholders_are_expanded_once():
    action = Redirect(path="/x/#{path}", status_code="HTTP_302")
    request = RequestView("GET", "example.com", "/#{host}")
    assert render_redirect(action, request, protocol="http", port=80) == (
        "http://example.com:80/x/#{host}"
    )


@given(st.text("ab/%.-", max_size=12), st.text("ab=&%", max_size=12))
def test_the_default_redirect_parts_reproduce_the_request(path, query):
    action = Redirect(port=8443, status_code="HTTP_301")
    request = RequestView("GET", "h.example:80", "/" + path, query)
    location = render_redirect(action, request, protocol="http", port=80)
    expected = f"http://h.example:8443/{path}" + (f"?{query}" if query else "")
    assert location == expected
