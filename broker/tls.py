"""HTTPS for the API listener: stdlib ``ssl`` contexts and ``trio.SSLStream``.

TLS 1.2 is the floor, as on AWS's own API endpoints; the ciphers are OpenSSL's
defaults for a server context. HTTP/1.1 is the only protocol offered by ALPN. A client gets
``handshake_timeout_seconds`` to finish the handshake, so a silent or slow client cannot hold
a connection slot.

Reload (SIGHUP) reads the certificate and key again and swaps the context: connections
accepted afterwards present the new certificate; established ones keep theirs. A file that
does not load refuses the reload and the old certificate keeps serving.
"""

from __future__ import annotations

import ssl

import trio

from broker.config import TlsSettings
from monitoring.certificates import load_certificate_files
from monitoring.configfile import ConfigError


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """Build the server context of ``settings``' certificate and key.

    Raises:
        ConfigError: naming the file at fault and the reason, as for the balancer's
            certificates (:func:`monitoring.certificates.load_certificate_files`): missing,
            unreadable, not PEM, an encrypted key, a key that does not match, a chain out
            of order or whose certificates do not each issue the one before.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        _load_pair(context, settings)
    except ConfigError as error:
        key = "api.tls.key_file" if error.path == settings.key_file else "api.tls.cert_file"
        raise error.at(key) from None
    return context


def _load_pair(context: ssl.SSLContext, settings: TlsSettings) -> None:
    # The balancer's checks first, so that an error names the file at fault and why: a key
    # that is not one, a chain out of order or not linked up (which OpenSSL would load, or
    # blame on the certificate file as "PEM lib"). They read the files without opening a
    # FIFO or a device as load_cert_chain would (a reload waiting on the event loop).
    load_certificate_files(settings.cert_file, settings.key_file)
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
        self.context = server_context(settings)

    def reload(self, settings: TlsSettings) -> None:
        """Load ``settings``' files (perhaps renewed); on error keep the current ones.

        Raises:
            ConfigError: see :func:`server_context`.
        """
        context = server_context(settings)
        self.settings, self.context = settings, context

    async def accept(self, stream: trio.abc.Stream) -> trio.SSLStream[trio.abc.Stream] | None:
        """Complete the server side of the handshake; None if it failed or timed out.

        The caller still owns ``stream`` and closes it either way.
        """
        tls = trio.SSLStream(stream, self.context, server_side=True, https_compatible=True)
        with trio.move_on_after(self.settings.handshake_timeout_seconds):
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                return None  # not TLS, an old protocol version, or a rejected certificate
            return tls
        return None
