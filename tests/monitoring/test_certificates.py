"""Certificate files: names, expiry, and a ConfigError naming the file for every bad pair."""

from __future__ import annotations

import datetime
import subprocess

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtensionOID, NameOID

from monitoring.certificates import (
    EXPIRED,
    MAX_PEM_BYTES,
    NOT_YET_VALID,
    load_certificate_files,
    validity_problem,
)
from monitoring.configfile import ConfigError
from tests.support.tls import write_pair


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def test_reads_names_subject_and_expiry(ca, tmp_path):
    not_after = datetime.datetime(2031, 5, 17, 12, 0, tzinfo=datetime.UTC)
    pair = write_pair(
        ca, tmp_path, "site", "Example.COM", "*.example.com", "example.com", not_after=not_after
    )
    loaded = load_certificate_files(pair.cert_file, pair.key_file)
    assert loaded.names == ("example.com", "*.example.com")
    assert loaded.not_after == not_after.timestamp()
    assert "CN=site" in loaded.subject
    assert (loaded.cert_file, loaded.key_file) == (pair.cert_file, pair.key_file)


def write_self_signed(tmp_path, common_name, extensions=(), *, key=None, stem="c"):
    """A self-signed certificate with only ``common_name`` as its subject and the given
    extensions, in ``<stem>.pem``, and its key (ECDSA P-256 unless given) in ``<stem>.key``;
    returns the two paths."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    # Ed25519 signs without a separate hash.
    cert = builder.sign(
        key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    )
    cert_file, key_file = tmp_path / f"{stem}.pem", tmp_path / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def test_falls_back_to_the_common_name_without_san(tmp_path):
    write_self_signed(tmp_path, "legacy.example.org")
    loaded = load_certificate_files(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    assert loaded.names == ("legacy.example.org",)


def test_missing_files_are_named(ca, tmp_path):
    pair = write_pair(ca, tmp_path, "a", "a.example.com")
    with pytest.raises(ConfigError) as missing_cert:
        load_certificate_files(str(tmp_path / "nope.pem"), pair.key_file)
    assert missing_cert.value.path == str(tmp_path / "nope.pem")
    assert "cannot read" in missing_cert.value.reason
    with pytest.raises(ConfigError) as missing_key:
        load_certificate_files(pair.cert_file, str(tmp_path / "nope.key"))
    assert missing_key.value.path == str(tmp_path / "nope.key")


def test_a_key_of_another_certificate_is_refused(ca, tmp_path):
    one = write_pair(ca, tmp_path, "one", "one.example.com")
    two = write_pair(ca, tmp_path, "two", "two.example.com")
    with pytest.raises(ConfigError) as error:
        load_certificate_files(one.cert_file, two.key_file)
    assert error.value.path == two.key_file
    assert "does not match" in error.value.reason
    assert one.cert_file in error.value.reason


def test_garbage_files_are_refused(ca, tmp_path):
    pair = write_pair(ca, tmp_path, "a", "a.example.com")
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    with pytest.raises(ConfigError, match="no PEM certificate") as cert_error:
        load_certificate_files(str(junk), pair.key_file)
    assert cert_error.value.path == str(junk)
    with pytest.raises(ConfigError, match="not a PEM private key") as key_error:
        load_certificate_files(pair.cert_file, str(junk))
    assert key_error.value.path == str(junk)
    huge = tmp_path / "huge"
    huge.write_bytes(b"-" * (MAX_PEM_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_certificate_files(str(huge), pair.key_file)


def test_a_certificate_cryptography_cannot_parse_is_refused_not_a_crash(tmp_path):
    """A SAN iPAddress of 5 bytes: OpenSSL loads such a certificate, cryptography's lazy
    extension parser raises ValueError; a reload used to end the daemon on it."""
    bad_san = x509.UnrecognizedExtension(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x07\x87\x05\x01\x02\x03\x04\x05"
    )
    write_self_signed(tmp_path, "odd.example.org", [bad_san])
    with pytest.raises(ConfigError) as error:
        load_certificate_files(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    assert error.value.path == str(tmp_path / "c.pem")
    assert error.value.reason.startswith("cannot read the certificate: ")


def test_a_key_of_a_type_cryptography_lacks_is_refused_not_a_crash(ca, tmp_path):
    pair = write_pair(ca, tmp_path, "a", "a.example.com")
    made = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "SM2"], capture_output=True, check=False
    )
    if made.returncode != 0:
        pytest.skip("this openssl makes no SM2 keys")
    (tmp_path / "sm2.key").write_bytes(made.stdout)
    with pytest.raises(ConfigError) as error:
        load_certificate_files(pair.cert_file, str(tmp_path / "sm2.key"))
    assert error.value.path == str(tmp_path / "sm2.key")
    assert "a private key of a type Wharf cannot use" in error.value.reason


def test_an_encrypted_key_is_refused(ca, tmp_path):
    pair = write_pair(ca, tmp_path, "a", "a.example.com")
    with open(pair.key_file, "rb") as file:
        key = serialization.load_pem_private_key(file.read(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "enc.key").write_bytes(encrypted)
    with pytest.raises(ConfigError, match="encrypted"):
        load_certificate_files(pair.cert_file, str(tmp_path / "enc.key"))


def test_reads_the_key_type(ca, tmp_path):
    # What balancer.tls pairs an ECDSA and an RSA certificate for one name by.
    for key_type, expected in ((trustme.KeyType.ECDSA, "ECDSA"), (trustme.KeyType.RSA, "RSA")):
        leaf = ca.issue_cert("a.example.com", key_type=key_type)
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "k.pem"))
        leaf.private_key_pem.write_to_path(str(tmp_path / "k.key"))
        loaded = load_certificate_files(str(tmp_path / "k.pem"), str(tmp_path / "k.key"))
        assert loaded.key_type == expected
    ed = ed25519.Ed25519PrivateKey.generate()
    loaded = load_certificate_files(
        *write_self_signed(tmp_path, "ed.example.org", key=ed, stem="ed")
    )
    assert loaded.key_type == "Ed25519"  # never paired: ALB takes ECDSA and RSA only


def test_an_ecdsa_key_on_a_curve_tls_clients_refuse_is_refused(tmp_path):
    """secp256k1 loads into OpenSSL, then fails every handshake, and would take its names'
    ECDSA slot from a usable certificate listed after it."""
    k1 = ec.generate_private_key(ec.SECP256K1())
    cert_file, key_file = write_self_signed(tmp_path, "k1.example.org", key=k1, stem="k1")
    with pytest.raises(ConfigError, match="curve secp256k1") as refused:
        load_certificate_files(cert_file, key_file)
    assert refused.value.path == cert_file
    for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()):
        key = ec.generate_private_key(curve)
        pair = write_self_signed(tmp_path, f"{curve.name}.example.org", key=key, stem=curve.name)
        assert load_certificate_files(*pair).key_type == "ECDSA"


def write_leaf(leaf: trustme.LeafCert, directory, stem: str, *, order=None) -> tuple[str, str]:
    """Write a leaf's chain, its certificates in ``order`` (indexes; default leaf first)."""
    pems = [blob.bytes() for blob in leaf.cert_chain_pems]
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_file.write_bytes(b"".join(pems[i] for i in (order or range(len(pems)))))
    leaf.private_key_pem.write_to_path(str(key_file))
    return str(cert_file), str(key_file)


def test_a_chain_through_intermediates_loads(ca, tmp_path):
    leaf = ca.create_child_ca().create_child_ca().issue_cert("a.example.com")
    assert len(leaf.cert_chain_pems) == 3  # leaf, its issuer, that one's issuer
    loaded = load_certificate_files(*write_leaf(leaf, tmp_path, "chained"))
    assert loaded.names == ("a.example.com",)


def test_a_chain_with_the_intermediate_first_says_the_leaf_must_come_first(ca, tmp_path):
    leaf = ca.create_child_ca().issue_cert("a.example.com")
    cert_file, key_file = write_leaf(leaf, tmp_path, "reversed", order=(1, 0))
    with pytest.raises(ConfigError) as error:
        load_certificate_files(cert_file, key_file)
    assert error.value.path == cert_file  # the file to fix, not the key
    assert "must come first" in error.value.reason
    assert "does not match" not in error.value.reason


def test_a_chain_whose_certificates_do_not_chain_is_refused(ca, tmp_path):
    # The leaf followed by an intermediate that did not issue it (ACM refuses this too).
    leaf = ca.create_child_ca().issue_cert("a.example.com")
    stranger = trustme.CA().create_child_ca().issue_cert("b.example.com")
    cert_file, key_file = write_leaf(leaf, tmp_path, "mixed", order=(0,))
    with open(cert_file, "ab") as file:
        file.write(stranger.cert_chain_pems[1].bytes())
    with pytest.raises(ConfigError) as error:
        load_certificate_files(cert_file, key_file)
    assert error.value.path == cert_file
    assert "certificate 2 of the chain did not issue certificate 1" in error.value.reason
    assert "the issuer of each certificate must be the subject of the next" in error.value.reason


def test_validity_is_read_and_judged_but_never_refused(ca, tmp_path):
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    periods = {
        "expired": (now - 30 * day, now - day, EXPIRED),
        "future": (now + day, now + 30 * day, NOT_YET_VALID),
        "current": (now - day, now + day, None),
    }
    for stem, (not_before, not_after, problem) in periods.items():
        leaf = ca.issue_cert(f"{stem}.example.com", not_before=not_before, not_after=not_after)
        loaded = load_certificate_files(*write_leaf(leaf, tmp_path, stem))
        assert loaded.not_before == not_before.replace(microsecond=0).timestamp()
        assert loaded.not_after == not_after.replace(microsecond=0).timestamp()
        assert validity_problem(loaded, now.timestamp()) == problem, stem
