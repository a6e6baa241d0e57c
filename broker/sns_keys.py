"""The key that signs SNS envelopes and the certificate subscribers verify them with.

The config names a PEM key and certificate, or neither: then a 2048-bit RSA key and a
self-signed certificate are generated into the data directory on first start and kept, so
signatures stay verifiable across restarts.

Subscribers fetch the certificate from ``SigningCertURL``. As AWS's do, that URL names the
certificate itself (``SimpleNotificationService-<fingerprint>.pem``, beside ``[sns]
signing_cert_path``), and every certificate that has signed is kept in the data directory
(``sns-cert-<fingerprint>.pem``) and served on: envelopes signed before the key changed,
still queued or waiting for a retry, keep verifying, and a subscriber that caches
certificates by URL never holds a stale one. ``signing_cert_path`` itself serves the
current certificate.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from broker.config import SnsSettings
from monitoring.configfile import ConfigError
from monitoring.durable import write_file
from monitoring.safefile import MAX_KEY_FILE_BYTES, read_regular_file
from proto.aws.sns_signature import SignatureError, SignatureVersion, Signer, load_signing_key

KEY_FILE: Final = "sns-signing.key"
CERT_FILE: Final = "sns-signing.pem"
KEY_BITS: Final = 2048  # AWS's SNS signing certificates carry 2048-bit RSA keys
CERT_DAYS: Final = 3650  # a generated certificate outlives any deployment; replace via config
ARCHIVE_PREFIX: Final = "sns-cert-"  # the data directory's copy of every certificate that signed
_ARCHIVED = re.compile(r"sns-cert-([0-9a-f]{32})\.pem")
MAX_ARCHIVED: Final = 1000  # certificates served; each is a key change, so a bound never met
URL_NAME_PREFIX: Final = "SimpleNotificationService-"  # AWS's: ...-<32 hex digits>.pem


def fingerprint(cert_pem: bytes) -> str:
    """32 hex digits naming a certificate: the start of the SHA-256 of its DER form."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()[:32]


class SigningKeys:
    """The signing key, its certificate, and the :class:`Signer` per version and URL.

    Args:
        cert_path: ``[sns] signing_cert_path``, which serves the current certificate.
        archived: earlier certificates by fingerprint (:func:`read_archive`), served on.
    """

    def __init__(
        self,
        key: rsa.RSAPrivateKey,
        cert_pem: bytes,
        cert_path: str,
        archived: dict[str, bytes] | None = None,
    ) -> None:
        self.key = key
        self.cert_pem = cert_pem
        self.cert_path = cert_path
        self.fingerprint = fingerprint(cert_pem)
        directory = cert_path.rpartition("/")[0]
        self._served = {
            f"{directory}/{URL_NAME_PREFIX}{name}.pem": pem
            for name, pem in (archived or {}).items()
        }
        self.signed_cert_path = f"{directory}/{URL_NAME_PREFIX}{self.fingerprint}.pem"
        self._served[self.signed_cert_path] = cert_pem
        self._served[cert_path] = cert_pem
        self._signers: dict[tuple[str, str], Signer] = {}

    def certificate_at(self, path: str) -> bytes | None:
        """The PEM certificate served at a URL path, if any."""
        return self._served.get(path)

    def cert_url(self, base_url: str) -> str:
        """SigningCertURL for a base URL (``scheme://host[:port]``): this certificate's own."""
        return base_url.rstrip("/") + self.signed_cert_path

    def remember(self, data_dir: Path) -> None:
        """Keep the current certificate in ``data_dir``, to be served after the key changes.

        Raises:
            OSError: it could not be written.
        """
        path = data_dir / f"{ARCHIVE_PREFIX}{self.fingerprint}.pem"
        if not path.exists():
            write_file(path, self.cert_pem, 0o644)

    def signer(self, version: SignatureVersion, base_url: str) -> Signer:
        """The signer of a topic's envelopes (cached: one per version and base URL)."""
        cache_key = (version, base_url)
        signer = self._signers.get(cache_key)
        if signer is None:
            if len(self._signers) > 64:  # bases come from Host headers: keep the cache bounded
                self._signers.clear()
            signer = Signer(self.key, self.cert_url(base_url), version)
            self._signers[cache_key] = signer
        return signer


def load_signing_keys(settings: SnsSettings, data_dir: Path) -> SigningKeys:
    """Read the configured key and certificate, or those generated in ``data_dir``, and the
    certificates kept there.

    Raises:
        ConfigError: a file is unreadable, not PEM, not RSA of at least 2048 bits, or the
            certificate does not belong to the key.
    """
    if settings.signing_key_file:
        key_path, cert_path = Path(settings.signing_key_file), Path(settings.signing_cert_file)
    else:
        key_path, cert_path = data_dir / KEY_FILE, data_dir / CERT_FILE
        if not key_path.exists():
            _generate(key_path, cert_path)
    archived = read_archive(data_dir)
    try:
        return _load(settings, key_path, cert_path, archived)
    except ConfigError as error:
        if not settings.signing_key_file:  # the broker's own pair, in its data directory
            raise
        key = "sns.signing_key_file" if error.path == str(key_path) else "sns.signing_cert_file"
        raise error.at(key) from None


def read_archive(data_dir: Path) -> dict[str, bytes]:
    """The certificates kept in ``data_dir`` by :meth:`SigningKeys.remember`, by fingerprint.

    Raises:
        ConfigError: one is unreadable or not a certificate (it names the file).
    """
    if not data_dir.is_dir():
        return {}
    archived: dict[str, bytes] = {}
    for path in sorted(data_dir.glob(f"{ARCHIVE_PREFIX}*.pem")):
        match = _ARCHIVED.fullmatch(path.name)
        if match is None:
            continue
        if len(archived) == MAX_ARCHIVED:
            raise ConfigError(
                path, f"more than {MAX_ARCHIVED} kept signing certificates; remove old ones"
            )
        try:
            pem = read_regular_file(path, MAX_KEY_FILE_BYTES)
            name = fingerprint(pem)
        except (OSError, ValueError) as error:
            raise ConfigError(path, f"cannot load a kept signing certificate: {error}") from None
        if name != match[1]:
            raise ConfigError(path, f"holds the certificate {name}, not the one it names")
        archived[name] = pem
    return archived


def _load(
    settings: SnsSettings, key_path: Path, cert_path: Path, archived: dict[str, bytes]
) -> SigningKeys:
    try:
        key = load_signing_key(read_regular_file(key_path, MAX_KEY_FILE_BYTES))
    except (OSError, SignatureError) as error:
        raise ConfigError(key_path, str(error)) from None
    if key.key_size < KEY_BITS:
        # A short key lets anyone who factors it forge what subscribers verify (NIST SP
        # 800-131A: no RSA signatures under 2048 bits).
        raise ConfigError(
            key_path,
            f"the signing key has {key.key_size} bits; SNS signs with RSA keys of at least "
            f"{KEY_BITS} bits",
        )
    try:
        cert_pem = read_regular_file(cert_path, MAX_KEY_FILE_BYTES)
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except (OSError, ValueError) as error:
        raise ConfigError(cert_path, f"cannot load the signing certificate: {error}") from None
    try:
        public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ConfigError(cert_path, f"cannot load the signing certificate: {error}") from None
    if public_key != key.public_key():
        raise ConfigError(cert_path, "the certificate does not belong to signing_key_file")
    return SigningKeys(key, cert_pem, settings.signing_cert_path, archived)


def _generate(key_path: Path, cert_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wharf-broker SNS signing")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The certificate first: a key without its certificate would be regenerated, not orphaned.
    write_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    write_file(key_path, key_pem, 0o600)
