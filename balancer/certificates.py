"""Certificate files of https listeners: read, parse and check them before a context uses them.

Everything an operator can get wrong about a certificate pair is found here, at load time, and
reported as a :class:`~monitoring.configfile.ConfigError` that names the file: a missing or
unreadable file, a file that is not PEM, an encrypted key (a daemon has nobody to type the
passphrase), a key that does not belong to the certificate. A start with such a file fails with
that message; a reload with it is refused and the old certificates keep serving.

Names are parsed with ``cryptography`` (not left to OpenSSL) because SNI selection and the
expiry metric need them: the DNS names of the subjectAltName extension, or the subject's
common name when a certificate has none (RFC 6125 §6.4.4 keeps the CN only as that fallback).
The key type (:data:`ECDSA`, :data:`RSA`) is read here too: :mod:`balancer.tls` pairs an ECDSA
and an RSA certificate for the same name in one context, so that each client gets the one it
can use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID

from monitoring.configfile import ConfigError

# A PEM chain of a leaf and a few intermediates is a few KiB; anything far larger is not a
# certificate file, and reading it whole would only waste memory.
MAX_PEM_BYTES = 1 << 20

# Key types of a certificate's public key: the two ALB accepts, and any other by its name.
ECDSA = "ECDSA"
RSA = "RSA"


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """A parsed and checked certificate pair.

    Attributes:
        cert_file: path of the PEM chain (leaf first), as configured.
        key_file: path of the PEM private key, as configured.
        names: lower-case DNS names the leaf is valid for (``*.example.com`` for wildcards).
        subject: the leaf's subject as RFC 4514 text, for logs.
        not_after: end of the leaf's validity, seconds since the epoch.
        key_type: the leaf's public key type: :data:`ECDSA`, :data:`RSA`, or another
            algorithm's name (``Ed25519``, ``Ed448``, ``DSA``, ``unknown``).
    """

    cert_file: str
    key_file: str
    names: tuple[str, ...]
    subject: str
    not_after: float
    key_type: str


def read_pem(path: str) -> bytes:
    """The bytes of a PEM file.

    Raises:
        ConfigError: the file is missing, unreadable or implausibly large.
    """
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(path, f"larger than {MAX_PEM_BYTES} bytes: not a PEM file")
    return data


def dns_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a certificate is valid for, lower-case, without duplicates."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [
            str(attribute.value)
            for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return tuple(dict.fromkeys(name.lower().rstrip(".") for name in names if name))


def key_type(certificate: x509.Certificate) -> str:
    """The type of a certificate's public key (see :attr:`CertificateFiles.key_type`)."""
    public = certificate.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECDSA
    if isinstance(public, rsa.RSAPublicKey):
        return RSA
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(public, dsa.DSAPublicKey):
        return "DSA"
    return "unknown"


def _load_key(path: str) -> PrivateKeyTypes:
    try:
        return load_pem_private_key(read_pem(path), password=None)
    except TypeError:
        raise ConfigError(
            path, "the private key is encrypted; give the daemon a plain key"
        ) from None
    except ValueError:
        raise ConfigError(path, "not a PEM private key") from None


def _public_der(key: x509.Certificate | PrivateKeyTypes) -> bytes:
    public = key.public_key()
    return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def load_certificate_files(cert_file: str, key_file: str) -> CertificateFiles:
    """Read and check one certificate pair.

    Raises:
        ConfigError: naming the file at fault: missing, unreadable, not PEM, an encrypted
            key, or a key that does not match the certificate.
    """
    try:
        chain = x509.load_pem_x509_certificates(read_pem(cert_file))
    except ValueError:
        raise ConfigError(cert_file, "no PEM certificate in the file") from None
    leaf = chain[0]
    key = _load_key(key_file)
    if _public_der(leaf) != _public_der(key):
        raise ConfigError(key_file, f"this key does not match the certificate in {cert_file}")
    return CertificateFiles(
        cert_file=cert_file,
        key_file=key_file,
        names=dns_names(leaf),
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        key_type=key_type(leaf),
    )
