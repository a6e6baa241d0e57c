"""AWS's security policies for HTTPS listeners, as OpenSSL settings.

Names and contents are AWS's for the Application Load Balancer: the user guide's "Security
policies for your Application Load Balancer" (what ``aws elbv2 describe-ssl-policies``
returns), its "Protocols by policy" and "Ciphers by policy" tables for the TLS, FIPS and FS
policies, checked against the policies' definitions in s2n-tls, the TLS library ALB runs.
Two names from the older guide stay accepted: ``-2015-05`` (identical to ``-2016-08``) and
``-TLS-1-0-2015-04`` (``-2016-08`` plus 3DES).

What OpenSSL through Python's ``ssl`` module cannot express, and what happens instead:

* TLS 1.3 suites cannot be chosen (``SSLContext`` has no ``set_ciphersuites``): every TLS 1.3
  policy offers OpenSSL's three (AES-256-GCM, ChaCha20-Poly1305, AES-128-GCM, in that server
  order). AWS's non-FIPS policies list the same three. A FIPS policy lists only the AES-GCM
  two, so :func:`balancer.tls.accept_tls` drops a connection that negotiated ChaCha20 right
  after its handshake, before any HTTP (as :func:`balancer.target_tls.wrap` does towards
  targets under the FIPS back-end policy). Only a client offering ChaCha20 but not AES-256-GCM
  gets there; if it offers AES-128-GCM too, ALB would have served it with that.
* Key-exchange groups: ``set_ecdh_curve`` allows a single group, so every policy keeps
  OpenSSL's defaults (X25519, P-256, P-384, P-521, ...). AWS's FIPS policies offer P-256,
  P-384 and P-521 only; its ``PQ`` policies add ML-KEM hybrids, which OpenSSL 3.0 lacks (a
  client offering one next to a classical share, as browsers do, still connects).
* Signature schemes cannot be set either, so AWS's RFC 9151 (CNSA) policies, which are
  defined by theirs, are not offered.

Wharf has no FIPS-validated cryptographic module: a FIPS policy here is only its protocol
and cipher restrictions.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple


class TlsPolicy(NamedTuple):
    """What an AWS security policy name means to OpenSSL.

    ``minimum_version`` / ``maximum_version`` name ``ssl.TLSVersion`` members; ``ciphers`` is
    the OpenSSL list for TLS 1.2 and older, in AWS's server order (empty: no TLS 1.2);
    ``tls13_suites`` are the TLS 1.3 suites AWS lists (empty: no TLS 1.3).
    """

    minimum_version: str
    maximum_version: str
    ciphers: str
    tls13_suites: tuple[str, ...] = ()


# AWS's TLS 1.3 suites: all three, or (FIPS) the AES-GCM two.
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
TLS13_FIPS_SUITES = TLS13_SUITES[:2]

# Every TLS 1.2-and-older cipher AWS offers, in its order; each policy keeps a subset.
_CIPHERS_2016_08 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:"
    "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES256-SHA:"
    "ECDHE-ECDSA-AES256-SHA:AES128-GCM-SHA256:AES128-SHA256:AES128-SHA:"
    "AES256-GCM-SHA384:AES256-SHA256:AES256-SHA"
)


def _only(keep: str) -> str:
    return ":".join(c for c in _CIPHERS_2016_08.split(":") if re.search(keep, c))


_NO_SHA1 = _only(r"(GCM|SHA256|SHA384)$")
_FORWARD_SECRET_ALL = _only(r"^ECDHE-")  # every ECDHE suite, SHA-1 too
_FORWARD_SECRET = _only(r"^ECDHE-.*(GCM|SHA256|SHA384)$")
_FORWARD_SECRET_GCM = _only(r"^ECDHE-.*GCM")
# OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 handshakes) above security level 0.
_LEGACY = "@SECLEVEL=0"
_CIPHERS_LEGACY = f"{_CIPHERS_2016_08}:{_LEGACY}"


def _sha1_signatures(ciphers: str) -> str:
    """A TLS 1.2-only policy that still signs with SHA-1 for a client that offers nothing
    else (RFC 5246 7.4.1.4.1: no signature_algorithms means SHA-1). s2n-tls defines the
    pre-TLS 1.3 ELB policies with signature preferences 20140601, rsa_pkcs1_sha1 and
    ecdsa_sha1 included; OpenSSL 3 refuses SHA-1 signatures above security level 0. A client
    that offers SHA-256 or better still gets it."""
    return f"{ciphers}:{_LEGACY}"


# The TLS 1.3 policy families: (minimum version, TLS 1.2-and-older ciphers). Each dated
# series below (2021-06, the FIPS 2023-04 ones, the PQ and FIPS-PQ 2025-09 ones) has the
# same family with the same contents, apart from the series' TLS 1.3 suites.
_FAMILIES: dict[str, tuple[str, str]] = {
    "TLS13-1-3": ("TLSv1_3", ""),
    "TLS13-1-2": ("TLSv1_2", _FORWARD_SECRET),
    "TLS13-1-2-Res": ("TLSv1_2", _FORWARD_SECRET_GCM),
    "TLS13-1-2-Ext0": ("TLSv1_2", _FORWARD_SECRET_ALL),
    "TLS13-1-2-Ext1": ("TLSv1_2", _NO_SHA1),
    "TLS13-1-2-Ext2": ("TLSv1_2", _CIPHERS_2016_08),
    "TLS13-1-1": ("TLSv1_1", _CIPHERS_LEGACY),
    "TLS13-1-0": ("TLSv1", _CIPHERS_LEGACY),
}
_ALL, _NO_EXT0 = tuple(_FAMILIES), tuple(f for f in _FAMILIES if f != "TLS13-1-2-Ext0")
_PQ = ("TLS13-1-3", "TLS13-1-2", "TLS13-1-2-Res", "TLS13-1-2-Ext1", "TLS13-1-2-Ext2", "TLS13-1-0")
# Series suffix: (families AWS offers in it, TLS 1.3 suites). Ext0 exists only in FIPS.
_SERIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "2021-06": (_NO_EXT0, TLS13_SUITES),
    "PQ-2025-09": (_PQ, TLS13_SUITES),
    "FIPS-2023-04": (_ALL, TLS13_FIPS_SUITES),
    "FIPS-PQ-2025-09": ((*_PQ, "TLS13-1-2-Ext0"), TLS13_FIPS_SUITES),
}


def _tls13_policies() -> dict[str, TlsPolicy]:
    policies = {}
    for suffix, (families, suites) in _SERIES.items():
        for family in families:
            minimum, ciphers = _FAMILIES[family]
            name = f"ELBSecurityPolicy-{family}-{suffix}"
            policies[name] = TlsPolicy(minimum, "TLSv1_3", ciphers, suites)
    return policies


SslPolicyName = Literal[
    "ELBSecurityPolicy-TLS13-1-3-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06",
    "ELBSecurityPolicy-TLS13-1-1-2021-06",
    "ELBSecurityPolicy-TLS13-1-0-2021-06",
    "ELBSecurityPolicy-TLS13-1-3-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-0-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-3-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Res-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Ext0-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-1-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-0-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-3-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Res-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext0-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-0-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-2016-08",
    "ELBSecurityPolicy-2015-05",
    "ELBSecurityPolicy-TLS-1-0-2015-04",
    "ELBSecurityPolicy-TLS-1-1-2017-01",
    "ELBSecurityPolicy-TLS-1-2-2017-01",
    "ELBSecurityPolicy-TLS-1-2-Ext-2018-06",
    "ELBSecurityPolicy-FS-2018-06",
    "ELBSecurityPolicy-FS-1-1-2019-08",
    "ELBSecurityPolicy-FS-1-2-2019-08",
    "ELBSecurityPolicy-FS-1-2-Res-2019-08",
    "ELBSecurityPolicy-FS-1-2-Res-2020-10",
]
SSL_POLICIES: dict[str, TlsPolicy] = {
    **_tls13_policies(),
    "ELBSecurityPolicy-2016-08": TlsPolicy("TLSv1", "TLSv1_2", _CIPHERS_LEGACY),
    "ELBSecurityPolicy-2015-05": TlsPolicy("TLSv1", "TLSv1_2", _CIPHERS_LEGACY),
    "ELBSecurityPolicy-TLS-1-0-2015-04": TlsPolicy(
        "TLSv1", "TLSv1_2", f"{_CIPHERS_2016_08}:DES-CBC3-SHA:{_LEGACY}"
    ),
    "ELBSecurityPolicy-TLS-1-1-2017-01": TlsPolicy("TLSv1_1", "TLSv1_2", _CIPHERS_LEGACY),
    "ELBSecurityPolicy-TLS-1-2-2017-01": TlsPolicy(
        "TLSv1_2", "TLSv1_2", _sha1_signatures(_NO_SHA1)
    ),
    "ELBSecurityPolicy-TLS-1-2-Ext-2018-06": TlsPolicy(
        "TLSv1_2", "TLSv1_2", _sha1_signatures(_CIPHERS_2016_08)
    ),
    "ELBSecurityPolicy-FS-2018-06": TlsPolicy(
        "TLSv1", "TLSv1_2", f"{_FORWARD_SECRET_ALL}:{_LEGACY}"
    ),
    "ELBSecurityPolicy-FS-1-1-2019-08": TlsPolicy(
        "TLSv1_1", "TLSv1_2", f"{_FORWARD_SECRET_ALL}:{_LEGACY}"
    ),
    "ELBSecurityPolicy-FS-1-2-2019-08": TlsPolicy(
        "TLSv1_2", "TLSv1_2", _sha1_signatures(_FORWARD_SECRET_ALL)
    ),
    "ELBSecurityPolicy-FS-1-2-Res-2019-08": TlsPolicy(
        "TLSv1_2", "TLSv1_2", _sha1_signatures(_FORWARD_SECRET)
    ),
    "ELBSecurityPolicy-FS-1-2-Res-2020-10": TlsPolicy(
        "TLSv1_2", "TLSv1_2", _sha1_signatures(_FORWARD_SECRET_GCM)
    ),
}
DEFAULT_SSL_POLICY: SslPolicyName = "ELBSecurityPolicy-TLS13-1-2-2021-06"


def is_fips(name: str) -> bool:
    """Whether ``name`` is one of AWS's FIPS policies (the ``-FIPS-`` series)."""
    return "-FIPS-" in name
