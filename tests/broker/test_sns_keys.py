"""The SNS signing key: generated once and kept, or read from the configured files."""

from __future__ import annotations

import hashlib
import stat
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from broker.config import SnsSettings
from broker.sns_keys import ARCHIVE_PREFIX, CERT_FILE, KEY_FILE, load_signing_keys
from monitoring.configfile import ConfigError
from proto.aws.sns_signature import sign, string_to_sign, verify

ENVELOPE = {
    "Type": "Notification",
    "MessageId": "m",
    "TopicArn": "arn:aws:sns:us-east-1:000000000000:t",
    "Message": "hello",
    "Timestamp": "2026-01-01T00:00:00.000Z",
}


def test_a_key_is_generated_on_first_start_and_kept(tmp_path: Path) -> None:
    first = load_signing_keys(SnsSettings(), tmp_path)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    second = load_signing_keys(SnsSettings(), tmp_path)
    assert first.cert_pem == second.cert_pem
    certificate = x509.load_pem_x509_certificate(second.cert_pem)
    signature = sign(string_to_sign(ENVELOPE), first.key, "2")
    verify({**ENVELOPE, "SignatureVersion": "2", "Signature": signature}, certificate)


def test_signers_carry_the_url_and_version(tmp_path: Path) -> None:
    keys = load_signing_keys(SnsSettings(signing_cert_path="/certs/c.pem"), tmp_path)
    signer = keys.signer("2", "https://sns.example:8443/")
    fingerprint = hashlib.sha256(
        x509.load_pem_x509_certificate(keys.cert_pem).public_bytes(serialization.Encoding.DER)
    ).hexdigest()[:32]
    own_path = f"/certs/SimpleNotificationService-{fingerprint}.pem"
    assert signer.cert_url == "https://sns.example:8443" + own_path
    assert signer.version == "2"
    assert keys.signer("2", "https://sns.example:8443/") is signer
    assert keys.certificate_at(own_path) == keys.certificate_at("/certs/c.pem") == keys.cert_pem
    assert keys.certificate_at("/c.pem") is None


def test_a_certificate_that_signed_is_served_after_the_key_changes(tmp_path: Path) -> None:
    old = load_signing_keys(SnsSettings(), tmp_path)
    old.remember(tmp_path)
    old_path = old.signer("1", "http://h").cert_url.removeprefix("http://h")
    (tmp_path / KEY_FILE).unlink()  # a new generated pair
    new = load_signing_keys(SnsSettings(), tmp_path)
    new_path = new.signer("1", "http://h").cert_url.removeprefix("http://h")
    assert new.cert_pem != old.cert_pem
    assert new_path != old_path
    assert new.certificate_at(old_path) == old.cert_pem
    assert new.certificate_at(new_path) == new.cert_pem
    assert new.certificate_at("/SimpleNotificationService-wharf.pem") == new.cert_pem
    kept = [path.name for path in tmp_path.glob(f"{ARCHIVE_PREFIX}*")]
    assert kept == [f"{ARCHIVE_PREFIX}{old.fingerprint}.pem"]


def test_a_kept_certificate_that_is_not_what_it_names_is_refused(tmp_path: Path) -> None:
    keys = load_signing_keys(SnsSettings(), tmp_path)
    keys.remember(tmp_path)
    wrong = tmp_path / f"{ARCHIVE_PREFIX}{'0' * 32}.pem"
    wrong.write_bytes(keys.cert_pem)
    with pytest.raises(ConfigError, match="not the one it names") as error:
        load_signing_keys(SnsSettings(), tmp_path)
    assert error.value.path == str(wrong)
    wrong.write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match="cannot load a kept signing certificate"):
        load_signing_keys(SnsSettings(), tmp_path)


def test_configured_files_are_used_and_checked(tmp_path: Path) -> None:
    rsa_leaf = trustme.CA().issue_cert("sns.example", key_type=trustme.KeyType.RSA)
    key_file, cert_file = tmp_path / "k.pem", tmp_path / "c.pem"
    rsa_leaf.private_key_pem.write_to_path(str(key_file))
    rsa_leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    settings = SnsSettings(signing_key_file=str(key_file), signing_cert_file=str(cert_file))
    keys = load_signing_keys(settings, tmp_path / "unused")
    assert keys.cert_pem == cert_file.read_bytes()
    assert not (tmp_path / "unused" / CERT_FILE).exists()
    ec_leaf = trustme.CA().issue_cert("sns.example")  # ECDSA: SNS signs with RSA only
    ec_leaf.private_key_pem.write_to_path(str(key_file))
    ec_leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    with pytest.raises(ConfigError, match="RSA"):
        load_signing_keys(settings, tmp_path)


def test_a_certificate_of_another_key_is_refused(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    load_signing_keys(SnsSettings(), one)
    load_signing_keys(SnsSettings(), two)
    settings = SnsSettings(
        signing_key_file=str(one / KEY_FILE), signing_cert_file=str(two / CERT_FILE)
    )
    with pytest.raises(ConfigError, match="does not belong"):
        load_signing_keys(settings, tmp_path)
    with pytest.raises(ConfigError):
        load_signing_keys(
            SnsSettings(signing_key_file=str(tmp_path / "missing"), signing_cert_file="x"),
            tmp_path,
        )


def test_a_certificate_of_a_key_type_cryptography_lacks_is_refused(tmp_path: Path) -> None:
    """An SM2 certificate beside a good RSA key: refused with the file, not a traceback (a
    reload used to end the broker on it)."""
    load_signing_keys(SnsSettings(), tmp_path)  # a good RSA key in tmp_path
    sm2_key, sm2_cert = tmp_path / "sm2.key", tmp_path / "sm2.pem"
    made = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "SM2", "-out", str(sm2_key)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip("this openssl makes no SM2 keys")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-key",
            str(sm2_key),
            "-subj",
            "/CN=x",
            "-days",
            "1",
            "-out",
            str(sm2_cert),
        ],
        capture_output=True,
        check=True,
    )
    settings = SnsSettings(
        signing_key_file=str(tmp_path / KEY_FILE), signing_cert_file=str(sm2_cert)
    )
    with pytest.raises(ConfigError) as error:
        load_signing_keys(settings, tmp_path)
    assert error.value.path == str(sm2_cert)
    assert error.value.reason.startswith("cannot load the signing certificate: ")


def test_settings_refuse_half_configured_keys_and_bad_paths() -> None:
    with pytest.raises(ValueError, match="both"):
        SnsSettings(signing_key_file="k")
    with pytest.raises(ValueError, match=r"\.pem"):
        SnsSettings(signing_cert_path="cert")
    with pytest.raises(ValueError, match="without a path"):
        SnsSettings(signing_cert_url_base="https://x/y")
