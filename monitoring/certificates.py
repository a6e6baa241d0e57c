"""Certificate files of both daemons' TLS listeners (the balancer's https listeners, the
broker's ``api.tls``): read, parse and check them before a context uses them.

Everything an operator can get wrong about a certificate pair is found here, at load time, and
reported as a :class:`~monitoring.configfile.ConfigError` that names the file: a missing or
unreadable file, a file that is not PEM, an encrypted key (a daemon has nobody to type the
passphrase), a key that does not belong to the certificate, a chain in the wrong order or
with a certificate that did not issue the one before it (ACM refuses these too: "the issuer
must be the subject of one of the certificates in the chain"). A start with such a file fails
with that message; a reload with it is refused and the old certificates keep serving.

A certificate outside its validity period (expired, or not valid yet) is not refused: HAProxy
and nginx serve it too, and refusing it would block every unrelated reload until it is
renewed. :func:`validity_problem` tells which, so that the start, each reload and
``check-config`` can warn about it (:func:`balancer.tls.certificate_warnings`).

Names are parsed with ``cryptography`` (not left to OpenSSL) because SNI selection and the
expiry metric need them: the DNS names of the subjectAltName extension, or the subject's
common name when a certificate has none (RFC 6125 §6.4.4 keeps the CN only as that fallback).
The key type (:data:`ECDSA`, :data:`RSA`) is read here too: :mod:`balancer.tls` pairs an ECDSA
and an RSA certificate for the same name in one context, so that each client gets the one it
can use.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID

from monitoring.configfile import ConfigError
from monitoring.safefile import FileTooLarge, read_regular_file

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
        not_before: start of the leaf's validity, seconds since the epoch.
        key_type: the leaf's public key type: :data:`ECDSA`, :data:`RSA`, or another
            algorithm's name (``Ed25519``, ``Ed448``, ``DSA``, ``unknown``).
    """

    cert_file: str
    key_file: str
    names: tuple[str, ...]
    subject: str
    not_after: float
    key_type: str
    not_before: float = float("-inf")


# What validity_problem() finds, as the warnings' ``reason`` field.
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"


def validity_problem(certificate: CertificateFiles, now: float) -> str | None:
    """:data:`EXPIRED` or :data:`NOT_YET_VALID` when ``now`` (seconds since the epoch) is
    outside the leaf's validity period; None inside it."""
    if now < certificate.not_before:
        return NOT_YET_VALID
    if now > certificate.not_after:
        return EXPIRED
    return None


def read_pem(path: str) -> bytes:
    """The bytes of a PEM file.

    Raises:
        ConfigError: the file is missing, unreadable, not a regular file (a FIFO, a device)
            or implausibly large.
    """
    try:
        # Never blocks on a FIFO: a reload reads certificates on the event loop.
        return read_regular_file(path, MAX_PEM_BYTES)
    except FileTooLarge:
        raise ConfigError(path, f"larger than {MAX_PEM_BYTES} bytes: not a PEM file") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror or exc}") from None


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


USABLE_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})


def _unusable_curve(certificate: x509.Certificate) -> str | None:
    """The name of the curve of an ECDSA key no TLS client signs with, or None."""
    public = certificate.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name not in USABLE_CURVES:
        return public.curve.name
    return None


def _load_key(path: str) -> PrivateKeyTypes:
    try:
        return load_pem_private_key(read_pem(path), password=None)
    except TypeError:
        raise ConfigError(
            path, "the private key is encrypted; give the daemon a plain key"
        ) from None
    except ValueError:
        raise ConfigError(path, "not a PEM private key") from None
    except UnsupportedAlgorithm as exc:  # SM2, GOST...: OpenSSL may know it, cryptography not
        raise ConfigError(path, f"a private key of a type Wharf cannot use: {exc}") from None


def _public_der(key: x509.Certificate | PrivateKeyTypes) -> bytes:
    public = key.public_key()
    return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _same_name(issuer: x509.Name, subject: x509.Name) -> bool:
    # OpenSSL matches names case-insensitively (RFC 5280 §7.1), whatever string type each
    # attribute was encoded with; so does this check, to refuse no chain OpenSSL would build.
    return issuer == subject or issuer.rfc4514_string().casefold() == (
        subject.rfc4514_string().casefold()
    )


def _check_order(cert_file: str, chain: list[x509.Certificate]) -> None:
    for position, (issued, issuer) in enumerate(itertools.pairwise(chain), start=1):
        if not _same_name(issued.issuer, issuer.subject):
            raise ConfigError(
                cert_file,
                f"certificate {position + 1} of the chain did not issue certificate {position}"
                f" (its subject is {issuer.subject.rfc4514_string()!r}, the issuer of"
                f" certificate {position} is {issued.issuer.rfc4514_string()!r}): the issuer"
                " of each certificate must be the subject of the next one (the server"
                " certificate first, then each intermediate in turn)",
            )


def load_certificate_files(cert_file: str, key_file: str) -> CertificateFiles:
    """Read and check one certificate pair.

    Raises:
        ConfigError: naming the file at fault: missing, unreadable, not PEM, an encrypted
            key, a key that does not match the certificate, the server certificate not first
            in its chain, or a chain whose certificates do not each issue the one before.
    """
    try:
        chain = x509.load_pem_x509_certificates(read_pem(cert_file))
    except ValueError:
        raise ConfigError(cert_file, "no PEM certificate in the file") from None
    key = _load_key(key_file)
    try:
        return _checked(cert_file, key_file, chain, key)
    except (ValueError, UnsupportedAlgorithm) as exc:
        # Parsed lazily by cryptography: an extension it cannot decode (a malformed IP
        # address in the SAN) or a public key type it does not know. OpenSSL may load such a
        # certificate, but Wharf could not tell which names it serves.
        raise ConfigError(cert_file, f"cannot read the certificate: {exc}") from None


def _checked(
    cert_file: str, key_file: str, chain: list[x509.Certificate], key: PrivateKeyTypes
) -> CertificateFiles:
    leaf = chain[0]
    public = _public_der(key)
    if _public_der(leaf) != public:
        later = [n for n, c in enumerate(chain[1:], start=2) if _public_der(c) == public]
        if later:
            raise ConfigError(
                cert_file,
                f"the certificate of the key in {key_file} is number {later[0]} in this file:"
                " the server (leaf) certificate must come first, then its intermediates",
            )
        raise ConfigError(key_file, f"this key does not match the certificate in {cert_file}")
    _check_order(cert_file, chain)
    curve = _unusable_curve(leaf)
    if curve is not None:
        # OpenSSL loads it, and then no handshake can use it: TLS 1.3 (RFC 8446 4.2.3) and
        # the browsers sign with P-256, P-384 and P-521 only, as ACM issues.
        raise ConfigError(
            cert_file,
            f"an ECDSA key on the curve {curve}, which TLS clients do not accept: "
            "use P-256, P-384 or P-521",
        )
    return CertificateFiles(
        cert_file=cert_file,
        key_file=key_file,
        names=dns_names(leaf),
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        key_type=key_type(leaf),
        not_before=leaf.not_valid_before_utc.timestamp(),
    )
