"""TLS over a trio TCP socket, shaped as a trio socket: both the client connections of https
listeners and the connections to https targets.

Why a socket and not a :class:`trio.SSLStream`: the proxy reads and writes its connections
through ``monitoring.fastio`` on ``stream.socket``, and waits for a target's early answer with
``trio.lowlevel.wait_readable`` on it. :class:`TlsSocket` is a :class:`trio.socket.SocketType`
whose ``send``/``recv`` encrypt and decrypt (fastio takes trio's path for a socket that is not
a plain one), so a ``trio.SocketStream`` over it serves the proxy, the WebSocket tunnel and the
pool unchanged. It also costs less than ``SSLStream``, whose every call runs its retry loop,
conflict detection and a scheduler round trip: on the server side, a full handshake plus one
request took 11% less CPU with it (``bench/BALANCER.md``, "TLS: where the time goes").
Waiting on its file descriptor stays meaningful because :meth:`TlsSocket.recv` hands over
every byte that can be decrypted from what was read: no plaintext is ever left behind in the
TLS object while the socket looks idle, only an incomplete record, which needs more bytes
from the socket anyway.

Sends are serialised: the proxy writes a body while another task reads the peer's early
answer, and a read may have TLS records of its own to send (key updates); records must reach
the socket in the order OpenSSL produced them. Renegotiation is refused (TLS 1.3 has none),
so a write never has to wait for a read.

Closing sends a close_notify if the kernel takes it at once and never waits for the peer's,
as nginx and HAProxy do; a peer that closes without one (as browsers do) reads as the end of
the stream.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING, Any, Final

import trio

from monitoring import fastio

if TYPE_CHECKING:
    from typing_extensions import Buffer

# One read from the socket; a TLS record is at most 16 KiB plus its overhead.
TLS_READ_BYTES: Final = 1 << 18


class TlsSocket(trio.socket.SocketType):
    """A TLS connection, client or server side, over a connected trio TCP socket.

    Errors follow the socket's: TLS failures are ``ssl.SSLError`` (an ``OSError``), a reset
    is ``trio.BrokenResourceError``, use after :meth:`close` ``trio.ClosedResourceError``.
    """

    def __init__(
        self,
        tcp: trio.socket.SocketType,
        context: ssl.SSLContext,
        hostname: str | None,
        *,
        server_side: bool = False,
    ) -> None:
        super().__init__()
        # Not named ``_sock``: fastio would find the TCP socket and bypass the encryption.
        self._tcp = tcp
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=hostname
        )
        self._sending = trio.Lock()
        self._shut_wr = False
        self._eof = False
        self._server_side = server_side
        self._received = False  # any byte from the peer yet (see received_any)

    # --- the TLS side ------------------------------------------------------------------

    async def handshake(self) -> None:
        """Complete the TLS handshake (the caller bounds it with the connect timeout).

        Raises:
            ssl.SSLError: the target does not speak TLS as a server, or refused us.
            trio.BrokenResourceError: reset or closed during the handshake.
        """
        if self._server_side:
            # A client's hello is usually there already: reading it first saves the step
            # that would only find the buffer empty (~5 µs of OpenSSL and an exception).
            self._take_ready()
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill(TLS_READ_BYTES)
                continue
            except ssl.SSLError:
                self._send_now()  # the alert that tells the peer why, if the kernel takes it
                raise
            await self._flush()
            return

    def selected_alpn_protocol(self) -> str | None:
        return self._tls.selected_alpn_protocol()

    def version(self) -> str | None:
        return self._tls.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._tls.cipher()

    @property
    def received_any(self) -> bool:
        """Whether the peer has sent a single byte: a client that closes before sending one
        never began a handshake (a TCP probe, a port scan)."""
        return self._received

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session (a ticket or session id)."""
        return self._tls.session_reused

    @property
    def context(self) -> ssl.SSLContext:
        """The context in use: on a server, the one its SNI callback chose."""
        return self._tls.context

    @property
    def tcp(self) -> trio.socket.SocketType:
        """The TCP socket under the encryption (to peek at, never to read or write)."""
        return self._tcp

    async def send(self, data: Buffer, flags: int = 0, /) -> int:
        """Encrypt all of ``data`` and write it out; returns its length."""
        return await self.send_watched(data, None)

    async def send_watched(self, data: Buffer, progress: fastio.Progress | None) -> int:
        """:meth:`send`, telling ``progress`` of the bytes the peer takes while the write
        waits for room (:func:`monitoring.fastio.send_all`)."""
        if self._shut_wr or self._tcp.fileno() == -1:
            raise trio.ClosedResourceError("TLS connection was shut down for writing")
        # A memory BIO takes everything at once; with renegotiation off, a write never wants
        # a read first (that would raise SSLWantReadError: a broken peer).
        written = self._tls.write(data)
        await self._flush(progress)
        return written

    async def recv(self, buflen: int, flags: int = 0, /) -> bytes:
        """The plaintext that the next bytes from the socket decrypt to, and every byte
        already decryptable with it (possibly a little over ``buflen``); ``b""`` at the end
        (a close_notify, or the TCP connection closing without one)."""
        pieces: list[bytes] = []
        while not self._eof:
            try:
                data = self._tls.read(buflen)
            except ssl.SSLWantReadError:
                if pieces:
                    # Not a flush with plaintext in hand: a cancel while it waits (the
                    # forwarder's watch of a slow target) would lose it. The next recv or
                    # send flushes what OpenSSL has to say.
                    break
                if self._outgoing.pending:
                    await self._flush()  # a key update to answer, session ticket acks...
                await self._fill(buflen)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                break
            if not data:
                break
            pieces.append(data)
        return b"".join(pieces)

    def _take_ready(self) -> None:
        """Hand OpenSSL what the socket holds now, without waiting."""
        raw = fastio.raw_socket(self._tcp)
        if raw is None:
            return
        data = fastio.try_receive(raw, TLS_READ_BYTES)
        if data:
            self._received = True
            self._incoming.write(data)
        elif data is not None:
            self._incoming.write_eof()

    async def _fill(self, max_bytes: int) -> None:
        data = await fastio.receive(self._tcp, max_bytes)
        if data:
            self._received = True
            self._incoming.write(data)
        else:
            self._incoming.write_eof()  # the next read raises SSLEOFError or SSLZeroReturn

    async def _flush(self, progress: fastio.Progress | None = None) -> None:
        sending = self._sending
        if not self._outgoing.pending and not sending.locked():
            return  # nothing of ours is still on its way to the socket
        # Taken without a checkpoint when free (almost always): ``async with`` on a trio
        # Lock costs two trips through the scheduler, on every send of every connection.
        try:
            sending.acquire_nowait()
        except trio.WouldBlock:
            await sending.acquire()
        try:
            # Read under the lock: two tasks must not each take a piece and race to write.
            while self._outgoing.pending:
                await fastio.send_all(self._tcp, self._outgoing.read(), progress=progress)
        finally:
            sending.release()

    # --- the socket side ---------------------------------------------------------------

    def fileno(self) -> int:
        return self._tcp.fileno()

    @property
    def family(self) -> socket.AddressFamily:
        return self._tcp.family

    @property
    def type(self) -> socket.SocketKind:
        return self._tcp.type

    @property
    def proto(self) -> int:
        return self._tcp.proto

    @property
    def did_shutdown_SHUT_WR(self) -> bool:
        return self._shut_wr

    def getpeername(self) -> Any:
        return self._tcp.getpeername()

    def getsockname(self) -> Any:
        return self._tcp.getsockname()

    def setsockopt(  # type: ignore[override]
        self, level: int, optname: int, value: int | bytes | None, *args: int
    ) -> None:
        if value is None:
            self._tcp.setsockopt(level, optname, None, *args)
        else:
            self._tcp.setsockopt(level, optname, value)

    def getsockopt(  # type: ignore[override]
        self, level: int, optname: int, *args: int
    ) -> int | bytes:
        return self._tcp.getsockopt(level, optname, *args)

    def is_readable(self) -> bool:
        return bool(self._tls.pending() or self._incoming.pending) or self._tcp.is_readable()

    async def wait_writable(self) -> None:
        await self._tcp.wait_writable()

    def shutdown(self, flag: int) -> None:
        if flag in (socket.SHUT_WR, socket.SHUT_RDWR) and not self._shut_wr:
            self._shut_wr = True
            self._say_goodbye()
        self._tcp.shutdown(flag)

    def close(self) -> None:
        """Close at once: a close_notify goes out if the kernel takes it now, never waited
        for (as a plain socket's close never waits on the peer)."""
        if self._tcp.fileno() != -1 and not self._shut_wr:
            self._say_goodbye()
        self._tcp.close()

    def _say_goodbye(self) -> None:
        if self._tcp.fileno() == -1:
            return
        try:
            self._tls.unwrap()
        except (ssl.SSLError, ValueError):  # SSLWantReadError: theirs is not awaited
            pass
        self._send_now()

    def _send_now(self) -> None:
        """Write what OpenSSL has queued if the kernel takes it at once; never waits."""
        raw = fastio.raw_socket(self._tcp)
        data = self._outgoing.read()
        if raw is None or raw.fileno() == -1 or not data:
            return
        try:
            fastio.try_send(raw, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def __repr__(self) -> str:
        return f"<TlsSocket over {self._tcp!r}>"
