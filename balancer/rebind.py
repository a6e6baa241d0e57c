"""Which listening addresses collide, for a reload that moves a listener within one port.

Linux refuses to bind a listening socket on an address that overlaps one still listening on
the same port, SO_REUSEADDR or not: ``0.0.0.0:80`` and ``10.0.0.1:80`` (either way round), or
one address reached under two host names (``localhost`` and ``127.0.0.1``). Two different
specific addresses (``127.0.0.1:80``, ``127.0.0.2:80``) do not collide, nor do IPv4 and IPv6
sockets (trio binds ``::`` IPv6-only). With SO_REUSEPORT (workers) nothing collides.

So when a reload cannot bind a new listener because the address is in use, and a listener the
same reload removes holds an overlapping address, the app stops that one first and binds again
(:meth:`balancer.app.BalancerApp.reload`); these helpers tell which removed listeners are in
the way. A port held by anything else (another process, a listener that stays) is no reason
to stop anything.
"""

from __future__ import annotations

import ipaddress
import socket

import trio

Address = tuple[str, int]


def overlaps(bound: Address, wanted: Address) -> bool:
    """Whether a socket listening on ``bound`` keeps ``wanted`` from being bound (numeric
    addresses as getsockname and getaddrinfo give them)."""
    if bound[1] != wanted[1]:
        return False
    try:
        held = ipaddress.ip_address(bound[0].partition("%")[0])
        asked = ipaddress.ip_address(wanted[0].partition("%")[0])
    except ValueError:
        return True  # not numeric: cannot tell, so assume the worst
    if held.version != asked.version:
        return False
    return held == asked or held.is_unspecified or asked.is_unspecified


async def passive_addresses(host: str, port: int) -> list[Address]:
    """The addresses a listener on ``host:port`` binds (as ``bind_tcp`` resolves them)."""
    found = await trio.socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    return [(str(address[0]), int(address[1])) for *_, address in found]


def in_the_way(held: dict[str, list[Address]], wanted: list[Address]) -> list[str]:
    """The names, among listeners holding the addresses ``held``, that block ``wanted``."""
    return [
        name
        for name, addresses in held.items()
        if any(overlaps(mine, theirs) for mine in addresses for theirs in wanted)
    ]
