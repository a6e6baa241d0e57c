"""The PEM files broker.toml names (``api.tls`` certificate and key, the SNS signing key and
certificate) are read without ever blocking: a FIFO or a device named by mistake, or a file
far too large, is refused at once by ``check-config`` (and so at the start and on reload),
naming the file.

``check-config`` runs in a child process under a timeout: a blocking open in this process
would hang the test run instead of failing it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.support.unreadable_files import CHECK_CONFIG_TIMEOUT_SECONDS, REASONS, bad_file


def named_files(tmp_path: Path) -> dict[str, str]:
    """Good files for every key the tests replace, RSA so that SNS can sign with them."""
    leaf = trustme.CA().issue_cert("localhost", key_type=trustme.KeyType.RSA)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    return {
        "api.tls.cert_file": str(cert_file),
        "api.tls.key_file": str(key_file),
        "sns.signing_key_file": str(key_file),
        "sns.signing_cert_file": str(cert_file),
    }


def broker_toml(tmp_path: Path, files: dict[str, str], named: str) -> str:
    if named.startswith("api."):
        section = (
            f'[api.tls]\ncert_file = "{files["api.tls.cert_file"]}"\n'
            f'key_file = "{files["api.tls.key_file"]}"\n'
        )
    else:
        section = (
            f'[sns]\nsigning_key_file = "{files["sns.signing_key_file"]}"\n'
            f'signing_cert_file = "{files["sns.signing_cert_file"]}"\n'
        )
    return (
        f'[admin]\nport = 0\n[api]\nport = 0\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        + section
    )


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=CHECK_CONFIG_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.mark.parametrize("kind", ["fifo", "device", "oversize"])
@pytest.mark.parametrize(
    "named",
    ["api.tls.cert_file", "api.tls.key_file", "sns.signing_key_file", "sns.signing_cert_file"],
)
def test_check_config_refuses_a_named_file_that_is_no_regular_file_or_too_large(
    tmp_path, named, kind
):
    files = named_files(tmp_path)
    bad = bad_file(tmp_path, kind)
    files[named] = bad
    path = tmp_path / "broker.toml"
    path.write_text(broker_toml(tmp_path, files, named))
    result = check_config(path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}: ")
    assert REASONS[kind] in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_check_config_refuses_a_delivery_ca_file_that_is_no_regular_file(tmp_path, kind):
    bad = bad_file(tmp_path, kind)
    path = tmp_path / "broker.toml"
    path.write_text(
        f'[admin]\nport = 0\n[api]\nport = 0\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[sns]\nca_file = "{bad}"\n'
    )
    result = check_config(path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}: cannot load the CA file: ")
    assert REASONS[kind] in result.stderr
