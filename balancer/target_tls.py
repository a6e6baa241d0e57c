"""TLS to the targets of https target groups.

ALB speaks TLS to such targets without verifying their certificates or host names (targets
commonly use self-signed certificates), sends SNI when the target is named by a DNS name and
offers ALPN ``http/1.1``. Its protocols and ciphers towards targets are those of
``ELBSecurityPolicy-2016-08`` (TLS 1.0 to 1.2 with that policy's ciphers, CBC-SHA1 and plain
RSA key exchange included) plus TLS 1.3, whatever the listener's policy (ALB user guide,
"Security policies for your Application Load Balancer": the back-end policy is
``ELBSecurityPolicy-TLS13-1-0-2021-06`` or ``-2016-08``, the same list once TLS 1.3 is
added), so a target ALB reaches is reached here too. One :func:`client_context` is built per
config generation and shared by every connection of that generation. The connection itself is a
:class:`~balancer.tls_socket.TlsSocket` under a ``trio.SocketStream``.
"""

from __future__ import annotations

import ipaddress
import ssl
import warnings

import trio

from balancer.tls_policies import SSL_POLICIES
from balancer.tls_socket import TlsSocket

# ALB's back-end policy (module docstring); its cipher list ends in ``@SECLEVEL=0``, without
# which OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 handshake signatures) and old targets' short keys.
TARGET_POLICY = SSL_POLICIES["ELBSecurityPolicy-2016-08"]


def client_context() -> ssl.SSLContext:
    """A TLS client context as ALB uses towards targets: no certificate or host-name
    verification, :data:`TARGET_POLICY`'s versions and ciphers plus TLS 1.3, ALPN
    ``http/1.1``, no renegotiation. Loads no CA file, so it is cheap enough to build once per
    config generation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1; ALB still speaks them to targets that know no newer.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion[TARGET_POLICY.minimum_version]
        # Set, not left to the system's OpenSSL configuration, which may cap it lower.
        context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TARGET_POLICY.ciphers)
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
