"""Listener rules: which action a request gets (pure; compiled once per configuration).

ALB semantics (rule-condition-types.md, load-balancer-listeners.md): rules are tried from the
lowest priority number up and the first whose conditions all match wins; the default action
runs when none does. Inside a rule every condition must match (AND) and a condition matches
when any of its values does (OR).

Wildcards are ``*`` (any run, empty included) and ``?`` (exactly one character). They are
matched segment by segment with ``str.find`` (earliest occurrence of each piece between stars
is the optimal choice for a glob), never with a backtracking ``.*`` regex: a pattern like
``*a*a*a*a*a`` against a 64 KiB header would otherwise take super-linear time.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote

from balancer.config import Action, Conditions, Listener, QueryPair, Redirect, Rule

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def ascii_lower(text: str) -> str:
    """Lower-case A-Z only: ALB compares visible ASCII, and ``str.lower`` folds more
    (the Kelvin sign U+212A lowers to ``k``)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


# ---------------------------------------------------------------------------------------------
# Wildcards.


class _Piece(NamedTuple):
    """A run of the pattern between two stars: a literal, or a regex when it holds '?'."""

    literal: str
    regex: re.Pattern[str] | None
    length: int

    @classmethod
    def build(cls, chars: list[str | None]) -> _Piece:
        if None not in chars:
            return cls("".join(c for c in chars if c is not None), None, len(chars))
        # Fixed length, no quantifiers: a search is linear in the text for a given pattern.
        source = "".join("." if c is None else re.escape(c) for c in chars)
        return cls("", re.compile(source, re.DOTALL), len(chars))

    def at(self, text: str, pos: int) -> bool:
        if self.regex is None:
            return text.startswith(self.literal, pos)
        return self.regex.match(text, pos) is not None

    def find(self, text: str, start: int, end: int) -> int:
        if self.regex is None:
            return text.find(self.literal, start, end)
        found = self.regex.search(text, start, end)
        return -1 if found is None else found.start()


class Wildcard:
    """A compiled ALB wildcard pattern; call :meth:`matches` with the text to test."""

    __slots__ = ("_case_sensitive", "_exact", "_first", "_last", "_middle", "literal", "pattern")

    def __init__(self, pattern: str, *, case_sensitive: bool, escapes: bool = False) -> None:
        """Compile ``pattern``.

        Args:
            pattern: the pattern as configured.
            case_sensitive: False compares A-Z and a-z as equal.
            escapes: True makes ``\\x`` the literal ``x`` (query-string values only, as AWS).
        """
        self.pattern = pattern
        self._case_sensitive = case_sensitive
        text = pattern if case_sensitive else ascii_lower(pattern)
        runs: list[list[str | None]] = [[]]  # None stands for '?'
        i = 0
        while i < len(text):
            char = text[i]
            if escapes and char == "\\" and i + 1 < len(text):
                runs[-1].append(text[i + 1])
                i += 2
                continue
            if char == "*":
                runs.append([])
            else:
                runs[-1].append(None if char == "?" else char)
            i += 1
        pieces = [_Piece.build(run) for run in runs]
        self._exact = len(pieces) == 1
        self._first = pieces[0]
        self._last = pieces[-1]
        self._middle = tuple(p for p in pieces[1:-1] if p.length)
        # The one text a pattern without wildcards matches (folded when case-insensitive):
        # callers may look it up in an index instead of calling matches on every candidate.
        self.literal = self._first.literal if self._exact and self._first.regex is None else None

    def matches(self, text: str) -> bool:
        """Whether the whole of ``text`` matches the pattern."""
        return self.matches_folded(text if self._case_sensitive else ascii_lower(text))

    def matches_folded(self, text: str) -> bool:
        """:meth:`matches` for a ``text`` already folded with :func:`ascii_lower` (any text
        when the pattern is case-sensitive)."""
        first, last = self._first, self._last
        if self._exact:
            return len(text) == first.length and first.at(text, 0)
        end = len(text) - last.length
        if end < first.length or not first.at(text, 0) or not last.at(text, end):
            return False
        pos = first.length
        for piece in self._middle:
            found = piece.find(text, pos, end)
            if found < 0:
                return False
            pos = found + piece.length
        return True


# ---------------------------------------------------------------------------------------------
# The request as rules see it.


def strip_port(host: str) -> str:
    """``example.com:8080`` -> ``example.com``; ``[::1]:80`` -> ``[::1]``; an empty port
    (``example.com:``, which RFC 3986 3.2.3 allows) goes too."""
    if host.startswith("["):
        close = host.find("]")
        return host if close < 0 else host[: close + 1]
    name, colon, port = host.rpartition(":")
    return name if colon and (port.isdigit() or not port) else host


def parse_query(query: str) -> list[tuple[str | None, str]]:
    """Split a raw query into percent-decoded ``(key, value)`` pairs, in order.

    A part without ``=`` is a value without a key, so ``{value = "debug"}`` matches
    ``?debug``. ``+`` is kept: the query is RFC 3986, not a form (AWS cites RFC 3986).
    """
    pairs: list[tuple[str | None, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        key, equals, value = part.partition("=")
        pairs.append((unquote(key), unquote(value)) if equals else (None, unquote(key)))
    return pairs


@dataclass(frozen=True, slots=True)
class RequestView:
    """What rules look at: the method, the first Host, the path, the raw query, headers."""

    method: str
    host: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_target(
        cls, method: str, target: str, headers: Iterable[tuple[str, str]] = ()
    ) -> RequestView:
        """Build a view from a request line's target and the header fields.

        An absolute-form target (``http://host/path``) names the host, as ALB does; otherwise
        the first Host header does. A fragment, if a client sent one, is dropped.
        """
        headers = tuple(headers)
        host = next((v for k, v in headers if ascii_lower(k) == "host"), "")
        target = target.partition("#")[0]
        scheme, sep, rest = target.partition("://")
        if sep and "/" not in scheme:
            authority, slash, target = rest.partition("/")
            host, target = authority.rpartition("@")[2], slash + target
        path, _, query = target.partition("?")
        return cls(method, host, path, query, headers)

    @classmethod
    def from_h11(
        cls, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> RequestView:
        """Like :meth:`from_target`, from h11's bytes (decoded as ISO-8859-1, losslessly)."""
        return cls.from_target(
            method.decode("latin-1"),
            target.decode("latin-1"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
        )


class _Facts:
    """The request, normalised once for all rules of one table.

    The query's pairs are folded (ASCII lower case) once, and indexed by key and by value on
    first use: a condition naming a key, or a value without wildcards, looks its pairs up
    instead of testing every pair of a long query (a 16 KB query holds thousands), so the
    work of a request does not grow with its pairs times the rules.
    """

    __slots__ = ("_by_key", "_values", "headers", "host", "method", "path", "query", "source")

    def __init__(self, request: RequestView, source: IPAddress | None, table: RuleTable) -> None:
        self.method = request.method
        self.path = request.path
        self.host = ascii_lower(strip_port(request.host))
        self.source = source
        self.headers: dict[str, list[str]] = {}
        if table.needs_headers:
            for name, value in request.headers:
                self.headers.setdefault(ascii_lower(name), []).append(value)
        self.query: list[tuple[str | None, str]] = (
            [
                (None if key is None else ascii_lower(key), ascii_lower(value))
                for key, value in parse_query(request.query)
            ]
            if table.needs_query
            else []
        )
        self._by_key: dict[str, list[str]] | None = None
        self._values: set[str] | None = None

    def query_by_key(self) -> dict[str, list[str]]:
        """The folded values of each folded key (pairs without a key left out)."""
        if self._by_key is None:
            by_key: dict[str, list[str]] = {}
            for key, value in self.query:
                if key is not None:
                    by_key.setdefault(key, []).append(value)
            self._by_key = by_key
        return self._by_key

    def query_values(self) -> set[str]:
        """Every folded value of the query, with or without a key."""
        if self._values is None:
            self._values = {value for _, value in self.query}
        return self._values


Predicate = Callable[[_Facts], bool]


def _any_of(patterns: Iterable[str], *, case_sensitive: bool) -> tuple[Wildcard, ...]:
    return tuple(Wildcard(p, case_sensitive=case_sensitive) for p in patterns)


def _scan_pairs(key: Wildcard | None, value: Wildcard, facts: _Facts) -> bool:
    for pair_key, pair_value in facts.query:
        if key is not None and (pair_key is None or not key.matches_folded(pair_key)):
            continue
        if value.matches_folded(pair_value):
            return True
    return False


def _pair_predicate(pair: QueryPair) -> Predicate:
    """One key/value pattern; the query's indexes spare a scan of every pair where a
    literal key or a literal value without a key allows it."""
    value = Wildcard(pair.value, case_sensitive=False, escapes=True)
    key = Wildcard(pair.key, case_sensitive=False, escapes=True) if pair.key else None
    literal = value.literal
    if key is not None and key.literal is not None:
        wanted = key.literal
        if literal is not None:
            return lambda f: literal in f.query_by_key().get(wanted, ())
        return lambda f: any(value.matches_folded(v) for v in f.query_by_key().get(wanted, ()))
    if key is None and literal is not None:
        return lambda f: literal in f.query_values()
    return lambda f: _scan_pairs(key, value, f)


def _query_predicate(pairs: tuple[QueryPair, ...]) -> Predicate:
    compiled = [_pair_predicate(p) for p in pairs]
    return lambda f: any(predicate(f) for predicate in compiled)


def _header_predicate(name: str, patterns: tuple[str, ...]) -> Predicate:
    key = ascii_lower(name)
    values = _any_of(patterns, case_sensitive=False)
    return lambda f: any(w.matches(v) for v in f.headers.get(key, ()) for w in values)


def compile_conditions(conditions: Conditions) -> tuple[Predicate, ...]:
    """One predicate per condition, cheapest first; a rule matches when all hold."""
    found: list[Predicate] = []
    if conditions.http_request_method:
        methods = frozenset(conditions.http_request_method)
        found.append(lambda f: f.method in methods)
    if conditions.host_header:
        hosts = _any_of(conditions.host_header, case_sensitive=False)
        found.append(lambda f: any(w.matches(f.host) for w in hosts))
    if conditions.path_pattern:
        paths = _any_of(conditions.path_pattern, case_sensitive=True)
        found.append(lambda f: any(w.matches(f.path) for w in paths))
    if conditions.source_ip:
        networks = tuple(ipaddress.ip_network(c) for c in conditions.source_ip)
        found.append(lambda f: f.source is not None and any(f.source in n for n in networks))
    found += [_header_predicate(h.name, h.values) for h in conditions.http_header]
    found += [_query_predicate(q.values) for q in conditions.query_string]
    return tuple(found)


# ---------------------------------------------------------------------------------------------
# Rule tables.


class Match(NamedTuple):
    """The winning rule (None for the default action) and its action."""

    rule: Rule | None
    action: Action

    @property
    def priority(self) -> int:
        """The access log's ``matched_rule_priority``: 0 for the default action."""
        return 0 if self.rule is None else self.rule.priority


def _source(value: IPAddress | str | None) -> IPAddress | None:
    if isinstance(value, str):
        try:
            value = ipaddress.ip_address(value.partition("%")[0])  # drop an IPv6 zone id
        except ValueError:
            return None
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
        return value.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    return value


class RuleTable:
    """The compiled rules of one listener, tried in priority order."""

    def __init__(self, rules: Iterable[Rule], default_action: Action) -> None:
        ordered = sorted(rules, key=lambda r: r.priority)
        self.default = Match(None, default_action)
        self._rules = tuple((Match(r, r.action), compile_conditions(r.conditions)) for r in ordered)
        self.needs_headers = any(r.conditions.http_header for r in ordered)
        self.needs_query = any(r.conditions.query_string for r in ordered)

    @classmethod
    def from_listener(cls, listener: Listener) -> RuleTable:
        """Compile a listener's rules and default action."""
        return cls(listener.rules, listener.default_action)

    def match(self, request: RequestView, source_ip: IPAddress | str | None) -> Match:
        """The first rule, by priority, whose conditions all match; else the default.

        Args:
            request: the request's routing view.
            source_ip: the TCP peer's address (never X-Forwarded-For), or None if unknown.
        """
        facts = _Facts(request, _source(source_ip), self)
        for match, predicates in self._rules:
            if all(predicate(facts) for predicate in predicates):
                return match
        return self.default


# ---------------------------------------------------------------------------------------------
# Redirects.

_PLACEHOLDER = re.compile(r"#\{(protocol|host|port|path|query)\}")


def redirect_status(action: Redirect) -> int:
    """301 or 302."""
    return 301 if action.status_code == "HTTP_301" else 302


def render_redirect(action: Redirect, request: RequestView, *, protocol: str, port: int) -> str:
    """The ``Location`` of a redirect, placeholders replaced by the request's parts.

    Args:
        action: the configured redirect (config load already refused HTTPS -> HTTP).
        request: the request being redirected.
        protocol: the listener's protocol, ``http`` or ``https``.
        port: the listener's port (the port the client connected to).

    ``#{path}`` expands without its leading ``/`` and ``#{query}`` without ``?``, so AWS's
    defaults (path ``/#{path}``, query ``#{query}``) reproduce the original URL. The port
    is always written out, as ALB does.
    """
    values = {
        "protocol": protocol.lower(),
        "host": strip_port(request.host),
        "port": str(port),
        "path": request.path.removeprefix("/"),
        "query": request.query,
    }

    def fill(template: str) -> str:
        # One pass: text coming from the request is never expanded again.
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)

    scheme = fill(action.protocol).lower()
    location = f"{scheme}://{fill(action.host)}:{fill(str(action.port))}{fill(action.path)}"
    query = fill(action.query)
    return f"{location}?{query}" if query else location
