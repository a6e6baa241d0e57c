"""TLS to the targets of https target groups.

ALB speaks TLS to such targets without verifying their certificates or host names (targets
commonly use self-signed certificates), sends SNI when the target is named by a DNS name and
offers ALPN ``http/1.1``. One :func:`client_context` is built per config generation and
shared by every connection of that generation. The connection itself is a
:class:`~balancer.tls_socket.TlsSocket` under a ``trio.SocketStream``.
"""

from __future__ import annotations

import ipaddress
import ssl

import trio

from balancer.tls_socket import TlsSocket


def client_context() -> ssl.SSLContext:
    """A TLS client context as ALB uses towards targets: no certificate or host-name
    verification, ALPN ``http/1.1``, no renegotiation. Loads no CA file, so it is cheap
    enough to build once per config generation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


def server_name(host: str) -> str | None:
    """The SNI to send: the target's DNS name; none for an IP literal (RFC 6066 §3)."""
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    return None


async def wrap(
    tcp: trio.socket.SocketType, context: ssl.SSLContext, host: str
) -> trio.SocketStream:
    """A handshaken TLS connection over ``tcp`` to the target ``host``, as a stream.

    Raises:
        ssl.SSLError: the handshake failed.
        trio.BrokenResourceError: the target reset or closed the connection meanwhile.
    """
    tls = TlsSocket(tcp, context, server_name(host))
    await tls.handshake()
    return trio.SocketStream(tls)
