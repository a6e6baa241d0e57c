"""The key that signs SNS envelopes and the certificate subscribers verify them with.

The config names a PEM key and certificate, or neither: then a 2048-bit RSA key and a
self-signed certificate are generated into the data directory on first start and kept, so
signatures stay verifiable across restarts. Subscribers fetch the certificate from
``SigningCertURL``, which the front end serves at ``[sns] signing_cert_path``.
"""

from __future__ import annotations

import datetime
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


class SigningKeys:
    """The signing key, its certificate, and the :class:`Signer` per version and URL."""

    def __init__(self, key: rsa.RSAPrivateKey, cert_pem: bytes, cert_path: str) -> None:
        self.key = key
        self.cert_pem = cert_pem
        self.cert_path = cert_path
        self._signers: dict[tuple[str, str], Signer] = {}

    def cert_url(self, base_url: str) -> str:
        """SigningCertURL for a base URL (``scheme://host[:port]``)."""
        return base_url.rstrip("/") + self.cert_path

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
    """Read the configured key and certificate, or those generated in ``data_dir``.

    Raises:
        ConfigError: a file is unreadable, not PEM, not RSA, or the certificate does not
            belong to the key.
    """
    if settings.signing_key_file:
        key_path, cert_path = Path(settings.signing_key_file), Path(settings.signing_cert_file)
    else:
        key_path, cert_path = data_dir / KEY_FILE, data_dir / CERT_FILE
        if not key_path.exists():
            _generate(key_path, cert_path)
    try:
        return _load(settings, key_path, cert_path)
    except ConfigError as error:
        if not settings.signing_key_file:  # the broker's own pair, in its data directory
            raise
        key = "sns.signing_key_file" if error.path == str(key_path) else "sns.signing_cert_file"
        raise error.at(key) from None


def _load(settings: SnsSettings, key_path: Path, cert_path: Path) -> SigningKeys:
    try:
        key = load_signing_key(read_regular_file(key_path, MAX_KEY_FILE_BYTES))
    except (OSError, SignatureError) as error:
        raise ConfigError(key_path, str(error)) from None
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
    return SigningKeys(key, cert_pem, settings.signing_cert_path)


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
