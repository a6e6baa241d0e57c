"""TLS termination for https listeners: contexts per certificate set, SNI, policies, handshakes.

One :class:`ServerTls` per https listener and config generation. Its ``ssl.SSLContext`` objects
all have the listener's security policy (AWS's policy names, mapped to TLS versions and OpenSSL
cipher lists in :data:`balancer.tls_policies.SSL_POLICIES`) and ALPN ``http/1.1``. Each holds
the certificates one SNI name can get: a single certificate, or an ECDSA and an RSA
certificate for that name (ALB lets a listener hold both). OpenSSL keeps one certificate per
key type in a context and picks one per handshake, from what the client offers: its cipher
suites up to TLS 1.2, its signature algorithms in TLS 1.3. ECDSA wins when the client
supports both, as on ALB ("the best certificate that the client can support"): in TLS 1.3
because the server's preference (``OP_CIPHER_SERVER_PREFERENCE``) orders the shared signature
algorithms by OpenSSL's list, ECDSA first; up to TLS 1.2 because the policy's cipher order
lists every ECDSA suite before its RSA twin (except ``ECDHE-*-AES256-SHA``, RSA first in
AWS's order too). The order the two are loaded in changes nothing.

Handshakes start on the default's context; its ``sni_callback`` moves the connection to the
context of the name the client asked for (:class:`CertificateChoice`):

1. ``*.example.com`` matches exactly one label (``a.example.com``, never ``example.com`` or
   ``a.b.example.com``, RFC 6125 §6.4.3). One trailing dot is the root (``a.example.com.``);
   a name with an empty label (``.example.com``, ``a.example.com..``) matches nothing;
2. of the certificates that match the name, exactly or by wildcard, the best ECDSA one and
   the best RSA one are served together: a client supporting both gets the ECDSA one, any
   other the one it can use (ALB's "SSL certificates": of several matching certificates,
   "the best certificate that the client can support", ECDSA before RSA). So an exact RSA
   certificate does not hide an ECDSA wildcard from clients that support ECDSA;
3. within one key type an exact name (``api.example.com``) wins over a wildcard, and of
   several equal ones the one listed first (ALB would compare hash, key length and
   validity). When the first listed exact certificate (else wildcard) has another key type
   (Ed25519, ...), it is served alone;
4. no SNI, or a name no certificate has, gets the default (the first listed; ALB's rule),
   paired with the first listed certificate of the other key type that carries all of the
   default's names.

A certificate file listed twice on a listener counts once, where it is first listed (AWS's
AddListenerCertificates takes a certificate already in the list as a success, adding nothing).

Contexts are built once per config generation, one per distinct set (plus one for each
certificate that no name selects, so that OpenSSL checks every file), never per handshake.
Reload builds a new ServerTls and the runtime snapshot swaps it in: connections accepted
afterwards handshake with the new contexts, established ones keep the
:class:`~balancer.tls_socket.TlsSocket` (and so the context) they started with. Building reads
and checks every file first (:mod:`monitoring.certificates`), so a bad file refuses the reload
instead of half-applying it.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import ssl
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import trio
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from balancer.config import HttpsListener, Listener
from balancer.tls_policies import SSL_POLICIES, TLS13_SUITES, TlsPolicy
from balancer.tls_socket import TlsSocket
from monitoring.certificates import (
    ECDSA,
    EXPIRED,
    RSA,
    CertificateFiles,
    load_certificate_files,
    validity_problem,
)
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
    add_certificate(context, certificate)
    return context


def add_certificate(context: ssl.SSLContext, certificate: CertificateFiles) -> None:
    """Load a certificate pair into ``context``, next to those of other key types it holds
    (OpenSSL keeps one per key type: one of the same type replaces it).

    Raises:
        ConfigError: OpenSSL refuses the certificate chain or the key.
    """
    try:
        context.load_cert_chain(certificate.cert_file, certificate.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            certificate.cert_file, f"cannot load certificate and key: {exc}"
        ) from None


# The SNI name of the handshake under way in this task. Python offers no server-side getter
# for it, but the SNI callback runs synchronously inside ``do_handshake``, in the calling
# task's context, so :func:`accept_tls` hands the callback a fresh slot to fill.
_SERVER_NAME: contextvars.ContextVar[list[str]] = contextvars.ContextVar("wharf_tls_sni")


def _wildcard_parent(name: str) -> str | None:
    """``example.com`` for ``*.example.com``; None for a name that is not a wildcard."""
    label, dot, parent = name.partition(".")
    return parent if label == "*" and dot and parent else None


def _host_name(server_name: str) -> str | None:
    """An SNI name as certificates' names are compared with it: lower case, without the one
    trailing dot a fully qualified name may have; None when a label is empty (``.a.com``,
    ``a.com..``), which no certificate name can match (RFC 1035 §3.1)."""
    name = server_name.lower().removesuffix(".")
    return None if "" in name.split(".") else name


# The key types one context pairs, in ALB's order of preference. OpenSSL would hold others
# side by side too, but ALB accepts only these two, and up to TLS 1.2 the suite a handshake
# negotiated tells them apart (_presented).
_PAIRED_KEY_TYPES = (ECDSA, RSA)


def _pick(certificates: Sequence[CertificateFiles], candidates: Sequence[int]) -> tuple[int, ...]:
    """The set served for a name from the certificates carrying it (indexes, listed order):
    the first listed, and when it is ECDSA or RSA, the first listed of the other of the two;
    ECDSA first."""
    first = candidates[0]
    if certificates[first].key_type not in _PAIRED_KEY_TYPES:
        return (first,)
    chosen: dict[str, int] = {}
    for index in candidates:
        kind = certificates[index].key_type
        if kind in _PAIRED_KEY_TYPES:
            chosen.setdefault(kind, index)
    return tuple(chosen[kind] for kind in _PAIRED_KEY_TYPES if kind in chosen)


@dataclass(frozen=True, slots=True)
class CertificateChoice:
    """Which certificates each SNI name gets; worked out once per config generation.

    Attributes:
        sets: the certificate sets handshakes get, as indexes into the listener's
            certificates: one certificate, or an ECDSA and an RSA one (in that order).
            ``sets[0]`` is the default's: no SNI, or a name no certificate carries.
        exact: a DNS name -> index into ``sets``.
        wildcard: ``example.com`` (for ``*.example.com``) -> index into ``sets``.
    """

    sets: tuple[tuple[int, ...], ...]
    exact: Mapping[str, int]
    wildcard: Mapping[str, int]

    def index(self, server_name: str | None) -> int:
        """Index into :attr:`sets` for an SNI name (None: the client sent none)."""
        name = _host_name(server_name) if server_name else None
        if name is None:
            return 0
        index = self.exact.get(name)
        if index is None:
            index = self.wildcard.get(name.partition(".")[2], 0)
        return index

    def matches(self, server_name: str) -> bool:
        """Whether some certificate carries ``server_name`` (exactly or by wildcard)."""
        name = _host_name(server_name)
        if name is None:
            return False
        return name in self.exact or name.partition(".")[2] in self.wildcard


def choose_certificates(certificates: Sequence[CertificateFiles]) -> CertificateChoice:
    """The rules of the module docstring, applied to a listener's certificates (default first)."""
    exact: dict[str, list[int]] = {}
    wildcard: dict[str, list[int]] = {}
    for index, certificate in enumerate(certificates):
        for name in certificate.names:
            parent = _wildcard_parent(name)
            if parent is None:
                exact.setdefault(name, []).append(index)
            else:
                wildcard.setdefault(parent, []).append(index)
    sets: dict[tuple[int, ...], int] = {}

    def set_index(chosen: tuple[int, ...]) -> int:
        return sets.setdefault(chosen, len(sets))

    default = certificates[0]
    twins = [
        index
        for index, certificate in enumerate(certificates)
        if index > 0 and default.names and set(default.names) <= set(certificate.names)
    ]
    set_index(_pick(certificates, [0, *twins]))
    by_name = {
        # Exact ones first: within a key type they win over the wildcards (rule 3).
        name: set_index(_pick(certificates, [*found, *wildcard.get(name.partition(".")[2], ())]))
        for name, found in exact.items()
    }
    by_parent = {name: set_index(_pick(certificates, found)) for name, found in wildcard.items()}
    served = {index for chosen in sets for index in chosen}
    for index in range(len(certificates)):
        if index not in served:
            set_index((index,))  # never served, but OpenSSL checks it like the others
    return CertificateChoice(sets=tuple(sets), exact=by_name, wildcard=by_parent)


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The TLS side of one https listener for one config generation.

    Attributes:
        listener: the listener's name (metric label).
        certificates: the checked certificate pairs, the default first.
        choice: which of them each SNI name gets.
        contexts: one context per set of ``choice.sets``, in the same order, holding that
            set's certificates.
        handshake_timeout: seconds a client gets to complete the handshake.
        tls13_suites: the TLS 1.3 suites the policy allows; a connection that negotiated
            another (OpenSSL offers all three) is dropped after its handshake.
    """

    listener: str
    certificates: tuple[CertificateFiles, ...]
    choice: CertificateChoice
    contexts: tuple[ssl.SSLContext, ...]
    handshake_timeout: float
    tls13_suites: frozenset[str] = frozenset(TLS13_SUITES)

    def __post_init__(self) -> None:
        if len(self.contexts) != len(self.choice.sets):
            raise ValueError("one context per certificate set")
        self.context.sni_callback = self._on_server_name

    @property
    def context(self) -> ssl.SSLContext:
        """The default certificate's context: every handshake starts here."""
        return self.contexts[0]

    def select(self, server_name: str | None) -> tuple[CertificateFiles, ...]:
        """The certificates a handshake with this SNI name (None: none sent) can present: the
        first when the client supports it, else the second (the RSA one of a pair)."""
        chosen = self.choice.sets[self.choice.index(server_name)]
        return tuple(self.certificates[index] for index in chosen)

    def matches(self, server_name: str) -> bool:
        """Whether some certificate carries ``server_name`` (exactly or by wildcard)."""
        return self.choice.matches(server_name)

    def _on_server_name(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # Called by OpenSSL mid-handshake; an exception here would abort it with an alert, so
        # this stays total: any name maps to some certificate set.
        if server_name:
            slot = _SERVER_NAME.get(None)
            if slot is not None:
                slot.append(server_name.lower())
        context = self.contexts[self.choice.index(server_name)]
        if context is not connection.context:
            connection.context = context


def build_server_tls(listener: HttpsListener, where: str = "$.listeners[?]") -> ServerTls:
    """Read every certificate of ``listener`` and build its contexts.

    Args:
        listener: the https listener.
        where: its key path in the configuration (``$.listeners[N]``), for the errors.

    Raises:
        ConfigError: naming the first file that is missing, unreadable, malformed, a chain
            out of order, or whose key does not match its certificate, and its key path.
    """
    policy = SSL_POLICIES[listener.ssl_policy]
    loaded: dict[tuple[str, str], CertificateFiles] = {}  # a pair listed twice is read once
    listed_at: list[int] = []  # each loaded pair's first place in the listener's list
    for index, listed in enumerate(listener.certificates):
        pair = (listed.cert_file, listed.key_file)
        if pair in loaded:
            continue
        try:
            loaded[pair] = load_certificate_files(*pair)
        except ConfigError as error:
            at = f"{where}.certificates[{index}]"
            raise ConfigError(error.path, f"{error.reason} - at `{at}`") from None
        listed_at.append(index)
    certificates = tuple(loaded.values())
    choice = choose_certificates(certificates)
    contexts = []
    for chosen in choice.sets:
        context: ssl.SSLContext | None = None
        for position in chosen:
            try:
                if context is None:
                    context = policy_context(policy, certificates[position])
                else:
                    add_certificate(context, certificates[position])
            except ConfigError as error:
                # OpenSSL refuses what the policy's security level forbids (a 1024-bit RSA
                # key, say): the same pair may load on a listener with another policy.
                at = f"{where}.certificates[{listed_at[position]}]"
                reason = f"{error.reason}, under ssl_policy {listener.ssl_policy} - at `{at}`"
                raise ConfigError(error.path, reason) from None
        assert context is not None  # every set names at least one certificate
        contexts.append(context)
    return ServerTls(
        listener=listener.name,
        certificates=certificates,
        choice=choice,
        contexts=tuple(contexts),
        handshake_timeout=listener.timeouts.tls_handshake_seconds,
        tls13_suites=frozenset(policy.tls13_suites),
    )


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CertificateWarning(NamedTuple):
    """A certificate a listener serves outside its validity period; served anyway (see
    :mod:`monitoring.certificates`), but the operator hears of it at every load.

    Attributes:
        listener: the listener's name.
        certificate: the certificate.
        reason: :data:`~monitoring.certificates.EXPIRED` or
            :data:`~monitoring.certificates.NOT_YET_VALID`.
    """

    listener: str
    certificate: CertificateFiles
    reason: str

    def fields(self) -> dict[str, object]:
        """The fields of its log event."""
        return {
            "listener": self.listener,
            "file": self.certificate.cert_file,
            "reason": self.reason,
            "not_before": _utc(self.certificate.not_before),
            "not_after": _utc(self.certificate.not_after),
        }

    def __str__(self) -> str:
        state = "has expired" if self.reason == EXPIRED else "is not valid yet"
        return (
            f"{self.certificate.cert_file}: warning: the certificate of listener"
            f" {self.listener!r} {state} (notBefore {_utc(self.certificate.not_before)},"
            f" notAfter {_utc(self.certificate.not_after)}); it is served all the same"
        )


def certificate_warnings(servers: Iterable[ServerTls], now: float) -> list[CertificateWarning]:
    """The certificates of ``servers`` outside their validity period at ``now`` (seconds
    since the epoch), in listener then listed order."""
    return [
        CertificateWarning(tls.listener, certificate, reason)
        for tls in servers
        for certificate in tls.certificates
        if (reason := validity_problem(certificate, now)) is not None
    ]


def log_certificate_warnings(
    servers: Iterable[ServerTls], log: EventLog, now: float | None = None
) -> None:
    """Log a ``tls.certificate_not_valid`` warning per certificate of ``servers`` outside
    its validity period, at ``now`` (default: the wall clock, which certificates use)."""
    for warning in certificate_warnings(servers, time.time() if now is None else now):
        log.warning("tls.certificate_not_valid", **warning.fields())


def build_all(listeners: Iterable[Listener]) -> dict[str, ServerTls]:
    """ServerTls of every https listener in ``listeners``, by listener name.

    Raises:
        ConfigError: see :func:`build_server_tls`.
    """
    return {
        listener.name: build_server_tls(listener, f"$.listeners[{index}]")
        for index, listener in enumerate(listeners)
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
            exported: set[str] = set()  # two entries may name one file with two key files
            for certificate in tls.certificates:
                if certificate.cert_file not in exported:
                    exported.add(certificate.cert_file)
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
    stream: trio.SocketStream,
    tls: ServerTls,
    metrics: TlsMetrics | None = None,
    *,
    deadline: float | None = None,
) -> TlsConnection | None:
    """Complete the server side of a handshake within the listener's timeout.

    Args:
        stream: an accepted connection; the caller still owns it and closes it either way.
        tls: the listener's TLS of the generation the connection was accepted under.
        metrics: counts failures when given.
        deadline: the ``trio.current_time()`` by which the handshake must be done; by
            default ``handshake_timeout`` from now. A caller that already waited on the
            connection (for its first byte) passes the deadline it set at the accept, so the
            timeout bounds the whole handshake, not each wait.

    Returns:
        The connection, with the certificate and ALPN settled; None when the client failed
        the handshake (not TLS, no common version or cipher, went away, or too slow) or
        negotiated a TLS 1.3 suite the policy does not list. Failures are counted, never
        raised: clients cause them at will; a connection closed or reset before sending a
        byte is no TLS failure and is not counted.
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
        if deadline is None:
            deadline = trio.current_time() + tls.handshake_timeout
        with trio.move_on_at(deadline):
            try:
                await tls_socket.handshake()
            except (ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if not tls_socket.received_any:
                    # Closed or reset before its first byte: no TLS was attempted (a TCP
                    # health check, a port scan), so no negotiation failed (ALB counts
                    # "client-initiated TLS connections" that fail).
                    return None
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
                        certificate=_presented(tls_socket, tls, protocol, name),
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


def _presented(stream: TlsSocket, tls: ServerTls, protocol: str, cipher: str) -> str:
    """The cert_file of the certificate a finished handshake presented; ``session-reused``
    for a resumed session, which presents none (ALB's chosen_cert_arn).

    Of an ECDSA/RSA pair, up to TLS 1.2 the suite names the one used (``ECDHE-ECDSA-...``
    or an RSA suite). A TLS 1.3 suite does not, and Python's ``ssl`` cannot say which
    certificate the server sent, so it is taken to be the ECDSA one, which OpenSSL gives every
    client offering an ECDSA signature algorithm for its curve (browsers do).
    """
    if stream.session_reused:
        return "session-reused"
    context = stream.context
    chosen = tls.choice.sets[0]
    for candidate, certificates in zip(tls.contexts, tls.choice.sets, strict=True):
        if candidate is context:
            chosen = certificates
            break
    if len(chosen) > 1 and protocol != "TLSv1.3" and ECDSA not in cipher:
        return tls.certificates[chosen[1]].cert_file  # the pair's RSA certificate
    return tls.certificates[chosen[0]].cert_file


@contextlib.contextmanager
def undecodable_server_names_logged(log: EventLog) -> Iterator[None]:
    """While the block runs, a client's SNI that is not ASCII is a debug log line, not a
    traceback on stderr.

    CPython's ssl decodes the name as ASCII before any SNI callback runs; a name that is not
    fails the handshake (an ``internal_error`` alert) and goes to ``sys.unraisablehook``,
    which prints a traceback per handshake, as many as a client cares to send. The failed
    handshake itself is counted as any other (``tls_negotiation_errors_total``).
    """
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        error = unraisable.exc_value
        if (
            isinstance(error, UnicodeDecodeError)
            and error.encoding == "ascii"
            and isinstance(unraisable.object, bytes)
        ):
            log.debug("tls.server_name_not_ascii", server_name=unraisable.object[:255])
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous
