"""HTTPS targets on 127.0.0.1: :class:`~tests.support.targets.TargetServer` behind TLS.

The certificate comes from a trustme CA that the balancer does not trust (as a self-signed
target certificate on AWS). Each handshake records the SNI and ALPN the client offered.
"""

from __future__ import annotations

import contextlib
import ssl

import trio
import trustme

from tests.support.targets import Handler, TargetServer, echo

HANDSHAKE_SECONDS = 10


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server context with a certificate for ``names`` (default 127.0.0.1) from ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1",))).configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    return context


class TlsTargetServer(TargetServer):
    """A target that speaks HTTP over TLS; counts handshakes, records SNI and ALPN."""

    def __init__(
        self, name: str = "t", handler: Handler = echo, *, context: ssl.SSLContext
    ) -> None:
        super().__init__(name, handler)
        self.context = context
        self.handshakes = 0
        self.failed_handshakes = 0
        self.server_names: list[str | None] = []
        self.alpn: list[str | None] = []
        context.sni_callback = self._sni

    def _sni(self, _obj: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    async def serve(self, *, task_status: trio.TaskStatus[TargetServer]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._tls_connection, listeners)

    async def _tls_connection(self, stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, self.context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(HANDSHAKE_SECONDS):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError):
            self.failed_handshakes += 1
            await trio.aclose_forcefully(stream)
            return
        self.handshakes += 1
        self.alpn.append(tls.selected_alpn_protocol())
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._connection(tls)  # type: ignore[arg-type]  # a Stream is all it uses
