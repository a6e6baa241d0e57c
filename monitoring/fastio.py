"""Socket reads and writes for hot paths, with trio's semantics and less overhead.

``trio.SocketStream.send_all`` / ``receive_some`` cost, per call, two context managers
(error translation, conflict detection) and a trip through the scheduler even when the
kernel could take or give the bytes at once; the balancer's proxy makes four such calls per
request, the HTTP server of the broker and the admin listeners two, and on both that is a
measurable share of a request's CPU time. These helpers try the syscall on the underlying
non-blocking socket first and only fall back to trio's waiting (``wait_readable`` /
``wait_writable``, which are checkpoints) when the kernel says ``EAGAIN``;
:func:`try_receive` and :func:`try_send` only try, so that a caller can set up a deadline
(a cancel scope) for the rare call that must wait, and for it alone.

Fairness and cancellation: a call that completes at once is not a checkpoint. Callers
therefore take one per request on their own (the proxy waits for every new request through
trio's path; the HTTP server takes a shielded checkpoint when a request was there at once),
so a connection cannot monopolise the event loop.

Errors follow trio's stream vocabulary: a reset or broken pipe raises
``trio.BrokenResourceError``, a socket closed by this process ``trio.ClosedResourceError``.
The standard-library socket is trio's private ``_sock`` attribute (stable since trio's first
releases); without it, every call takes trio's public path.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import socket
import termios
from collections.abc import Callable
from typing import Any, Final

import trio

# send() of a large buffer may take only part of it; the rest waits for writability.
_BLOCKING = (BlockingIOError, InterruptedError)
# The most buffers one sendmsg() takes (EMSGSIZE beyond): a body of many small chunks makes
# three pieces of each, so a gathered write can hold far more.
IOV_MAX = os.sysconf("SC_IOV_MAX")
# Told that a write moved bytes and has to wait for more room; restarts the caller's
# inactivity deadline and returns its timeout in seconds (see send_all).
Progress = Callable[[], float]


def raw_socket(sock: trio.socket.SocketType) -> socket.socket | None:
    """The standard-library socket under a trio socket, if it can be reached."""
    raw = getattr(sock, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


Buffer = bytes | bytearray | memoryview


async def send_all(
    sock: trio.socket.SocketType, data: Buffer, *, progress: Progress | None = None
) -> None:
    """Write all of ``data``; raises BrokenResourceError / ClosedResourceError.

    Args:
        sock: a connected trio socket.
        data: the bytes to write.
        progress: for a caller whose deadline bounds inactivity, not the whole write (a
            peer reading slowly but steadily is not stalled). Called when the write has to
            wait and bytes moved since its last wait (the call's start counts: the caller
            has just received what it writes), and while it waits, whenever the peer took
            queued bytes: see :func:`_wait_writable_watched`. A write that never waits
            never calls it, nor enters a cancel scope. Not for sockets fastio cannot reach
            the kernel of: they write as without it (the balancer's TLS sockets take it
            in ``send_watched``).
    """
    raw = raw_socket(sock)
    if raw is None:
        await _trio_send_all(sock, data)
        return
    view = memoryview(data)
    sent = 0
    reported = -1  # ``sent`` when progress was last told
    idle = 0.0  # the timeout progress last gave
    total = len(data)
    while sent < total:
        try:
            sent += raw.send(view[sent:])
        except _BLOCKING:
            if progress is None:
                await _wait_writable(raw)
                continue
            if sent != reported:
                reported = sent
                idle = progress()
            idle = await _wait_writable_watched(raw, progress, idle)
        except OSError as exc:
            raise _translate(raw, exc) from exc


async def send_many(
    sock: trio.socket.SocketType, pieces: list[Buffer], *, progress: Progress | None = None
) -> None:
    """Write several buffers as one (``sendmsg``: gathered by the kernel, not copied here).

    h11 hands a body as the very buffer it parsed (``send_with_data_passthrough``), and a
    response head, its body bytes and a chunk trailer are separate pieces; joining them
    would copy every body byte once more in Python. ``progress`` as for :func:`send_all`.
    """
    buffers = [memoryview(piece) for piece in pieces if piece]
    if len(buffers) <= 1:
        if buffers:
            await send_all(sock, buffers[0], progress=progress)
        return
    raw = raw_socket(sock)
    if raw is None:
        await _trio_send_all(sock, b"".join(buffers))
        return
    start = 0  # buffers before it are sent
    moved = True  # since the last wait (the call's start counts)
    idle = 0.0
    while start < len(buffers):
        try:
            sent = raw.sendmsg(buffers[start : start + IOV_MAX])
        except _BLOCKING:
            if progress is None:
                await _wait_writable(raw)
                continue
            if moved:
                moved = False
                idle = progress()
            idle = await _wait_writable_watched(raw, progress, idle)
            continue
        except OSError as exc:
            raise _translate(raw, exc) from exc
        moved = moved or sent > 0
        while sent:
            first = buffers[start]
            if sent >= len(first):
                sent -= len(first)
                start += 1
            else:
                buffers[start] = first[sent:]
                sent = 0


async def receive(
    sock: trio.socket.SocketType, max_bytes: int, *, checkpoint: bool = False
) -> bytes:
    """Up to ``max_bytes`` bytes, ``b""`` at the end of the stream.

    Args:
        sock: a connected trio socket.
        max_bytes: the most to return.
        checkpoint: always yield to the scheduler, even when bytes were there at once (the
            yield is shielded: bytes already read are never lost to a cancellation).
    """
    raw = raw_socket(sock)
    if raw is None:
        return await _trio_receive(sock, max_bytes)
    waited = False
    while True:
        try:
            data = raw.recv(max_bytes)
        except _BLOCKING:
            await _wait_readable(raw)
            waited = True
            continue
        except OSError as exc:
            raise _translate(raw, exc) from exc
        if checkpoint and not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data


def try_receive(raw: socket.socket, max_bytes: int) -> bytes | None:
    """Up to ``max_bytes`` bytes if the kernel has any (``b""``: the end of the stream), or
    None when a read would have to wait. Never blocks, never a checkpoint.

    Raises:
        trio.BrokenResourceError: the connection was reset.
        trio.ClosedResourceError: the socket was closed by this process.
    """
    try:
        return raw.recv(max_bytes)
    except _BLOCKING:
        return None
    except OSError as exc:
        raise _translate(raw, exc) from exc


def try_send(raw: socket.socket, data: Buffer) -> int:
    """Write what the kernel takes of ``data`` now; return how many bytes (0: it would have
    to wait). Never blocks, never a checkpoint.

    Raises:
        trio.BrokenResourceError: the connection was reset or the peer is gone.
        trio.ClosedResourceError: the socket was closed by this process.
    """
    try:
        return raw.send(data)
    except _BLOCKING:
        return 0
    except OSError as exc:
        raise _translate(raw, exc) from exc


# What socket() or connect() fail with when this process, not its peer, is out of
# something: descriptors (its own limit, the system's), kernel buffers, memory.
LOCAL_EXHAUSTION: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def is_local_exhaustion(exc: BaseException) -> bool:
    """Whether ``exc``, or what caused it (trio's happy eyeballs wraps each attempt's error
    in a group), is this process running out of descriptors or memory: its own fault, not
    the peer's it was trying to reach."""
    if isinstance(exc, OSError) and exc.errno in LOCAL_EXHAUSTION:
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(is_local_exhaustion(inner) for inner in exc.exceptions)
    cause = exc.__cause__ or exc.__context__
    return cause is not None and is_local_exhaustion(cause)


# What trio's SocketListener.accept also retries on (its list): a connection reset or
# refused while in the backlog, or a transient failure of one accept (accept(2), "Error
# handling"). EAGAIN is a wait, handled apart.
_RETRY_ACCEPT: Final = frozenset(
    getattr(errno, name)
    for name in (
        *("EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET"),
        *("EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT"),
        *("EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET"),
    )
    if hasattr(errno, name)
)


async def accept(listener: trio.SocketListener, *, checkpoint: bool) -> trio.SocketStream:
    """The next connection of ``listener``, as ``listener.accept()`` returns it.

    A connection already in the backlog is taken at once, not a checkpoint, unless
    ``checkpoint`` is set (the caller asks for one every so often, so that a burst of
    connections cannot hold the event loop and a cancellation is seen); trio's own accept
    makes a trip through the scheduler for every connection, and a connection per request
    pays it on every request.

    Raises:
        trio.ClosedResourceError: the listening socket was closed.
        OSError: any other failure of accept(2) (EMFILE and its kind among them).
    """
    raw = raw_socket(listener.socket)
    if raw is None:
        return await listener.accept()
    if checkpoint:  # trio's sandwich: a cancellation is seen before, the yield comes after
        await trio.lowlevel.checkpoint_if_cancelled()
    while True:
        try:
            sock, _ = raw.accept()
        except _BLOCKING:
            await _wait_readable(raw)
            checkpoint = False  # the wait was the checkpoint
            continue
        except OSError as exc:
            if exc.errno == errno.EBADF or raw.fileno() == -1:
                raise trio.ClosedResourceError("listening socket was closed") from None
            if exc.errno in _RETRY_ACCEPT:
                continue
            raise
        if checkpoint:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def accepted_addresses(sock: trio.socket.SocketType) -> tuple[Any, Any] | None:
    """(peer, local) of an accepted connection; None if the client is already gone.

    A client that resets before its connection is served (a TCP health check closing with
    RST, a port scan) leaves no peer: ``getpeername`` fails with ENOTCONN. That is traffic,
    not a bug: the handler returns without answering, logging or counting an error.
    """
    try:
        return sock.getpeername(), sock.getsockname()
    except OSError:
        return None


def readable_now(fileno: int) -> bool:
    """Whether a read of descriptor ``fileno`` would not wait: bytes, the end of the stream
    or an error are there. Never blocks, never a checkpoint.

    poll(), not select(): select() refuses descriptors from FD_SETSIZE (1,024) on, which a
    daemon holding a few thousand connections hands out to every new one.
    """
    poller = select.poll()
    poller.register(fileno, select.POLLIN)
    return bool(poller.poll(0))


async def _wait_readable(raw: socket.socket) -> None:
    try:
        await trio.lowlevel.wait_readable(raw)
    except OSError as exc:  # EBADF: closed by another task meanwhile
        raise trio.ClosedResourceError("socket was closed") from exc


async def _wait_writable(raw: socket.socket) -> None:
    try:
        await trio.lowlevel.wait_writable(raw)
    except OSError as exc:
        raise trio.ClosedResourceError("socket was closed") from exc


async def _wait_writable_watched(raw: socket.socket, progress: Progress, idle: float) -> float:
    """Wait for writability, looking at the send queue every half ``idle`` (the caller's
    inactivity timeout) meanwhile: when the peer took bytes from it, tell ``progress``
    (which restarts the caller's deadline). Returns the timeout ``progress`` last gave.

    Writability alone says too little: a TCP socket reports it only once a third of its
    send buffer is free again (``sk_stream_min_wspace``; TCP_NOTSENT_LOWAT unset, as
    ``balancer.upstream.tune_socket`` leaves it), and that buffer autotunes to megabytes,
    so a peer reading 16 KiB/s may take minutes to get there while never being idle. The
    cancel scope is entered only here, when a write has to wait anyway.
    """
    while True:
        queued = _queued(raw)
        with trio.move_on_after(idle / 2) as scope:
            await _wait_writable(raw)
        if not scope.cancelled_caught:
            return idle
        if 0 <= _queued(raw) < queued:  # nothing is written meanwhile: it only shrinks
            idle = progress()


def _queued(raw: socket.socket) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged (SIOCOUTQ, which is
    TIOCOUTQ's number on Linux); -1 when the kernel does not say."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(raw.fileno(), termios.TIOCOUTQ, count, True)
    except OSError:
        return -1
    return count[0]


def _translate(raw: socket.socket, exc: OSError) -> Exception:
    if raw.fileno() == -1:
        return trio.ClosedResourceError("socket was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


async def _trio_send_all(sock: trio.socket.SocketType, data: Buffer) -> None:
    view = memoryview(data)
    sent = 0
    try:
        while sent < len(data):
            sent += await sock.send(view[sent:])
    except OSError as exc:
        if sock.fileno() == -1:
            raise trio.ClosedResourceError("socket was closed") from exc
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


async def _trio_receive(sock: trio.socket.SocketType, max_bytes: int) -> bytes:
    try:
        return await sock.recv(max_bytes)
    except OSError as exc:
        if sock.fileno() == -1:
            raise trio.ClosedResourceError("socket was closed") from exc
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
