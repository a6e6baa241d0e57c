"""Connected pairs of real (AF_UNIX) stream sockets, as a listener's accept would give, for
tests that need a socket rather than a memory stream; closed after each test
(``tests/conftest.py``)."""

from __future__ import annotations

import trio

from monitoring import fastio

_OPEN: list[trio.socket.SocketType] = []


def raw_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """Two connected trio sockets."""
    one, other = trio.socket.socketpair()
    _OPEN.extend((one, other))
    return one, other


def stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two connected socket streams."""
    one, other = raw_pair()
    return trio.SocketStream(one), trio.SocketStream(other)


def close_all() -> None:
    """Close what the test opened; after trio's run, so through the standard-library socket."""
    while _OPEN:
        raw = fastio.raw_socket(_OPEN.pop())
        if raw is not None:
            raw.close()
