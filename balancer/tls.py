"""TLS termination for https listeners: contexts per certificate, SNI, policies, handshakes.

One :class:`ServerTls` per https listener and config generation. It holds one
``ssl.SSLContext`` per configured certificate, all with the listener's security policy (AWS's
policy names, mapped to TLS versions and OpenSSL cipher lists in
:data:`balancer.tls_policies.SSL_POLICIES`) and ALPN ``http/1.1``. Handshakes start on the first
certificate's context, the default; its ``sni_callback`` moves the connection to the context of
the certificate the client asked for:

1. an exact name (``api.example.com``) wins over a wildcard;
2. ``*.example.com`` matches exactly one label (``a.example.com``, never ``example.com`` or
   ``a.b.example.com``, RFC 6125 §6.4.3);
3. among certificates with the same name the one listed first wins;
4. no SNI, or a name no certificate has, gets the default (ALB's rule).

Reload builds a new ServerTls and the runtime snapshot swaps it in: connections accepted
afterwards handshake with the new contexts, established ones keep the
:class:`~balancer.tls_socket.TlsSocket` (and so the context) they started with. Building reads
and checks every file first (:mod:`balancer.certificates`), so a bad file refuses the reload
instead of half-applying it.
"""

from __future__ import annotations

import contextvars
import ssl
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import trio
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from balancer.certificates import CertificateFiles, load_certificate_files
from balancer.config import HttpsListener, Listener
from balancer.tls_policies import SSL_POLICIES, TLS13_SUITES, TlsPolicy
from balancer.tls_socket import TlsSocket
from monitoring.configfile import ConfigError
from monitoring.logging import EventLog
from monitoring.metrics import Metrics

ALPN_PROTOCOLS = ("http/1.1",)
# Options every policy shares: the server's cipher order wins (AWS's policies are ordered),
# no TLS compression (CRIME), no client-initiated renegotiation (a cheap CPU DoS; ALB
# refuses it too).
_OPTIONS = ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def policy_context(policy: TlsPolicy, certificate: CertificateFiles) -> ssl.SSLContext:
    """A server context for one certificate under one security policy.

    Raises:
        ConfigError: OpenSSL refuses the certificate chain or the policy's cipher list.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1; AWS's legacy policies still offer them, deliberately,
        # for old clients, so an operator who names such a policy gets it without noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion[policy.minimum_version]
        context.maximum_version = ssl.TLSVersion[policy.maximum_version]
    context.options |= _OPTIONS
    # Only TLS 1.2-and-older ciphers can be set: Python's ssl has no set_ciphersuites, so TLS
    # 1.3 offers OpenSSL's three suites whatever the policy lists (accept_tls enforces a
    # shorter list after the handshake).
    if policy.ciphers:  # empty for TLS 1.3-only policies
        try:
            context.set_ciphers(policy.ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(certificate.cert_file, f"cipher list refused: {exc}") from None
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        context.load_cert_chain(certificate.cert_file, certificate.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            certificate.cert_file, f"cannot load certificate and key: {exc}"
        ) from None
    return context


# The SNI name of the handshake under way in this task. Python offers no server-side getter
# for it, but the SNI callback runs synchronously inside ``do_handshake``, in the calling
# task's context, so :func:`accept_tls` hands the callback a fresh slot to fill.
_SERVER_NAME: contextvars.ContextVar[list[str]] = contextvars.ContextVar("wharf_tls_sni")


def _wildcard_parent(name: str) -> str | None:
    """``example.com`` for ``*.example.com``; None for a name that is not a wildcard."""
    label, dot, parent = name.partition(".")
    return parent if label == "*" and dot and parent else None


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The TLS side of one https listener for one config generation.

    Attributes:
        listener: the listener's name (metric label).
        certificates: the checked certificate pairs, the default first.
        contexts: one context per certificate, in the same order.
        handshake_timeout: seconds a client gets to complete the handshake.
        tls13_suites: the TLS 1.3 suites the policy allows; a connection that negotiated
            another (OpenSSL offers all three) is dropped after its handshake.
    """

    listener: str
    certificates: tuple[CertificateFiles, ...]
    contexts: tuple[ssl.SSLContext, ...]
    handshake_timeout: float
    tls13_suites: frozenset[str] = frozenset(TLS13_SUITES)
    _exact: Mapping[str, int] = field(default_factory=dict)
    _wildcard: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        exact: dict[str, int] = {}
        wildcard: dict[str, int] = {}
        for index, certificate in enumerate(self.certificates):
            for name in certificate.names:
                parent = _wildcard_parent(name)
                if parent is None:
                    exact.setdefault(name, index)
                else:
                    wildcard.setdefault(parent, index)
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_wildcard", wildcard)
        self.context.sni_callback = self._on_server_name

    @property
    def context(self) -> ssl.SSLContext:
        """The default certificate's context: every handshake starts here."""
        return self.contexts[0]

    def select(self, server_name: str | None) -> int:
        """Index of the certificate for an SNI name (None: the client sent none)."""
        if not server_name:
            return 0
        name = server_name.lower().rstrip(".")
        index = self._exact.get(name)
        if index is None:
            index = self._wildcard.get(name.partition(".")[2], 0)
        return index

    def matches(self, server_name: str) -> bool:
        """Whether some certificate carries ``server_name`` (exactly or by wildcard)."""
        name = server_name.lower().rstrip(".")
        return name in self._exact or name.partition(".")[2] in self._wildcard

    def _on_server_name(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # Called by OpenSSL mid-handshake; an exception here would abort it with an alert, so
        # this stays total: any name maps to some certificate.
        if server_name:
            slot = _SERVER_NAME.get(None)
            if slot is not None:
                slot.append(server_name.lower())
        context = self.contexts[self.select(server_name)]
        if context is not connection.context:
            connection.context = context


def build_server_tls(listener: HttpsListener) -> ServerTls:
    """Read every certificate of ``listener`` and build its contexts.

    Raises:
        ConfigError: naming the first file that is missing, unreadable, malformed or whose
            key does not match its certificate.
    """
    policy = SSL_POLICIES[listener.ssl_policy]
    certificates = tuple(
        load_certificate_files(c.cert_file, c.key_file) for c in listener.certificates
    )
    contexts = tuple(policy_context(policy, c) for c in certificates)
    return ServerTls(
        listener=listener.name,
        certificates=certificates,
        contexts=contexts,
        handshake_timeout=listener.timeouts.tls_handshake_seconds,
        tls13_suites=frozenset(policy.tls13_suites),
    )


def build_all(listeners: Iterable[Listener]) -> dict[str, ServerTls]:
    """ServerTls of every https listener in ``listeners``, by listener name.

    Raises:
        ConfigError: see :func:`build_server_tls`.
    """
    return {
        listener.name: build_server_tls(listener)
        for listener in listeners
        if isinstance(listener, HttpsListener)
    }


class TlsMetrics:
    """TLS metrics of the balancer: negotiation errors and certificate expiry.

    Args:
        metrics: the daemon's registry.
        log: where failed handshakes are logged (at debug: clients cause them at will).
        current: returns the ServerTls of the current config generation, read at each scrape.
    """

    def __init__(
        self, metrics: Metrics, log: EventLog, current: Callable[[], Iterable[ServerTls]]
    ) -> None:
        self._log = log
        self._current = current
        # ALB's ClientTLSNegotiationErrorCount, with OpenSSL's reason (a finite set of names).
        self.negotiation_errors = metrics.counter(
            "wharf_balancer_tls_negotiation_errors",
            "TLS handshakes that failed (reason: OpenSSL's reason, timeout, closed, or "
            "suite_not_in_policy).",
            ["listener", "reason"],
        )
        metrics.register_collector(self.collect_expiry)

    def collect_expiry(self) -> Iterable[Metric]:
        """The scrape-time expiry gauge of every certificate in use."""
        family = GaugeMetricFamily(
            "wharf_balancer_certificate_expiry_seconds",
            "End of a serving certificate's validity (notAfter), as a Unix timestamp.",
            labels=["listener", "certificate"],
        )
        for tls in self._current():
            for certificate in tls.certificates:
                family.add_metric([tls.listener, certificate.cert_file], certificate.not_after)
        return [family]

    def handshake_failed(self, listener: str, reason: str) -> None:
        self.negotiation_errors.labels(listener, reason).inc()
        self._log.debug("tls.handshake_failed", listener=listener, reason=reason)


def _failure_reason(exc: BaseException) -> str:
    cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return str(cause.reason).lower()
    return "closed"


class TlsConnection(NamedTuple):
    """A client connection after a successful handshake.

    Attributes:
        stream: the decrypted stream to speak HTTP over.
        server_name: the SNI name the client sent (lower-case) when a certificate carries
            it; None when it sent none or one only the default certificate stood in for
            (ALB's ``domain_name`` is ``-`` then too).
        certificate: ``cert_file`` of the certificate presented.
        protocol: the TLS version (``TLSv1.3``), for access logs.
        cipher: the OpenSSL cipher name, for access logs.
    """

    stream: trio.SocketStream
    server_name: str | None
    certificate: str
    protocol: str
    cipher: str


async def accept_tls(
    stream: trio.SocketStream, tls: ServerTls, metrics: TlsMetrics | None = None
) -> TlsConnection | None:
    """Complete the server side of a handshake within the listener's timeout.

    Args:
        stream: an accepted connection; the caller still owns it and closes it either way.
        tls: the listener's TLS of the generation the connection was accepted under.
        metrics: counts failures when given.

    Returns:
        The connection, with the certificate and ALPN settled; None when the client failed
        the handshake (not TLS, no common version or cipher, went away, or too slow) or
        negotiated a TLS 1.3 suite the policy does not list. Failures are counted, never
        raised: clients cause them at will.
    """
    # A TlsSocket, not trio's SSLStream: the HTTP shell then reads and writes it as it does a
    # plain socket, without SSLStream's per-call machinery (bench/BALANCER.md, "TLS"). Closing
    # sends close_notify without waiting for the client's, as nginx and HAProxy do (OpenSSL 3
    # clients report a bare TCP close as a truncation error); a client that closes without
    # one, as browsers do, reads as the end of the stream.
    tls_socket = TlsSocket(stream.socket, tls.context, None, server_side=True)
    reason = "timeout"
    slot: list[str] = []
    token = _SERVER_NAME.set(slot)
    try:
        with trio.move_on_after(tls.handshake_timeout):
            try:
                await tls_socket.handshake()
            except (ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = _failure_reason(exc)
            else:
                cipher = tls_socket.cipher()
                protocol = tls_socket.version() or "-"
                name = cipher[0] if cipher else "-"
                if protocol == "TLSv1.3" and name not in tls.tls13_suites:
                    # The policy's TLS 1.3 suites could not be set (policy_context), so the
                    # connection goes now, before any HTTP, as if the handshake had failed.
                    reason = "suite_not_in_policy"
                else:
                    sent = slot[-1] if slot else None
                    return TlsConnection(
                        stream=trio.SocketStream(tls_socket),
                        server_name=sent if sent is not None and tls.matches(sent) else None,
                        certificate=_presented(tls_socket, tls),
                        protocol=protocol,
                        cipher=name,
                    )
    finally:
        _SERVER_NAME.reset(token)
    if metrics is not None:
        metrics.handshake_failed(tls.listener, reason)
    return None


def close_tls(connection: TlsConnection) -> None:
    """Send close_notify if the kernel takes it now, and close; never waits on the client
    (as nginx and HAProxy: the client's own close_notify is not awaited)."""
    connection.stream.socket.close()


def _presented(stream: TlsSocket, tls: ServerTls) -> str:
    """The cert_file of the certificate a finished handshake presented; ``session-reused``
    for a resumed session, which presents none (ALB's chosen_cert_arn)."""
    if stream.session_reused:
        return "session-reused"
    context = stream.context
    for certificate, candidate in zip(tls.certificates, tls.contexts, strict=True):
        if candidate is context:
            return certificate.cert_file
    return tls.certificates[0].cert_file
