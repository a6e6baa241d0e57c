"""Which listening addresses collide: the rule, and the kernel agreeing with it."""

from __future__ import annotations

import errno
import itertools
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.rebind import in_the_way, overlaps, passive_addresses

ADDRESSES = st.sampled_from(
    ["0.0.0.0", "127.0.0.1", "127.0.0.2", "10.0.0.1", "::", "::1", "2001:db8::1", "fe80::1%lo"]
)
PORTS = st.integers(1, 65535)


@given(ADDRESSES, ADDRESSES, PORTS, PORTS)
def test_the_rule(a: str, b: str, port_a: int, port_b: int) -> None:
    collide = overlaps((a, port_a), (b, port_b))
    assert collide == overlaps((b, port_b), (a, port_a))  # symmetric
    if port_a != port_b or (":" in a) != (":" in b):
        assert not collide  # another port, another family
    elif a == b or a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::"):
        assert collide
    else:
        assert not collide  # two specific addresses


def test_a_name_it_cannot_read_is_assumed_to_collide() -> None:
    assert overlaps(("localhost", 80), ("127.0.0.2", 80))
    assert not overlaps(("localhost", 80), ("127.0.0.2", 81))


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _listen(address: str, port: int) -> socket.socket:
    """A listening socket as trio's open_tcp_listeners makes one."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((address, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


PAIRS = ["0.0.0.0", "127.0.0.1", "127.0.0.2"] + (["::", "::1"] if _ipv6() else [])


@pytest.mark.parametrize(("first", "second"), list(itertools.product(PAIRS, repeat=2)))
def test_the_kernel_refuses_exactly_the_pairs_that_overlap(first: str, second: str) -> None:
    """Against Linux itself: listen on ``first``, then try ``second`` on the same port."""
    held = _listen(first, 0)
    with held:
        port = held.getsockname()[1]
        failure = 0
        try:
            _listen(second, port).close()
        except OSError as exc:
            failure = exc.errno or -1
    assert failure in (0, errno.EADDRINUSE)
    assert (failure == errno.EADDRINUSE) == overlaps((first, port), (second, port))


async def test_the_addresses_a_listener_binds_and_who_is_in_their_way() -> None:
    wanted = await passive_addresses("127.0.0.1", 8080)
    assert wanted == [("127.0.0.1", 8080)]
    assert ("0.0.0.0", 8080) in await passive_addresses("0.0.0.0", 8080)
    held = {
        "wild": [("0.0.0.0", 8080)],
        "other": [("127.0.0.2", 8080)],
        "elsewhere": [("127.0.0.1", 9090)],
        "v6": [("::", 8080)],
    }
    assert in_the_way(held, wanted) == ["wild"]
    assert in_the_way(held, [("0.0.0.0", 8080)]) == ["wild", "other"]
