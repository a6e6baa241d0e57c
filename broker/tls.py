"""HTTPS for the API listener: stdlib ``ssl`` contexts and ``trio.SSLStream``.

TLS 1.2 is the floor, as on AWS's own API endpoints; the ciphers are OpenSSL's
defaults for a server context. HTTP/1.1 is the only protocol offered by ALPN. A client gets
``handshake_timeout_seconds`` to finish the handshake, so a silent or slow client cannot hold
a connection slot.

Reload (SIGHUP) reads the certificate and key again and swaps the context: connections
accepted afterwards present the new certificate; established ones keep theirs. A file that
does not load refuses the reload and the old certificate keeps serving. A certificate outside
its validity period (expired, not valid yet) is served all the same, as the balancer's are,
but the start, each reload and ``check-config`` warn about it (:func:`validity_warning`):
every client verifying it fails until it is renewed.
"""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import Callable

import trio

from broker.config import TlsSettings
from monitoring import fastio
from monitoring.certificates import (
    EXPIRED,
    CertificateFiles,
    load_certificate_files,
    validity_problem,
)
from monitoring.configfile import ConfigError
from monitoring.httpserver import Draining


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """Build the server context of ``settings``' certificate and key.

    Raises:
        ConfigError: naming the file at fault and the reason, as for the balancer's
            certificates (:func:`monitoring.certificates.load_certificate_files`): missing,
            unreadable, not PEM, an encrypted key, a key that does not match, a chain out
            of order or whose certificates do not each issue the one before.
    """
    return server_tls(settings)[0]


def server_tls(settings: TlsSettings) -> tuple[ssl.SSLContext, CertificateFiles]:
    """:func:`server_context`, and the checked certificate it serves (names, validity).

    Raises:
        ConfigError: see :func:`server_context`.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        certificate = _load_pair(context, settings)
    except ConfigError as error:
        key = "api.tls.key_file" if error.path == settings.key_file else "api.tls.cert_file"
        raise error.at(key) from None
    return context, certificate


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validity_warning(certificate: CertificateFiles, now: float) -> dict[str, str] | None:
    """The fields of a ``tls.certificate_not_valid`` warning when ``now`` (seconds since the
    epoch) is outside the certificate's validity period; None inside it."""
    reason = validity_problem(certificate, now)
    if reason is None:
        return None
    return {
        "listener": "api",
        "file": certificate.cert_file,
        "reason": reason,
        "not_before": _utc(certificate.not_before),
        "not_after": _utc(certificate.not_after),
    }


def validity_message(certificate: CertificateFiles, now: float) -> str | None:
    """The ``check-config`` line for a certificate outside its validity period, or None."""
    fields = validity_warning(certificate, now)
    if fields is None:
        return None
    state = "has expired" if fields["reason"] == EXPIRED else "is not valid yet"
    return (
        f"{certificate.cert_file}: warning: the certificate of api.tls {state} (notBefore"
        f" {fields['not_before']}, notAfter {fields['not_after']}); it is served all the same"
    )


def _load_pair(context: ssl.SSLContext, settings: TlsSettings) -> CertificateFiles:
    # The balancer's checks first, so that an error names the file at fault and why: a key
    # that is not one, a chain out of order or not linked up (which OpenSSL would load, or
    # blame on the certificate file as "PEM lib"). They read the files without opening a
    # FIFO or a device as load_cert_chain would (a reload waiting on the event loop).
    certificate = load_certificate_files(settings.cert_file, settings.key_file)
    try:
        # A password callback, so that OpenSSL never prompts for a passphrase on a terminal
        # (which froze the whole event loop): an encrypted key is refused instead.
        context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_passphrase)
    except _EncryptedKey:
        raise ConfigError(
            settings.key_file, "the private key is encrypted; give the daemon a plain key"
        ) from None
    except FileNotFoundError as error:  # replaced since it was checked
        raise ConfigError(error.filename or settings.cert_file, "file not found") from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                settings.key_file,
                f"this key does not match the certificate in {settings.cert_file}",
            ) from None
        raise ConfigError(settings.cert_file, f"cannot load certificate and key: {error}") from None
    except OSError as error:
        raise ConfigError(settings.cert_file, f"cannot load certificate and key: {error}") from None
    return certificate


class _EncryptedKey(Exception):
    """The key file asks for a passphrase, which a daemon has nobody to type."""


def _no_passphrase() -> bytes:
    raise _EncryptedKey


class TlsTerminator:
    """Turns accepted TCP streams into TLS streams with the current certificate."""

    def __init__(self, settings: TlsSettings) -> None:
        """Load the certificate now, so a bad file stops the start.

        Raises:
            ConfigError: see :func:`server_context`.
        """
        self.settings = settings
        self.context, self.certificate = server_tls(settings)

    def reload(self, settings: TlsSettings) -> None:
        """Load ``settings``' files (perhaps renewed); on error keep the current ones.

        Raises:
            ConfigError: see :func:`server_context`.
        """
        context, certificate = server_tls(settings)
        self.settings, self.context, self.certificate = settings, context, certificate

    def state(self) -> tuple[TlsSettings, ssl.SSLContext, CertificateFiles]:
        """What :meth:`restore` puts back (a reload refused after the swap)."""
        return self.settings, self.context, self.certificate

    def restore(self, state: tuple[TlsSettings, ssl.SSLContext, CertificateFiles]) -> None:
        """Serve ``state`` (from :meth:`state`) again."""
        self.settings, self.context, self.certificate = state

    async def accept(
        self,
        stream: trio.SocketStream,
        draining: Draining | None = None,
        failed: Callable[[str], None] = lambda reason: None,
    ) -> trio.SSLStream[trio.SocketStream] | None:
        """Complete the server side of the handshake; None if it failed or timed out.

        Until its hello arrives the client is idle, as a keep-alive connection between
        requests: a stop (``draining``) closes it at once rather than after the handshake
        timeout. ``failed`` hears why a handshake failed (OpenSSL's reason, or ``timeout``);
        a client that closes before its first byte (a TCP health check, a port scan) is no
        failed negotiation and is not reported. The caller still owns ``stream`` and closes
        it either way.
        """
        deadline = trio.current_time() + self.settings.handshake_timeout_seconds
        if draining is not None and draining.started:
            return None  # accepted just before the stop: an idle wait now would not end early
        if draining is not None and not fastio.readable_now(stream.socket.fileno()):
            with draining.idle(deadline) as wait:
                await trio.lowlevel.wait_readable(stream.socket)
            if wait.cancelled_caught:
                if trio.current_time() >= deadline:
                    failed("timeout")
                return None  # the daemon is stopping, or the client never said hello
        tls = trio.SSLStream(stream, self.context, server_side=True, https_compatible=True)
        with trio.move_on_at(deadline):
            try:
                first = await stream.socket.recv(1, socket.MSG_PEEK)
            except OSError:
                first = b""
            if not first:
                return None  # closed or reset before a byte: a probe, not a negotiation
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                # Not TLS, an old protocol version, no shared cipher, a rejected certificate.
                failed(_failure_reason(exc))
                return None
            return tls
        failed("timeout")
        return None


def _failure_reason(exc: BaseException) -> str:
    """OpenSSL's reason for a failed handshake (a finite set of names), or ``closed``."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return str(cause.reason).lower()
    return "closed"
