"""TLS to the targets of https target groups.

ALB speaks TLS to such targets without verifying their certificates or host names (targets
commonly use self-signed certificates), sends SNI when the target is named by a DNS name and
offers ALPN ``http/1.1``. Its protocols and ciphers towards targets are not the listener's
policy but one of three back-end policies, chosen by the load balancer's HTTPS listeners (ALB
user guide, "Security policies for your Application Load Balancer"): with a FIPS policy on an
HTTPS listener, ``ELBSecurityPolicy-TLS13-1-0-FIPS-2023-04``; else with a TLS 1.3 policy,
``ELBSecurityPolicy-TLS13-1-0-2021-06``; otherwise (no HTTPS listener, or only pre-TLS 1.3
policies) ``ELBSecurityPolicy-2016-08``, which has no TLS 1.3 (:func:`backend_policy`). All
three keep TLS 1.0 and the 2016-08 ciphers, CBC-SHA1 and plain RSA key exchange included.
Python's ``ssl`` cannot choose TLS 1.3 suites, so under the FIPS policy a handshake that
negotiated ChaCha20 (not in that policy) fails right after it, as on the front end
(:func:`balancer.tls.accept_tls`). One :func:`client_context` is built per config generation
and shared by every connection of that generation. The connection itself is a
:class:`~balancer.tls_socket.TlsSocket` under a ``trio.SocketStream``.
"""

from __future__ import annotations

import ipaddress
import ssl
import warnings
from collections.abc import Iterable

import trio

from balancer.tls_policies import SSL_POLICIES, is_fips
from balancer.tls_socket import TlsSocket

# ALB's back-end policies (module docstring). Their cipher lists end in ``@SECLEVEL=0``,
# without which OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 handshakes) and old targets' short keys.
BACKEND_POLICY = "ELBSecurityPolicy-2016-08"
BACKEND_TLS13_POLICY = "ELBSecurityPolicy-TLS13-1-0-2021-06"
BACKEND_FIPS_POLICY = "ELBSecurityPolicy-TLS13-1-0-FIPS-2023-04"


def backend_policy(listener_policies: Iterable[str]) -> str:
    """The back-end policy of a load balancer whose HTTPS listeners have these policies.

    A FIPS policy on any of them wins (its back-end policy is a TLS 1.3 one as well, and the
    stricter); then any TLS 1.3 policy; with neither, ALB's ``ELBSecurityPolicy-2016-08``.
    """
    names = tuple(listener_policies)
    if any(is_fips(name) for name in names):
        return BACKEND_FIPS_POLICY
    if any(SSL_POLICIES[name].tls13_suites for name in names):
        return BACKEND_TLS13_POLICY
    return BACKEND_POLICY


class TargetContext(ssl.SSLContext):
    """A client context for targets that knows its back-end policy.

    Attributes:
        policy: the back-end policy's name.
        tls13_suites: the TLS 1.3 suites the policy allows (OpenSSL offers all three).
    """

    policy: str
    tls13_suites: frozenset[str]


class SuiteNotInPolicy(ssl.SSLError):
    """A handshake that negotiated a TLS 1.3 suite the back-end policy does not list."""

    def __init__(self, suite: str, policy: str) -> None:
        super().__init__(f"the target chose {suite}, which {policy} does not offer")
        self.reason = "SUITE_NOT_IN_POLICY"

    def __str__(self) -> str:
        return str(self.args[0])


def client_context(policy: str) -> TargetContext:
    """A TLS client context as ALB uses towards targets under the back-end ``policy`` (one of
    :func:`backend_policy`'s): no certificate or host-name verification, the policy's
    versions and ciphers, ALPN ``http/1.1``, no renegotiation. Loads no CA file, so it is
    cheap enough to build once per config generation."""
    settings = SSL_POLICIES[policy]
    context = TargetContext(ssl.PROTOCOL_TLS_CLIENT)
    context.policy = policy
    context.tls13_suites = frozenset(settings.tls13_suites)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1; ALB still speaks them to targets that know no newer.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion[settings.minimum_version]
        # Set, not left to the system's OpenSSL configuration, which may cap it lower.
        context.maximum_version = ssl.TLSVersion[settings.maximum_version]
    context.set_ciphers(settings.ciphers)
    context.set_alpn_protocols(["http/1.1"])
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


def check_suite(context: TargetContext, version: str | None, cipher: str | None) -> None:
    """Refuse a finished handshake whose TLS 1.3 suite the policy does not list.

    Raises:
        SuiteNotInPolicy: it negotiated such a suite (ChaCha20 under the FIPS policy).
    """
    if version == "TLSv1.3" and cipher is not None and cipher not in context.tls13_suites:
        raise SuiteNotInPolicy(cipher, context.policy)


def server_name(host: str) -> str | None:
    """The SNI to send: the target's DNS name; none for an IP literal (RFC 6066 §3)."""
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    return None


async def wrap(tcp: trio.socket.SocketType, context: TargetContext, host: str) -> trio.SocketStream:
    """A handshaken TLS connection over ``tcp`` to the target ``host``, as a stream.

    Raises:
        ssl.SSLError: the handshake failed, or negotiated a suite the policy does not list
            (:class:`SuiteNotInPolicy`; the caller closes ``tcp``, so no HTTP is sent).
        trio.BrokenResourceError: the target reset or closed the connection meanwhile.
    """
    tls = TlsSocket(tcp, context, server_name(host))
    await tls.handshake()
    cipher = tls.cipher()
    check_suite(context, tls.version(), cipher[0] if cipher else None)
    return trio.SocketStream(tls)
