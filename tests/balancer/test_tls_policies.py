"""AWS's security policy table: every name AWS documents, with its protocols and ciphers."""

from __future__ import annotations

import ssl
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.tls_policies import (
    DEFAULT_SSL_POLICY,
    SSL_POLICIES,
    TLS13_FIPS_SUITES,
    TLS13_SUITES,
    SslPolicyName,
)

# AWS's server order of every TLS 1.2-and-older cipher its policies use (ELBSecurityPolicy-
# 2016-08, the longest list); each policy keeps a subset in this order.
AWS_ORDER = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES128-SHA256",
    "AES128-SHA",
    "AES256-GCM-SHA384",
    "AES256-SHA256",
    "AES256-SHA",
    "DES-CBC3-SHA",  # TLS-1-0-2015-04 only
]
_ECDHE_GCM = {c for c in AWS_ORDER if c.startswith("ECDHE-") and "GCM" in c}
_ECDHE_SHA2 = {c for c in AWS_ORDER if c.startswith("ECDHE-") and c.endswith(("256", "384"))}
_ECDHE = {c for c in AWS_ORDER if c.startswith("ECDHE-")}
_RSA_SHA2 = {"AES128-GCM-SHA256", "AES128-SHA256", "AES256-GCM-SHA384", "AES256-SHA256"}
_RSA = _RSA_SHA2 | {"AES128-SHA", "AES256-SHA"}
# The cipher columns of AWS's "Ciphers by policy" tables, by the shape each list has.
CIPHERS: dict[str, set[str]] = {
    "-": set(),
    "fs-gcm": _ECDHE_GCM,  # ECDHE with AES-GCM
    "fs": _ECDHE_SHA2,  # ECDHE with SHA-2 (GCM and CBC)
    "fs-sha1": _ECDHE,  # every ECDHE suite, SHA-1 CBC too
    "no-sha1": _ECDHE_SHA2 | _RSA_SHA2,
    "all": _ECDHE | _RSA,
    "all+3des": _ECDHE | _RSA | {"DES-CBC3-SHA"},
}
SUITES = {"-": (), "all": TLS13_SUITES, "aes-gcm": TLS13_FIPS_SUITES}
VERSIONS = {"1.0": "TLSv1", "1.1": "TLSv1_1", "1.2": "TLSv1_2", "1.3": "TLSv1_3"}

# AWS's ALB security policies ("Protocols by policy" / "Ciphers by policy" of the TLS, FIPS
# and FS tables): name, lowest and highest TLS version, TLS 1.3 suites, TLS 1.2-and-older
# ciphers. The last two rows are from the older guide (2015-05: "identical to 2016-08").
AWS_TABLE_TEXT = """
TLS13-1-3-2021-06                 1.3 1.3 all     -
TLS13-1-2-2021-06                 1.2 1.3 all     fs
TLS13-1-2-Res-2021-06             1.2 1.3 all     fs-gcm
TLS13-1-2-Ext1-2021-06            1.2 1.3 all     no-sha1
TLS13-1-2-Ext2-2021-06            1.2 1.3 all     all
TLS13-1-1-2021-06                 1.1 1.3 all     all
TLS13-1-0-2021-06                 1.0 1.3 all     all
TLS13-1-3-PQ-2025-09              1.3 1.3 all     -
TLS13-1-2-PQ-2025-09              1.2 1.3 all     fs
TLS13-1-2-Res-PQ-2025-09          1.2 1.3 all     fs-gcm
TLS13-1-2-Ext1-PQ-2025-09         1.2 1.3 all     no-sha1
TLS13-1-2-Ext2-PQ-2025-09         1.2 1.3 all     all
TLS13-1-0-PQ-2025-09              1.0 1.3 all     all
TLS13-1-3-FIPS-2023-04            1.3 1.3 aes-gcm -
TLS13-1-2-FIPS-2023-04            1.2 1.3 aes-gcm fs
TLS13-1-2-Res-FIPS-2023-04        1.2 1.3 aes-gcm fs-gcm
TLS13-1-2-Ext0-FIPS-2023-04       1.2 1.3 aes-gcm fs-sha1
TLS13-1-2-Ext1-FIPS-2023-04       1.2 1.3 aes-gcm no-sha1
TLS13-1-2-Ext2-FIPS-2023-04       1.2 1.3 aes-gcm all
TLS13-1-1-FIPS-2023-04            1.1 1.3 aes-gcm all
TLS13-1-0-FIPS-2023-04            1.0 1.3 aes-gcm all
TLS13-1-3-FIPS-PQ-2025-09         1.3 1.3 aes-gcm -
TLS13-1-2-FIPS-PQ-2025-09         1.2 1.3 aes-gcm fs
TLS13-1-2-Res-FIPS-PQ-2025-09     1.2 1.3 aes-gcm fs-gcm
TLS13-1-2-Ext0-FIPS-PQ-2025-09    1.2 1.3 aes-gcm fs-sha1
TLS13-1-2-Ext1-FIPS-PQ-2025-09    1.2 1.3 aes-gcm no-sha1
TLS13-1-2-Ext2-FIPS-PQ-2025-09    1.2 1.3 aes-gcm all
TLS13-1-0-FIPS-PQ-2025-09         1.0 1.3 aes-gcm all
TLS-1-2-Ext-2018-06               1.2 1.2 -       all
TLS-1-2-2017-01                   1.2 1.2 -       no-sha1
TLS-1-1-2017-01                   1.1 1.2 -       all
2016-08                           1.0 1.2 -       all
FS-1-2-Res-2020-10                1.2 1.2 -       fs-gcm
FS-1-2-Res-2019-08                1.2 1.2 -       fs
FS-1-2-2019-08                    1.2 1.2 -       fs-sha1
FS-1-1-2019-08                    1.1 1.2 -       fs-sha1
FS-2018-06                        1.0 1.2 -       fs-sha1
2015-05                           1.0 1.2 -       all
TLS-1-0-2015-04                   1.0 1.2 -       all+3des
"""
AWS_TABLE = {
    f"ELBSecurityPolicy-{name}": (VERSIONS[low], VERSIONS[high], SUITES[tls13], CIPHERS[tls12])
    for name, low, high, tls13, tls12 in (row.split() for row in AWS_TABLE_TEXT.split("\n") if row)
}


def listed(ciphers: str) -> list[str]:
    """The cipher names of an OpenSSL list, without ``@SECLEVEL``-style directives."""
    return [c for c in ciphers.split(":") if c and not c.startswith("@")]


def test_every_name_aws_documents_is_defined_and_nothing_else():
    assert set(SSL_POLICIES) == set(AWS_TABLE)
    assert set(typing.get_args(SslPolicyName)) == set(SSL_POLICIES)
    assert DEFAULT_SSL_POLICY == "ELBSecurityPolicy-TLS13-1-2-2021-06"


@pytest.mark.parametrize("name", sorted(AWS_TABLE))
def test_policy_follows_awss_table(name):
    low, high, tls13, tls12 = AWS_TABLE[name]
    policy = SSL_POLICIES[name]
    assert (policy.minimum_version, policy.maximum_version) == (low, high)
    assert set(policy.tls13_suites) == set(tls13)
    assert listed(policy.ciphers) == [c for c in AWS_ORDER if c in tls12]  # AWS's server order


@pytest.mark.parametrize("name", sorted(SSL_POLICIES))
def test_policies_are_valid_openssl_settings(name):
    policy = SSL_POLICIES[name]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    low, high = ssl.TLSVersion[policy.minimum_version], ssl.TLSVersion[policy.maximum_version]
    assert low <= high
    # TLS 1.3 on exactly when AWS lists TLS 1.3 suites, and OpenSSL offers every one listed.
    assert bool(policy.tls13_suites) == (high == ssl.TLSVersion.TLSv1_3)
    offered = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3"}
    assert set(policy.tls13_suites) <= offered
    if not policy.ciphers:
        assert low == ssl.TLSVersion.TLSv1_3
        return
    context.set_ciphers(policy.ciphers)  # raises SSLError on an unknown cipher list
    enabled = [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]
    known = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    known.set_ciphers("ALL:@SECLEVEL=0")
    knows = {c["name"] for c in known.get_ciphers()}
    # Every listed cipher this OpenSSL build knows is enabled, in order (3DES may be out).
    assert enabled == [c for c in listed(policy.ciphers) if c in knows]


@pytest.mark.parametrize(
    ("suffix", "classical", "count"),
    [
        ("-PQ-2025-09", "-2021-06", 6),  # only the ML-KEM groups differ, which OpenSSL lacks
        ("-FIPS-PQ-2025-09", "-FIPS-2023-04", 7),
    ],
)
def test_pq_policies_are_their_classical_twins(suffix, classical, count):
    fips = "FIPS" in suffix
    pq = [n for n in SSL_POLICIES if n.endswith(suffix) and ("-FIPS-" in n) == fips]
    assert len(pq) == count
    for name in pq:
        assert SSL_POLICIES[name] == SSL_POLICIES[name.replace(suffix, classical)]


@given(st.sampled_from(sorted(name for name in SSL_POLICIES if "-FIPS-" in name)))
def test_a_fips_policy_is_its_classical_twin_without_chacha20(name):
    fips = SSL_POLICIES[name]
    assert "CHACHA20" not in fips.ciphers
    assert set(fips.tls13_suites) == {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"}
    classical = name.replace("-FIPS-2023-04", "-2021-06").replace("-FIPS-PQ-", "-PQ-")
    if classical in SSL_POLICIES:  # Ext0 exists only as a FIPS policy
        assert fips._replace(tls13_suites=TLS13_SUITES) == SSL_POLICIES[classical]
