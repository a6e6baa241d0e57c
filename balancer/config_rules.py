"""The listener-rule part of balancer.toml's schema: conditions, actions and rules.

Split from :mod:`balancer.config` (which re-exports every name) to keep each module readable in
one sitting. Character sets, lengths and counts are AWS's (rule-condition-types.md, the ELBv2
API ``*ConditionConfig`` and ``*ActionConfig`` shapes, load-balancer-limits.md); matching
itself lives in :mod:`balancer.rules`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from msgspec import Meta

from monitoring.settings import Section

# AWS quotas (load-balancer-limits.md) and ELBv2 API bounds.
MAX_GROUPS_PER_FORWARD = 5
MAX_VALUES_PER_CONDITION = 3  # "up to three match evaluations per condition"
MAX_VALUES_PER_RULE = 5  # "up to five match evaluations per rule"
MAX_WILDCARDS_PER_RULE = 5
MAX_FIXED_BODY_CHARACTERS = 1024  # FixedResponseActionConfig.MessageBody: "Maximum length of 1024"

NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?$"
Name = Annotated[
    str,
    Meta(pattern=NAME_PATTERN, description="1-32 letters, digits or inner hyphens (AWS's rule)."),
]
TargetPort = Annotated[int, Meta(ge=1, le=65535)]
StickyDuration = Annotated[int, Meta(ge=1, le=604800, description="1 second to 7 days.")]

# ---------------------------------------------------------------------------------------------
# Rule conditions (rule-condition-types.md). Character sets are AWS's: visible ASCII only.

_HOST_PATTERN = re.compile(r"[A-Za-z0-9.*?-]{1,128}")
_HOST_TLD = re.compile(r"[A-Za-z]+")  # ALB: "only alphabetical characters after the final ."
_PATH_PATTERN = re.compile(r"[A-Za-z0-9_\-.$/~\"'@:+&*?]{1,128}")
_METHOD = re.compile(r"[A-Z_-]{1,40}")
TOKEN = re.compile(r"[A-Za-z0-9!#$%&'+.^_`|~-]{1,40}")  # an RFC 9110 token without '*'
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,128}")
# A query condition's key and value: a value may hold a space (a decoded %20; '+' stays '+').
_QUERY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
_QUERY_VALUE = re.compile(r"[\x20-\x7e]{1,128}")
# What a redirect's host, path and query may hold besides their placeholders. Host and path:
# the sets of the user guide's redirect-actions (load-balancer-listeners.md). A host's '*' and
# '?' ("wildcards" there) are left out: in a Location they would end the host. The path's set
# has no '#', which would turn the rest of the Location, the query too, into a fragment. AWS
# names no set for the query ("URL-encoded when necessary"): visible ASCII but '#'.
_REDIRECT_HOST = re.compile(r"[A-Za-z0-9.-]*")
_REDIRECT_PATH = re.compile(r"[A-Za-z0-9_\-.$/~\"'@:+&*?]*")
_REDIRECT_QUERY = re.compile(r"[\x21\x22\x24-\x7e]*")


def count_wildcards(pattern: str, *, escapes: bool = False) -> int:
    """How many ``*`` and ``?`` act as wildcards (``escapes``: ``\\*`` is a literal)."""
    count, i = 0, 0
    while i < len(pattern):
        if escapes and pattern[i] == "\\":
            i += 2
            continue
        count += pattern[i] in "*?"
        i += 1
    return count


def _check(regex: re.Pattern[str], value: str, what: str, rule: str) -> None:
    if not regex.fullmatch(value):
        raise ValueError(f"{what} value {value!r} is invalid: {rule}")


class HttpHeaderCondition(Section, frozen=True, kw_only=True):
    """Match one request header: name case-insensitive, values with wildcards (any of)."""

    name: Annotated[str, Meta(description="Header name, no wildcards, at most 40 characters.")]
    values: Annotated[tuple[str, ...], Meta(description="Patterns (case-insensitive, * and ?).")]


class QueryPair(Section, frozen=True, kw_only=True):
    """One key/value pattern of a query-string condition; no key matches any key."""

    key: Annotated[str, Meta(description="Key pattern; empty matches any key.")] = ""
    value: Annotated[str, Meta(description="Value pattern; \\* and \\? are literals.")]


class QueryStringCondition(Section, frozen=True, kw_only=True):
    """Match the query string: any of the pairs, after percent-decoding."""

    values: tuple[QueryPair, ...]


class Conditions(Section, frozen=True, kw_only=True):
    """A rule's conditions: all must match (AND); the values of one are alternatives (OR).

    An empty list means "no such condition". ``http_header`` and ``query_string`` may repeat.
    """

    host_header: Annotated[
        tuple[str, ...], Meta(description="Host patterns: case-insensitive, * and ?, port ignored.")
    ] = ()
    path_pattern: Annotated[
        tuple[str, ...], Meta(description="Path patterns: case-sensitive, * and ?, query excluded.")
    ] = ()
    http_header: tuple[HttpHeaderCondition, ...] = ()
    http_request_method: Annotated[
        tuple[str, ...], Meta(description="Methods, exact and case-sensitive.")
    ] = ()
    query_string: tuple[QueryStringCondition, ...] = ()
    source_ip: Annotated[
        tuple[str, ...], Meta(description="Client CIDRs (the TCP peer, never X-Forwarded-For).")
    ] = ()

    def __post_init__(self) -> None:
        for value in self.host_header:
            _check(_HOST_PATTERN, value, "host_header", "1-128 letters, digits, '-', '.', * or ?")
            if "." not in value or not _HOST_TLD.fullmatch(value.rsplit(".", 1)[1]):
                raise ValueError(
                    f"host_header value {value!r} is invalid: it needs a '.' and only letters "
                    "after the last one, e.g. '*.example.com'"
                )
        for value in self.path_pattern:
            _check(_PATH_PATTERN, value, "path_pattern", "1-128 of A-Z a-z 0-9 _-.$/~\"'@:+& * ?")
        for value in self.http_request_method:
            _check(_METHOD, value, "http_request_method", "1-40 of A-Z, '-' and '_'")
        for header in self.http_header:
            _check(TOKEN, header.name, "http_header name", "a token of 1-40 characters")
            if header.name.lower() == "host":
                # HttpHeaderConditionConfig: "You can't use an HTTP header condition to
                # specify the host header. Instead, use a host condition."
                raise ValueError("http_header cannot match Host: use a host_header condition")
            for value in header.values:
                _check(_HEADER_VALUE, value, "http_header", "1-128 visible ASCII characters")
        for query in self.query_string:
            for pair in query.values:
                if pair.key:
                    _check(_QUERY_KEY, pair.key, "query_string key", "1-128 visible ASCII")
                _check(_QUERY_VALUE, pair.value, "query_string", "1-128 visible ASCII characters")
        for cidr in self.source_ip:
            try:
                network = ipaddress.ip_network(cidr)
            except ValueError as exc:
                raise ValueError(f"source_ip value {cidr!r} is invalid: {exc}") from None
            if network == ipaddress.ip_network("255.255.255.255/32"):
                raise ValueError("source_ip value '255.255.255.255/32' is not allowed (AWS)")
        groups = self.value_groups()
        for field, values in groups:
            if not values and field in ("http_header", "query_string"):
                raise ValueError(f"a {field} condition needs at least one value")
            if len(values) > MAX_VALUES_PER_CONDITION:
                raise ValueError(
                    f"{field} has {len(values)} values; at most {MAX_VALUES_PER_CONDITION} "
                    "per condition"
                )
        total = sum(len(values) for _, values in groups)
        if total > MAX_VALUES_PER_RULE:
            raise ValueError(f"{total} condition values; at most {MAX_VALUES_PER_RULE} per rule")
        wildcards = sum(count_wildcards(v) for f, vs in groups if f != "query_string" for v in vs)
        wildcards += sum(
            count_wildcards(p.key, escapes=True) + count_wildcards(p.value, escapes=True)
            for q in self.query_string
            for p in q.values
        )
        if wildcards > MAX_WILDCARDS_PER_RULE:
            raise ValueError(f"{wildcards} wildcards; at most {MAX_WILDCARDS_PER_RULE} per rule")

    def value_groups(self) -> list[tuple[str, tuple[str, ...]]]:
        """Each present condition with its values (query pairs as ``key=value``)."""
        groups: list[tuple[str, tuple[str, ...]]] = [
            ("host_header", self.host_header),
            ("path_pattern", self.path_pattern),
            ("http_request_method", self.http_request_method),
            ("source_ip", self.source_ip),
        ]
        present = [(f, v) for f, v in groups if v]
        present += [("http_header", h.values) for h in self.http_header]
        present += [
            ("query_string", tuple(f"{p.key}={p.value}" for p in q.values))
            for q in self.query_string
        ]
        return present


# ---------------------------------------------------------------------------------------------
# Actions (load-balancer-listeners.md, ELBv2 API *ActionConfig).


class WeightedTargetGroup(Section, frozen=True, kw_only=True):
    """One target group of a weighted forward."""

    name: Name
    weight: Annotated[int, Meta(ge=0, le=999, description="Share of requests; 0 = none.")] = 1


class GroupStickiness(Section, frozen=True, kw_only=True):
    """Keep a client on the target group it was first sent to (cookie AWSALBTG)."""

    enabled: bool = False
    duration_seconds: StickyDuration = 3600


class Forward(Section, frozen=True, kw_only=True, tag="forward", tag_field="type"):
    """Forward to one target group, or split by weight across up to five."""

    target_group: Annotated[
        str, Meta(description="The one target group (or use target_groups).")
    ] = ""
    target_groups: tuple[WeightedTargetGroup, ...] = ()
    stickiness: GroupStickiness = GroupStickiness()

    def __post_init__(self) -> None:
        if bool(self.target_group) == bool(self.target_groups):
            raise ValueError("a forward action needs exactly one of target_group or target_groups")
        names = [g.name for g in self.target_groups]
        if len(names) > MAX_GROUPS_PER_FORWARD:
            raise ValueError(f"at most {MAX_GROUPS_PER_FORWARD} target_groups per forward action")
        if len(set(names)) != len(names):
            raise ValueError("a target group appears twice in target_groups")
        if names and not any(g.weight for g in self.target_groups):
            raise ValueError("at least one of target_groups needs a weight above 0")

    def weighted(self) -> tuple[WeightedTargetGroup, ...]:
        """The target groups with their weights (weight 1 for the single-group form)."""
        if self.target_group:
            return (WeightedTargetGroup(name=self.target_group),)
        return self.target_groups


# Which placeholders each redirect field may use (load-balancer-listeners.md).
_PLACEHOLDER = re.compile(r"#\{([^}]*)\}")
_ALLOWED_PLACEHOLDERS = {
    "host": {"host"},
    "path": {"host", "port", "path"},
    "query": {"protocol", "host", "port", "path", "query"},
}
_ALL_KEPT = "protocol, host, port and path all keep the request's"


class Redirect(Section, frozen=True, kw_only=True, tag="redirect", tag_field="type"):
    """Redirect to ``protocol://host:port/path?query``; unset parts keep the request's."""

    protocol: Literal["HTTP", "HTTPS", "#{protocol}"] = "#{protocol}"
    host: Annotated[str, Meta(min_length=1, max_length=128)] = "#{host}"
    port: Annotated[
        int | str, Meta(description="1-65535 (a number or, as ALB writes it, a string) or #{port}.")
    ] = "#{port}"
    path: Annotated[str, Meta(min_length=1, max_length=128)] = "/#{path}"
    query: Annotated[str, Meta(max_length=128)] = "#{query}"
    status_code: Literal["HTTP_301", "HTTP_302"]

    def __post_init__(self) -> None:
        for field in ("host", "path", "query"):
            value: str = getattr(self, field)
            for name in _PLACEHOLDER.findall(value):
                if name not in _ALLOWED_PLACEHOLDERS[field]:
                    raise ValueError(f"redirect {field} cannot use the placeholder #{{{name}}}")
        if not self.path.startswith("/"):
            raise ValueError("redirect path must start with '/'")
        port = self.port
        if isinstance(port, str) and port != "#{port}":
            if not (port.isascii() and port.isdigit()):
                raise ValueError(f"redirect port {port!r}: a number from 1 to 65535 or #{{port}}")
            port = int(port)
        if isinstance(port, int) and not 1 <= port <= 65535:
            raise ValueError(f"redirect port {port}: a number from 1 to 65535 or #{{port}}")
        if self.query.startswith("?"):
            raise ValueError(
                f"redirect query {self.query!r}: leave out the leading '?', it is added (AWS)"
            )
        for field, pattern, allowed in (
            ("host", _REDIRECT_HOST, "letters, digits, '.' and '-'"),
            ("path", _REDIRECT_PATH, "letters, digits and _-.$/~\"'@:+&*? (AWS's set)"),
            ("query", _REDIRECT_QUERY, "visible ASCII characters but '#', no spaces"),
        ):
            value = getattr(self, field)
            literal = _PLACEHOLDER.sub("", value)
            if not pattern.fullmatch(literal):
                # A space, a CR LF or a '/' in a host would make a Location that is no URL,
                # or a response head h11 refuses to write.
                why = ""
                if "#" in literal and field != "host":
                    swallowed = "the query" if field == "path" else "the rest (write it %23)"
                    why = f": '#' would start a fragment and swallow {swallowed}"
                raise ValueError(f"redirect {field} {value!r}: only {allowed}{why}")
        if self.keeps_the_url():
            raise ValueError(self._loop_message(_ALL_KEPT))

    def keeps_the_url(self, listener_protocol: str = "", listener_port: int = 0) -> bool:
        """Whether this redirect keeps the protocol, host, port and path of every request it
        takes on a listener of ``listener_protocol`` (``http`` or ``https``) and
        ``listener_port``; without them (or on port 0, picked by the kernel) only the
        placeholders are known to keep a part.

        These four are the parts AWS's loop guard counts (RedirectActionConfig: "You must
        modify at least one of the following components to avoid a redirect loop: protocol,
        hostname, port, or path"), so a changed query alone is no change. A literal host or path
        counts as one, as on ALB, though it may equal some request's own.
        """
        same_protocol = self.protocol in ("#{protocol}", listener_protocol.upper())
        same_port = self.port == "#{port}" or (
            listener_port != 0 and int(self.port) == listener_port
        )
        return same_protocol and same_port and (self.host, self.path) == ("#{host}", "/#{path}")

    def loop_error(self, listener_protocol: str, listener_port: int) -> str | None:
        """Why this redirect sends every request it takes on a listener of
        ``listener_protocol`` (``http`` or ``https``) and ``listener_port`` back to the same
        protocol, host, port and path, or None when it changes one of them."""
        if not self.keeps_the_url(listener_protocol, listener_port):
            return None
        own = [f"protocol {self.protocol!r}"] if self.protocol != "#{protocol}" else []
        own += [f"port {self.port}"] if self.port != "#{port}" else []
        if not own:
            return self._loop_message(_ALL_KEPT)
        verb = "are" if len(own) > 1 else "is"
        return self._loop_message(
            f"{' and '.join(own)} {verb} this {listener_protocol} listener's own and the other "
            "parts keep the request's"
        )

    def _loop_message(self, why: str) -> str:
        message = (
            "a redirect must change at least one of protocol, host, port, path (AWS), or it "
            f"loops: {why}"
        )
        if self.query != "#{query}":
            message += "; a changed query does not count"
        return message


class FixedResponse(Section, frozen=True, kw_only=True, tag="fixed_response", tag_field="type"):
    """Answer directly with a status code and an optional body."""

    status_code: Annotated[int, Meta(ge=200, le=599, description="2XX, 4XX or 5XX.")]
    content_type: Literal[
        "text/plain", "text/css", "text/html", "application/javascript", "application/json"
    ] = "text/plain"
    message_body: Annotated[str, Meta(description="At most 1024 characters.")] = ""

    def __post_init__(self) -> None:
        if 300 <= self.status_code < 400:
            raise ValueError("a fixed response status must be 2XX, 4XX or 5XX; use redirect")
        if len(self.message_body) > MAX_FIXED_BODY_CHARACTERS:
            raise ValueError(f"message_body is longer than {MAX_FIXED_BODY_CHARACTERS} characters")


Action = Forward | Redirect | FixedResponse

ACTION_TYPES = ("forward", "redirect", "fixed_response")
# msgspec's words for an action ``type`` that is none of the tags above.
_UNKNOWN_ACTION_TYPE = re.compile(
    r"Invalid value '(?P<value>.*)' - at "
    r"`(?P<key>\$\.listeners\[\d+\]\.(?:default_action|rules\[\d+\]\.action)\.type)`"
)


def explain_action_type(reason: str) -> str:
    """A decoding error about an action ``type`` that is none of :data:`ACTION_TYPES`,
    reworded to say which types there are; ``reason`` unchanged for any other error.

    ALB's ``authenticate-oidc`` and ``authenticate-cognito`` actions have no counterpart here,
    and ALB spells ``fixed-response`` with a hyphen: a file translated from an ALB setup
    should say so rather than "Invalid value".
    """
    found = _UNKNOWN_ACTION_TYPE.fullmatch(reason)
    if found is None:
        return reason
    value = found["value"]
    alb_name = value.lower().replace("_", "-")
    if alb_name.startswith("authenticate"):
        why = (
            f"action type {value!r} is not supported: wharf-balancer has none of ALB's "
            "authenticate actions (authenticate-oidc, authenticate-cognito); authenticate "
            "users in the application or in a proxy behind the balancer"
        )
    elif alb_name.replace("-", "_") in ACTION_TYPES:
        why = f"action type {value!r} is written {alb_name.replace('-', '_')!r} here"
    else:
        why = f"unknown action type {value!r}"
    return f"{why}; the action types are {', '.join(ACTION_TYPES)} - at `{found['key']}`"


class Rule(Section, frozen=True, kw_only=True):
    """A listener rule: when all conditions match, take the action."""

    priority: Annotated[int, Meta(ge=1, le=50000, description="Lowest number wins; unique.")]
    conditions: Conditions
    action: Action

    def __post_init__(self) -> None:
        if not self.conditions.value_groups():
            raise ValueError("a rule needs at least one condition (the default action has none)")
