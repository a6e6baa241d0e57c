"""Certificates for TLS tests: trustme-issued pairs written to files, as an operator has them."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import trustme

from balancer.config import Certificate


def write_pair(
    ca: trustme.CA,
    directory: Path,
    stem: str,
    *names: str,
    common_name: str | None = None,
    not_after: datetime.datetime | None = None,
) -> Certificate:
    """Issue a certificate for ``names``, write ``<stem>.pem`` (chain) and ``<stem>.key``."""
    leaf = ca.issue_cert(*names, common_name=common_name or stem, not_after=not_after)
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    leaf.private_key_pem.write_to_path(str(key_file))
    return Certificate(cert_file=str(cert_file), key_file=str(key_file))


def client_context(ca: trustme.CA, *, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A client context that trusts ``ca`` and offers ``alpn``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context
