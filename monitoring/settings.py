"""Configuration sections both daemons share (admin listener, logging, lifecycle, HTTP limits).

Every struct is frozen, rejects unknown keys, and declares ``kw_only`` itself (msgspec does not
inherit it). Defaults are what an operator expects without writing anything.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Port = Annotated[int, Meta(ge=0, le=65535, description="TCP port; 0 picks a free port.")]
Seconds = Annotated[float, Meta(gt=0, le=86400)]
# A path the daemon opens: a NUL in it would make the system call raise ValueError, not OSError.
FilePath = Annotated[str, Meta(pattern=r"^[^\x00]*$")]


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every configuration section."""


_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_dns_name(host: str) -> bool:
    """Whether ``host`` is a DNS name: ASCII labels of letters, digits and inner hyphens.

    Anything else would reach the resolver and fail there -- for a name that is not ASCII,
    with a UnicodeError (IDNA) rather than the OSError a bind or connect failure raises.
    """
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)


def host_port(host: str, port: int) -> str:
    """``host:port`` as messages and logs write an address: an IPv6 one in brackets
    (``[::1]:9324``), so that the port cannot be read as the address's last group."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_host_port(host: str, port: int) -> str:
    """``host:port`` as a URL's authority writes it: as :func:`host_port`, with the ``%`` of
    an IPv6 zone id written ``%25`` (RFC 6874: ``http://[fe80::1%25eth0]:9324``; a bare
    ``%`` there starts a percent-encoding, so URL parsers refuse it or read another zone)."""
    if ":" in host:
        return f"[{host.replace('%', '%25')}]:{port}"
    return f"{host}:{port}"


def check_host(host: str) -> None:
    """Reject a listen host that is neither an IP literal nor a DNS name, or that no bind
    could ever take: an IPv4-mapped IPv6 address (both daemons' IPv6 sockets are IPv6-only,
    and the kernel refuses it with EINVAL) or a zone id the resolver cannot read
    (:func:`zone_problem`)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not is_dns_name(host):
            raise ValueError(f"invalid listen host {host!r}: {not_an_address(host)}") from None
        return
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            raise ValueError(
                f"invalid listen host {host!r}: an IPv4-mapped address, which an IPv6-only "
                f"socket cannot bind; listen on {str(address.ipv4_mapped)!r}"
            )
        problem = zone_problem(address)
        if problem is not None:
            raise ValueError(f"invalid listen host {host!r}: {problem}")


def not_an_address(host: str) -> str:
    """Why ``host`` (neither an IP literal nor a DNS name) is refused, with the likely fix of
    an IPv6 address written in brackets, as URLs write it."""
    inner = host.removeprefix("[").removesuffix("]")
    if host.startswith("[") and host.endswith("]") and _is_ipv6(inner):
        return f"write an IPv6 address without brackets ({inner!r})"
    return "not an IP address or a DNS name"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def zone_problem(address: ipaddress.IPv6Address) -> str | None:
    """Why getaddrinfo refuses ``address``'s zone id, or None. glibc reads an interface name
    (``%eth0``) as a zone only on a link-local address (``fe80::/10``, link-local multicast
    ``ff02::/16``); on any other it answers "Name or service not known", so ``::1%lo`` can
    neither be bound nor connected to. An interface index (``%1``) is read on any."""
    zone = address.scope_id
    if zone is None or zone.isdigit():
        return None
    if address.is_link_local or (address.is_multicast and address.packed[1] & 0x0F == 0x02):
        return None
    return (
        "an interface name is a zone id only on a link-local address (fe80::/10); "
        "drop it, or give the interface index (%N)"
    )


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def listen_addresses(host: str) -> frozenset[IpAddress] | None:
    """The addresses a listener on ``host`` binds, resolved as the bind resolves them
    (getaddrinfo with AI_PASSIVE): an IP literal, a numeric form the resolver reads as one
    (``127.1``, ``0x7f.1``), or ``localhost`` as the hosts file has it. None for any other DNS
    name: nothing here asks DNS, since a reload reads the file on the event loop and
    ``check-config`` must give the same answer off the network."""
    try:
        return frozenset({ipaddress.ip_address(host)})
    except ValueError:
        pass
    flags = socket.AI_PASSIVE
    if host.lower() != "localhost":
        flags |= socket.AI_NUMERICHOST
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=flags)
    except (OSError, UnicodeError):
        return None
    return frozenset(ipaddress.ip_address(address[0]) for *_, address in found)


def same_listen_host(host: str, other: str) -> bool:
    """Whether a listener on ``host`` and one on ``other`` bind the same addresses, however
    each is written (``::1`` and ``0:0::1``, ``127.1`` and ``127.0.0.1``): what a reload
    compares to tell whether a listener must move. DNS names compare as names."""
    first, second = listen_addresses(host), listen_addresses(other)
    if first is None or second is None:
        return host.lower().removesuffix(".") == other.lower().removesuffix(".")
    return first == second


def listen_overlap(host: str, other: str) -> bool:
    """Whether listening on one port at ``host`` and at ``other`` takes an address twice: one
    address, or a wildcard and an address of its family (both daemons bind ``::`` with
    IPV6_V6ONLY, as trio does, so it leaves IPv4 alone). Alone, the second bind fails; with
    SO_REUSEPORT (balancer workers) both bind and the kernel shares connections between them.
    A DNS name, not looked up (:func:`listen_addresses`), overlaps the same name and either
    wildcard (whatever it resolves to, the wildcard of its family takes it)."""
    first, second = listen_addresses(host), listen_addresses(other)
    if first is None or second is None:
        if first is None and second is None:
            return host.lower().removesuffix(".") == other.lower().removesuffix(".")
        known = first if first is not None else second
        return any(address.is_unspecified for address in known or ())
    return any(
        a == b or (a.version == b.version and (a.is_unspecified or b.is_unspecified))
        for a in first
        for b in second
    )


def is_loopback_address(address: IpAddress) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped 127.x address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class AdminSettings(Section, frozen=True, kw_only=True):
    """The admin listener: /metrics, /healthz, /readyz and the daemon's admin routes."""

    host: str = "127.0.0.1"
    port: Port = 9325
    token_file: Annotated[
        FilePath,
        Meta(
            description="File holding the bearer token that requests changing state (POST "
            "/reload, the balancer's targets API) must send, from any client; empty: such "
            "requests are served to loopback clients only."
        ),
    ] = ""

    def __post_init__(self) -> None:
        check_host(self.host)


class LoggingSettings(Section, frozen=True, kw_only=True):
    """Logs go to stderr (journald under systemd), one logfmt event per line."""

    level: Literal["debug", "info", "warning", "error"] = "info"


class LifecycleSettings(Section, frozen=True, kw_only=True):
    """Start and stop behaviour."""

    grace_period_seconds: Annotated[
        float,
        Meta(
            ge=0,
            le=3600,
            description="After SIGTERM, how long work in flight may take before it is cut off.",
        ),
    ] = 30.0


class HttpLimits(Section, frozen=True, kw_only=True):
    """Bounds on each HTTP connection, so a slow or hostile client cannot hold resources."""

    header_timeout_seconds: Annotated[
        Seconds, Meta(description="From the first byte of a request to the end of its headers.")
    ] = 10.0
    body_timeout_seconds: Annotated[
        Seconds,
        Meta(
            description="Longest pause while a request body is being received, and the time "
            "a body has to arrive, extended by min_body_rate_bytes_per_second."
        ),
    ] = 30.0
    min_body_rate_bytes_per_second: Annotated[
        int,
        Meta(
            ge=0,
            le=1 << 30,
            description="mod_reqtimeout's body MinRate: a body must arrive within "
            "body_timeout_seconds of its head, plus one second for every this many bytes "
            "received; 0 turns the rate off (only the pause is bounded).",
        ),
    ] = 500
    idle_timeout_seconds: Annotated[
        Seconds, Meta(description="How long an idle keep-alive connection stays open.")
    ] = 60.0
    write_timeout_seconds: Annotated[
        Seconds,
        Meta(description="Longest a client may take to accept each 256 KiB of a response."),
    ] = 30.0
    max_header_bytes: Annotated[
        int, Meta(ge=1024, le=1048576, description="Request line plus all headers.")
    ] = 16384
    max_connections: Annotated[
        int, Meta(ge=1, le=1_000_000, description="Open connections per listener.")
    ] = 10000


def state_directory(configured: str, fallback: str) -> Path:
    """Where a daemon keeps its state: the configured directory, else systemd's
    ``$STATE_DIRECTORY`` (the unit's StateDirectory=), else ``fallback`` under the working
    directory, so a daemon started by hand from a checkout needs no root."""
    if configured:
        return Path(configured)
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else Path(fallback)
