"""The schema of balancer.toml. Decoded by :mod:`monitoring.configfile`; strict and frozen.

Names, ranges and defaults follow AWS's Application Load Balancer (ELBv2 API and user guide),
so an ALB setup translates key by key. AWS's quotas that protect the data path (values and
wildcards per rule, rules per listener, target groups per action) are enforced at load.
Errors name the key path: a field's own constraint as msgspec reports it
(``... - at `$.target_groups[0].port```), a cross-field rule of one table from its
``__post_init__`` (same form), and a cross-reference between tables with the path spelled
out in the message.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, Literal, NamedTuple

import msgspec
from msgspec import Meta

from balancer.config_rules import TOKEN, Name, StickyDuration, TargetPort, explain_action_type
from balancer.config_rules import Action as Action
from balancer.config_rules import Conditions as Conditions
from balancer.config_rules import FixedResponse as FixedResponse
from balancer.config_rules import Forward as Forward
from balancer.config_rules import GroupStickiness as GroupStickiness
from balancer.config_rules import HttpHeaderCondition as HttpHeaderCondition
from balancer.config_rules import QueryPair as QueryPair
from balancer.config_rules import QueryStringCondition as QueryStringCondition
from balancer.config_rules import Redirect as Redirect
from balancer.config_rules import Rule as Rule
from balancer.config_rules import WeightedTargetGroup as WeightedTargetGroup
from balancer.health import parse_matcher

# AWS's security policy names and what they mean to OpenSSL (their own module: the table).
from balancer.tls_policies import DEFAULT_SSL_POLICY as DEFAULT_SSL_POLICY
from balancer.tls_policies import SSL_POLICIES as SSL_POLICIES
from balancer.tls_policies import SslPolicyName as SslPolicyName
from balancer.tls_policies import TlsPolicy as TlsPolicy
from monitoring.settings import (
    AdminSettings,
    FilePath,
    IpAddress,
    LifecycleSettings,
    LoggingSettings,
    Port,
    Section,
    check_host,
    is_dns_name,
    is_loopback_address,
    listen_addresses,
    listen_overlap,
    not_an_address,
)

DEFAULT_ADMIN_PORT = 9326
STATE_DIR_FALLBACK = "wharf-balancer-state"  # without state_dir and outside systemd

# AWS quotas (load-balancer-limits.md) and ELBv2 API bounds.
MAX_LISTENERS = 50
MAX_RULES = 100  # per load balancer, not counting the listeners' default actions
MAX_CERTIFICATES = 26  # of a listener: its default certificate plus 25
MAX_EXTRA_CERTIFICATES = 25  # per load balancer, not counting the listeners' defaults
MAX_TARGET_GROUPS = 100
MAX_TARGETS_PER_GROUP = 1000
RESERVED_COOKIE_PREFIX = "AWSALB"  # covers AWSALBAPP and AWSALBTG too


# ---------------------------------------------------------------------------------------------
# Listeners.


class Certificate(Section, frozen=True, kw_only=True):
    """A PEM certificate chain and its key; the first of a listener is the default."""

    cert_file: Annotated[FilePath, Meta(min_length=1)]
    key_file: Annotated[FilePath, Meta(min_length=1)]


class ListenerTimeouts(Section, frozen=True, kw_only=True):
    """Timeouts per phase; a peer that stalls longer is cut off."""

    tls_handshake_seconds: Annotated[float, Meta(gt=0, le=300)] = 10.0
    request_header_seconds: Annotated[
        float, Meta(gt=0, le=4000, description="First byte to end of request headers.")
    ] = 60.0
    request_body_seconds: Annotated[
        float, Meta(gt=0, le=4000, description="Longest pause inside a request body.")
    ] = 60.0
    target_connect_seconds: Annotated[float, Meta(gt=0, le=300)] = 10.0
    target_response_seconds: Annotated[
        float,
        Meta(
            ge=0,
            le=4000,
            description="Request sent to response headers; then 504. 0: the listener's "
            "idle_timeout_seconds, as on ALB (where the idle timeout bounds a silent target).",
        ),
    ] = 0.0


class ListenerLimits(Section, frozen=True, kw_only=True):
    """Size limits (AWS: request line 16K, one header 16K, request headers 64K, response
    headers 32K)."""

    request_line_bytes: Annotated[int, Meta(ge=256, le=65536)] = 16384
    request_header_bytes: Annotated[int, Meta(ge=1024, le=1048576)] = 65536
    header_field_bytes: Annotated[
        int, Meta(ge=256, le=1048576, description="One request header: name, ': ', value.")
    ] = 16384
    response_header_bytes: Annotated[int, Meta(ge=1024, le=1048576)] = 32768
    header_count: Annotated[
        int, Meta(ge=8, le=1000, description="Headers per request (HAProxy allows 101).")
    ] = 100
    connections: Annotated[
        int, Meta(ge=1, le=1_000_000, description="Open client connections per worker process.")
    ] = 10000


class AccessLog(Section, frozen=True, kw_only=True):
    """One ALB-format line per request."""

    enabled: bool = False
    destination: Annotated[FilePath, Meta(description='"stderr" or an absolute file path.')] = (
        "stderr"
    )

    def __post_init__(self) -> None:
        if self.destination != "stderr" and not self.destination.startswith("/"):
            raise ValueError('access_log destination must be "stderr" or an absolute path')


class _HttpListenerBase(Section, frozen=True, kw_only=True):
    name: Name
    host: str = "0.0.0.0"
    port: Port
    default_action: Action
    rules: tuple[Rule, ...] = ()
    idle_timeout_seconds: Annotated[
        int, Meta(ge=1, le=4000, description="Idle client or target connection is closed.")
    ] = 60
    client_keep_alive_seconds: Annotated[
        int,
        Meta(
            ge=60,
            le=604800,
            description="A client connection this old gets Connection: close on its next "
            "response (ALB's client_keep_alive.seconds).",
        ),
    ] = 3600
    timeouts: ListenerTimeouts = ListenerTimeouts()
    limits: ListenerLimits = ListenerLimits()
    x_forwarded_for: Annotated[
        Literal["append", "preserve", "remove"],
        Meta(
            description="append the client address; preserve: pass a trusted proxy's header "
            "unchanged (from other peers it is dropped); remove: drop it.",
        ),
    ] = "append"
    x_forwarded_for_client_port: bool = False
    drop_invalid_header_fields: Annotated[
        bool,
        Meta(
            description="Drop request headers whose names are not [-A-Za-z0-9]+ before "
            "forwarding (ALB's routing.http.drop_invalid_header_fields.enabled).",
        ),
    ] = False
    trusted_proxies: Annotated[
        tuple[str, ...], Meta(description="CIDRs whose incoming X-Forwarded-* headers are kept.")
    ] = ()
    access_log: AccessLog = AccessLog()

    @property
    def response_timeout_seconds(self) -> float:
        """How long a target may take to start its response before the client gets a 504."""
        return self.timeouts.target_response_seconds or float(self.idle_timeout_seconds)

    def __post_init__(self) -> None:
        check_host(self.host)
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr)
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {exc}") from None
        seen: set[int] = set()
        for i, rule in enumerate(self.rules):
            if rule.priority in seen:
                raise ValueError(f"rules[{i}].priority {rule.priority} is used twice")
            seen.add(rule.priority)
        # A redirect alone cannot tell that "HTTP" or port 8080 is what its listener has:
        # spelt out, the listener's own protocol or port changes nothing either.
        protocol = "https" if isinstance(self, HttpsListener) else "http"
        for where, action in self.actions():
            if isinstance(action, Redirect):
                loop = action.loop_error(protocol, self.port)
                if loop is not None:
                    raise ValueError(f"{where}: {loop}")

    def actions(self) -> list[tuple[str, Action]]:
        """The default action and each rule's, with their key paths within the listener."""
        found: list[tuple[str, Action]] = [("default_action", self.default_action)]
        return found + [(f"rules[{i}].action", r.action) for i, r in enumerate(self.rules)]


class HttpListener(_HttpListenerBase, frozen=True, kw_only=True, tag="http", tag_field="protocol"):
    """A plain HTTP listener."""


class HttpsListener(
    _HttpListenerBase, frozen=True, kw_only=True, tag="https", tag_field="protocol"
):
    """An HTTPS listener: TLS with certificates chosen by SNI, then HTTP."""

    certificates: Annotated[
        tuple[Certificate, ...], Meta(min_length=1, max_length=MAX_CERTIFICATES)
    ]
    ssl_policy: SslPolicyName = DEFAULT_SSL_POLICY

    def __post_init__(self) -> None:
        super().__post_init__()
        for where, action in self.actions():
            if isinstance(action, Redirect) and action.protocol == "HTTP":
                raise ValueError(f"{where}: an HTTPS listener never redirects down to HTTP")


# Room for tcp, tls, udp and geneve listeners: new tagged classes joined here.
Listener = HttpListener | HttpsListener

# ---------------------------------------------------------------------------------------------
# Target groups.


def check_target_host(host: str) -> str:
    """Accept an IPv4 or IPv6 literal a connection can go to, or a DNS name (resolved by the
    shell); return it in the one spelling its target id uses (:func:`normalise_target_host`).
    Digits and dots alone are an IPv4 address or a mistake, never a name: a top-level
    domain is not all digits (RFC 3696 2), and ``999.1.1.1`` would otherwise wait on DNS
    forever as a target that never resolves."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host.replace(".", "").isdigit():
            raise ValueError(f"target host {host!r} is not a valid IPv4 address") from None
        if not is_dns_name(host):
            raise ValueError(f"target host {host!r}: {not_an_address(host)}") from None
        return host.lower()
    if address.is_unspecified or address.is_multicast or address == _BROADCAST:
        raise ValueError(f"target host {host!r} is not an address a target can have")
    # ipaddress takes any text after "%"; the zone id goes into target ids, metrics labels and
    # the access log's space-separated fields, so only what names an interface passes.
    zone = address.scope_id if isinstance(address, ipaddress.IPv6Address) else None
    if zone is not None and not ZONE_ID.fullmatch(zone):
        raise ValueError(
            f"target host {host!r}: a zone id is an interface name (1-15 letters, digits, "
            "'_', '.' or '-') or an interface index"
        )
    return _canonical(address)


_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")
# Linux interface names (IFNAMSIZ: 15 characters and the NUL) and interface indexes.
ZONE_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def _canonical(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is None:
        mapped = address.ipv4_mapped
        if mapped is not None:  # RFC 5952 5: an IPv4-mapped address keeps its dotted quad
            return f"::ffff:{mapped}"
    return str(address)  # RFC 5952's compressed, lower-case form


def normalise_target_host(host: str) -> str:
    """The one spelling of a target's host that ids are made of: an IP literal in RFC 5952's
    compressed form (``0:0::1`` is ``::1``), a DNS name in lower case (names are
    case-insensitive, RFC 4343). Anything else is returned unchanged (validation refuses it
    elsewhere)."""
    try:
        return check_target_host(host)
    except ValueError:
        return host


def target_id(host: str, port: int) -> str:
    """The id of a target: ``host:port``, IPv6 in brackets, the host normalised (so that one
    target has one id however it is written)."""
    host = normalise_target_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_target_id(text: str) -> tuple[str, int] | None:
    """``(host, port)`` of a target id, the host normalised; None when it is not one."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        return None
    return normalise_target_host(host), int(port)


class Endpoint(NamedTuple):
    """A target with its port resolved against its group's."""

    target_id: str
    host: str
    port: int
    weight: int
    zone: str


class Target(Section, frozen=True, kw_only=True):
    """One target: an address and port, with an optional weight and zone label."""

    host: Annotated[str, Meta(description="IPv4, IPv6 or a DNS name.")]
    port: Annotated[int, Meta(ge=0, le=65535, description="0: the target group's port.")] = 0
    weight: Annotated[int, Meta(ge=1, le=999, description="Relative share of requests.")] = 1
    zone: Annotated[
        str,
        Meta(
            max_length=64,
            description="Free label (an availability zone, a rack), shown by the admin API's "
            "target listing; it does not affect routing, and no metric carries it.",
        ),
    ] = ""

    def __post_init__(self) -> None:
        # One spelling per target, from the file, the API and targets.json alike, so that
        # "listed twice" and deregistration see ``::1`` and ``0::1`` as the same target.
        msgspec.structs.force_setattr(self, "host", check_target_host(self.host))


# RFC 3986 3.3 and 3.4: "/", then pchar (unreserved, %XX, sub-delims, ":", "@"), "/" and "?".
# The path goes on the request line of every check as it is written: a byte h11 refuses to
# send (a space, a control character, anything not ASCII) would fail every check.
HEALTH_CHECK_PATH: Final = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")


class HealthCheck(Section, frozen=True, kw_only=True):
    """Active health checks (ALB defaults)."""

    enabled: bool = True
    protocol: Literal["http", "https", "tcp"] = "http"
    path: Annotated[str, Meta(min_length=1, max_length=1024)] = "/"
    port: Annotated[
        TargetPort | str,
        Meta(description='"traffic-port", or a port: 8080 or "8080" (ALB\'s HealthCheckPort).'),
    ] = "traffic-port"
    interval_seconds: Annotated[int, Meta(ge=5, le=300)] = 30
    timeout_seconds: Annotated[int, Meta(ge=2, le=120)] = 5
    healthy_threshold: Annotated[int, Meta(ge=2, le=10)] = 5
    unhealthy_threshold: Annotated[int, Meta(ge=2, le=10)] = 2
    matcher: Annotated[str, Meta(description='Passing codes: "200", "200,202", "200-299".')] = "200"

    def __post_init__(self) -> None:
        if isinstance(self.port, str) and self.port != "traffic-port":
            port = int(self.port) if self.port.isascii() and self.port.isdigit() else 0
            if not 1 <= port <= 65535:
                raise ValueError(f'health_check port {self.port!r}: use 1-65535 or "traffic-port"')
            msgspec.structs.force_setattr(self, "port", port)  # "8080", as ALB writes it
        if not self.path.startswith("/"):
            raise ValueError("health_check path must start with '/'")
        if not HEALTH_CHECK_PATH.fullmatch(self.path):
            raise ValueError(
                f"health_check path {self.path!r} must be '/' followed by RFC 3986 path and "
                "query characters (letters, digits, -._~!$&'()*+,;=:@/? and %XX escapes): "
                "percent-encode anything else (a space is %20, an 'é' %C3%A9)"
            )
        if self.timeout_seconds >= self.interval_seconds:
            raise ValueError("health_check timeout_seconds must be less than interval_seconds")
        parse_matcher(self.matcher)


class Stickiness(Section, frozen=True, kw_only=True):
    """Keep a client on one target: an AWSALB cookie, or follow the application's cookie."""

    enabled: bool = False
    type: Literal["lb_cookie", "app_cookie"] = "lb_cookie"
    duration_seconds: StickyDuration = 86400
    cookie_name: Annotated[str, Meta(description="The application's cookie (app_cookie).")] = ""

    def __post_init__(self) -> None:
        if self.type == "lb_cookie" and self.cookie_name:
            raise ValueError("cookie_name is only used with type = app_cookie")
        if self.type == "app_cookie":
            if not self.cookie_name:
                raise ValueError("app_cookie stickiness needs a cookie_name")
            if not TOKEN.fullmatch(self.cookie_name):
                raise ValueError(
                    f"cookie_name {self.cookie_name!r} must be 1-40 characters of an HTTP "
                    "token (letters, digits and !#$%&'+.^_`|~-)"
                )
            if self.cookie_name.startswith(RESERVED_COOKIE_PREFIX):
                raise ValueError(f"cookie_name cannot start with {RESERVED_COOKIE_PREFIX}")


class MinimumHealthyTargets(Section, frozen=True, kw_only=True):
    """Fewer healthy targets than this: route to all of them (fail open)."""

    count: Annotated[int, Meta(ge=1, le=MAX_TARGETS_PER_GROUP)] = 1
    percent: Annotated[int, Meta(ge=0, le=100, description="0 turns the percentage off.")] = 0


class TargetGroup(Section, frozen=True, kw_only=True):
    """Targets that receive requests, how they are chosen and how their health is checked."""

    name: Name
    protocol: Literal["http", "https"] = "http"
    port: Annotated[TargetPort, Meta(description="Port of targets that do not name one.")] = 80
    targets: tuple[Target, ...] = ()
    algorithm: Literal["round_robin", "least_outstanding_requests", "weighted_random"] = (
        "round_robin"
    )
    slow_start_seconds: Annotated[int, Meta(ge=0, le=900, description="0 (off) or 30-900.")] = 0
    deregistration_delay_seconds: Annotated[int, Meta(ge=0, le=3600)] = 300
    health_check: HealthCheck = HealthCheck()
    stickiness: Stickiness = Stickiness()
    minimum_healthy_targets: MinimumHealthyTargets = MinimumHealthyTargets()

    def __post_init__(self) -> None:
        if 0 < self.slow_start_seconds < 30:
            raise ValueError("slow_start_seconds must be 0 (off) or 30-900")
        # AWS, "Edit target group attributes" (edit-target-group-attributes.md), Routing
        # algorithm: "The least outstanding requests routing algorithm can not be used with
        # slow start mode."; "The weighted random routing algorithm can not be used with slow
        # start mode." and "... can not be used with sticky sessions." (the group's own
        # stickiness: a weighted forward's AWSALBTG picks a group, not a target).
        if self.slow_start_seconds and self.algorithm != "round_robin":
            raise ValueError(f"slow start does not combine with {self.algorithm} (AWS)")
        if self.stickiness.enabled and self.algorithm == "weighted_random":
            raise ValueError(
                "stickiness (stickiness.enabled) does not combine with weighted_random (AWS)"
            )
        if len(self.targets) > MAX_TARGETS_PER_GROUP:
            raise ValueError(f"at most {MAX_TARGETS_PER_GROUP} targets per target group")
        seen: set[str] = set()
        for i, endpoint in enumerate(self.endpoints()):
            if endpoint.target_id in seen:
                raise ValueError(
                    f"targets[{i}]: a target (host and port) is listed twice: {endpoint.target_id}"
                )
            seen.add(endpoint.target_id)

    def endpoints(self) -> list[Endpoint]:
        """The targets with their ports resolved, in configuration order."""
        return [
            Endpoint(
                target_id(t.host, t.port or self.port),
                t.host,
                t.port or self.port,
                t.weight,
                t.zone,
            )
            for t in self.targets
        ]


# ---------------------------------------------------------------------------------------------
# The file.


class StickinessKeys(Section, frozen=True, kw_only=True):
    """Keys that seal stickiness cookies: the first seals, every one opens (rotation)."""

    key_files: Annotated[
        tuple[Annotated[FilePath, Meta(min_length=1)], ...],
        Meta(description="Files of at least 16 random bytes; share across nodes."),
    ] = ()


class BalancerAdminSettings(AdminSettings, frozen=True, kw_only=True):
    """The admin listener, on its own default port (the broker's is 9325), so that both
    daemons run on one host; also when an ``[admin]`` table leaves ``port`` out."""

    port: Port = DEFAULT_ADMIN_PORT


class BalancerConfig(Section, frozen=True, kw_only=True):
    """Everything wharf-balancer reads from its configuration file."""

    admin: BalancerAdminSettings = BalancerAdminSettings()
    logging: LoggingSettings = LoggingSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    workers: Annotated[
        int, Meta(ge=1, le=256, description="Processes sharing the listeners (SO_REUSEPORT).")
    ] = 1
    state_dir: Annotated[
        FilePath,
        Meta(
            description="Directory of targets.json: targets registered and deregistered "
            "through the admin API, kept across restarts. Empty: $STATE_DIRECTORY under "
            "systemd, else ./wharf-balancer-state.",
        ),
    ] = ""
    stickiness: StickinessKeys = StickinessKeys()
    listeners: Annotated[tuple[Listener, ...], Meta(max_length=MAX_LISTENERS)] = ()
    target_groups: Annotated[tuple[TargetGroup, ...], Meta(max_length=MAX_TARGET_GROUPS)] = ()

    @staticmethod
    def explain_error(reason: str) -> str:
        """A decoding error in the operator's terms (monitoring.configfile asks): an action
        type the balancer does not have says which it has."""
        return explain_action_type(reason)

    def __post_init__(self) -> None:
        _unique([g.name for g in self.target_groups], "target_groups", "name")
        _unique([li.name for li in self.listeners], "listeners", "name")
        self._check_listener_addresses()
        groups = {g.name: g for g in self.target_groups}
        sticky = [
            f"target_groups[{i}]" for i, g in enumerate(self.target_groups) if g.stickiness.enabled
        ]
        for where, action in self.actions():
            if not isinstance(action, Forward):
                continue
            weighted = action.weighted()
            for j, member in enumerate(weighted):
                if member.name not in groups:
                    field = "target_group" if action.target_group else f"target_groups[{j}].name"
                    raise ValueError(
                        f"no target group named {member.name!r} - at `$.{where}.{field}`"
                    )
            if action.stickiness.enabled:
                # A one-group list too: its AWSALBTG cookie is issued (the first step of a
                # blue/green rollout), so it needs the key like any other.
                sticky.append(where)
            if len(weighted) < 2:
                continue
            members = [groups[m.name] for m in weighted]
            if any(g.stickiness.type == "app_cookie" and g.stickiness.enabled for g in members):
                raise ValueError(
                    f"app_cookie stickiness does not work with weighted target groups (AWS) "
                    f"- at `$.{where}`"
                )
            if any(g.stickiness.enabled for g in members) and not action.stickiness.enabled:
                raise ValueError(
                    "a target group of this weighted forward has stickiness enabled, so "
                    f"stickiness.enabled must be true here too (AWS) - at `$.{where}`"
                )
        if sticky and not self.stickiness.key_files:
            raise ValueError(
                f"stickiness is enabled ({sticky[0]}) but stickiness.key_files is empty: "
                "cookies must be sealed with a key every balancer process shares"
            )
        self._check_quotas()
        self._check_admin_ports()
        self._check_no_target_is_admin()

    def _check_quotas(self) -> None:
        """AWS's quotas per load balancer (load-balancer-limits.md), which span listeners: the
        error names the first rule or certificate past the quota."""
        rules = certificates = 0
        for i, listener in enumerate(self.listeners):
            if rules + len(listener.rules) > MAX_RULES:
                raise ValueError(
                    f"at most {MAX_RULES} rules per load balancer (AWS's quota, default "
                    f"actions not counted); the listeners have "
                    f"{sum(len(li.rules) for li in self.listeners)} "
                    f"- at `$.listeners[{i}].rules[{MAX_RULES - rules}]`"
                )
            rules += len(listener.rules)
            if not isinstance(listener, HttpsListener):
                continue
            extra = len(listener.certificates) - 1  # the first is the listener's default
            if certificates + extra > MAX_EXTRA_CERTIFICATES:
                total = sum(
                    len(li.certificates) - 1
                    for li in self.listeners
                    if isinstance(li, HttpsListener)
                )
                raise ValueError(
                    f"at most {MAX_EXTRA_CERTIFICATES} certificates per load balancer besides "
                    f"each listener's default (AWS's quota); the listeners have {total} "
                    f"- at `$.listeners[{i}].certificates"
                    f"[{MAX_EXTRA_CERTIFICATES - certificates + 1}]`"
                )
            certificates += extra

    def _check_listener_addresses(self) -> None:
        """Refuse two listeners on one address and port, however each is written
        (``127.0.0.1`` and ``localhost``, ``0.0.0.0`` and any IPv4 address): with one worker
        the second bind fails naming no key; with more, SO_REUSEPORT lets both bind and the
        kernel hands each connection to either listener's rules at random. Port 0 asks the
        kernel for a free port, so it never collides."""
        for j, second in enumerate(self.listeners):
            for i, first in enumerate(self.listeners[:j]):
                if first.port == 0 or first.port != second.port:
                    continue
                if listen_overlap(first.host, second.host):
                    wildcard = any(
                        address.is_unspecified
                        for host in (first.host, second.host)
                        for address in listen_addresses(host) or ()
                    )
                    why = " (a wildcard address takes every address of its family)"
                    raise ValueError(
                        f"listeners {first.name!r} ({_host_port(first.host, first.port)}) and "
                        f"{second.name!r} ({_host_port(second.host, second.port)}) listen on "
                        f"one address and port{why if wildcard else ''} "
                        f"- at `$.listeners[{i}]` and `$.listeners[{j}]`"
                    )

    def _check_admin_ports(self) -> None:
        """Refuse a listener on the port of an admin listener (worker ``i`` serves its own on
        ``admin.port + i``) at an address that overlaps: the start would fail on a bind that
        names no key. The listeners' SO_REUSEPORT does not help, the admin socket has none."""
        if self.admin.port == 0:  # the kernel picks a free one
            return
        first = self.admin.port
        for i, listener in enumerate(self.listeners):
            index = listener.port - first
            if not 0 <= index < self.workers or not listen_overlap(self.admin.host, listener.host):
                continue
            raise ValueError(
                f"{_admin_port(index)} is {listener.port}, the port of listener "
                f"{listener.name!r} too - at `$.admin.port` and `$.listeners[{i}].port`"
            )

    def _check_no_target_is_admin(self) -> None:
        """Refuse a target that is this balancer's own admin listener: it would connect from
        loopback for every client of the listeners forwarding to it, and the admin serves
        changes (targets, reload) to loopback clients without a token."""
        for i, group in enumerate(self.target_groups):
            for j, endpoint in enumerate(group.endpoints()):
                admin = self.admin_listener_at(endpoint.host, endpoint.port)
                if admin is not None:
                    raise ValueError(
                        f"target {endpoint.target_id} of target group {group.name!r} is this "
                        f"balancer's own admin listener ({admin}): {ADMIN_AS_TARGET} "
                        f"- at `$.target_groups[{i}].targets[{j}]`"
                    )

    def admin_listener_at(self, host: str, port: int) -> str | None:
        """Which of this balancer's admin listeners a target ``host:port`` connects to
        (``admin.port``, or ``admin.port + i (worker i's admin)``), or None: the admin port
        on a loopback address or on the admin's own host. (An admin on a wildcard is also
        reached on the host's other addresses, which only the kernel knows: the admin
        refuses what a proxy relays, whatever the address.)"""
        index = port - self.admin.port
        if self.admin.port == 0 or not 0 <= index < self.workers:
            return None
        addresses = listen_addresses(host)
        if addresses is None:  # a DNS name, not looked up
            reached = host.lower() == self.admin.host.lower()
        else:
            # A connect() to ::ffff:10.0.0.5 reaches 10.0.0.5: compare the IPv4 address.
            addresses = frozenset(_unmapped(a) for a in addresses)
            own = listen_addresses(self.admin.host) or frozenset()
            reached = bool(addresses & own) or any(map(is_loopback_address, addresses))
        return _admin_port(index) if reached else None

    def actions(self) -> list[tuple[str, Action]]:
        """Every action with its key path (``listeners[0].rules[2].action``)."""
        found: list[tuple[str, Action]] = []
        for i, listener in enumerate(self.listeners):
            found.append((f"listeners[{i}].default_action", listener.default_action))
            found += [
                (f"listeners[{i}].rules[{j}].action", rule.action)
                for j, rule in enumerate(listener.rules)
            ]
        return found


ADMIN_AS_TARGET: Final = (
    "every client of a listener forwarding to it would reach the admin API as a loopback "
    "client, and could register targets or reload; scrape /metrics from the admin "
    "listener itself"
)


def _unmapped(address: IpAddress) -> IpAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is; any other as it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _admin_port(index: int) -> str:
    return "admin.port" if index == 0 else f"admin.port + {index} (worker {index}'s admin)"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unique(values: list[str | None], table: str, what: str) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value is None:
            continue
        if value in seen:
            raise ValueError(f"{what} {value!r} is used twice - at `$.{table}[{i}]`")
        seen.add(value)
