from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)

from balancer.cli import SPEC, main
from balancer.config import BalancerConfig
from monitoring.configfile import ConfigError, load
from monitoring.lifecycle import Daemon
from tests.support.http import request
from tests.support.processes import daemon_process
from tests.support.tls import write_pair


def test_check_config(tmp_path, capsys):
    bad = tmp_path / "balancer.toml"
    bad.write_text("[lifecycle]\ngrace_period_seconds = -1\n")
    assert main(["check-config", str(bad)]) == 1
    assert capsys.readouterr().err == (
        f"{bad}: Expected `float` >= 0.0 - at `$.lifecycle.grace_period_seconds`\n"
    )


def test_check_config_names_the_file_key_and_reason_of_a_redirect_loop(tmp_path, capsys):
    looping = tmp_path / "balancer.toml"
    looping.write_text(
        '[[listeners]]\nname = "web"\nprotocol = "http"\nport = 8080\n'
        'default_action = { type = "redirect", port = "8080", status_code = "HTTP_301" }\n'
    )
    assert main(["check-config", str(looping)]) == 1
    assert capsys.readouterr().err == (
        f"{looping}: default_action: a redirect must change at least one of protocol, host, "
        "port, path (AWS), or it loops: port 8080 is this http listener's own and the other "
        "parts keep the request's - at `$.listeners[0]`\n"
    )


@pytest.mark.parametrize(
    ("action_type", "reason"),
    [
        (
            "authenticate-oidc",
            "action type 'authenticate-oidc' is not supported: wharf-balancer has none of "
            "ALB's authenticate actions (authenticate-oidc, authenticate-cognito); "
            "authenticate users in the application or in a proxy behind the balancer",
        ),
        ("fixed-response", "action type 'fixed-response' is written 'fixed_response' here"),
        ("weighted-forward", "unknown action type 'weighted-forward'"),
    ],
)
def test_check_config_says_which_action_types_there_are(tmp_path, capsys, action_type, reason):
    """It said "Invalid value 'authenticate-oidc'", naming no alternative, for ALB's
    authentication actions and ALB's own spelling of fixed-response."""
    path = tmp_path / "balancer.toml"
    path.write_text(
        '[[listeners]]\nname = "web"\nprotocol = "http"\nport = 8080\n'
        'default_action = { type = "fixed_response", status_code = 404 }\n'
        "[[listeners.rules]]\npriority = 1\nconditions.path_pattern = ['/login*']\n"
        f'action = {{ type = "{action_type}" }}\n'
    )
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: {reason}; the action types are forward, redirect, fixed_response"
        " - at `$.listeners[0].rules[0].action.type`\n"
    )


def test_other_decoding_errors_keep_msgspecs_words(tmp_path, capsys):
    path = tmp_path / "balancer.toml"
    path.write_text(
        '[[listeners]]\nname = "web"\nprotocol = "http"\nport = 8080\n'
        'default_action = { type = "redirect", status_code = "HTTP_308", host = "a.b" }\n'
    )
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: Invalid enum value 'HTTP_308' - at `$.listeners[0].default_action.status_code`\n"
    )


async def test_serves_admin_and_stops_on_sigterm(tmp_path):
    config = tmp_path / "balancer.toml"
    config.write_text("[admin]\nport = 0\n")
    async with daemon_process("balancer", config, tmp_path) as daemon:
        assert await daemon.next_notification() == b"READY=1\nSTATUS=serving"
        await daemon.wait_log("event=daemon.ready")
        assert (await request(daemon.addresses["admin"], target="/healthz"))[0] == 200
        daemon.signal(signal.SIGTERM)
        assert await daemon.next_notification() == b"STOPPING=1"
    assert daemon.process.returncode == 0


# -- check-config reads the files the start reads -------------------------------------------


def https_config(cert_file: str, key_file: str, *, key_files: str = "", workers: int = 1) -> str:
    return f"""
workers = {workers}
[admin]
port = 19501
[stickiness]
key_files = [{key_files}]

[[listeners]]
name = "tls"
protocol = "https"
host = "127.0.0.1"
port = 0
certificates = [{{ cert_file = "{cert_file}", key_file = "{key_file}" }}]
default_action = {{ type = "fixed_response", status_code = 200 }}
"""


def start_error(path: Path) -> str:
    """What the start says about ``path``: building the daemon reads its files."""
    with pytest.raises(ConfigError) as error:
        Daemon(SPEC, load(path, BalancerConfig), config_path=path)
    return str(error.value)


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    ca = trustme.CA()
    good = write_pair(ca, tmp_path, "good", "a.example.com")
    other = write_pair(ca, tmp_path, "other", "b.example.com")
    key = load_pem_private_key(Path(good.key_file).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"passphrase"))
    )
    sticky = tmp_path / "sticky.key"
    sticky.write_bytes(b"k" * 32)
    return {
        "cert": good.cert_file,
        "key": good.key_file,
        "other_key": other.key_file,
        "encrypted_key": str(encrypted),
        "sticky": str(sticky),
        "missing": str(tmp_path / "missing.pem"),
    }


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing-certificate", "cannot read: No such file or directory"),
        ("key-of-another-certificate", "this key does not match the certificate in"),
        ("encrypted-key", "the private key is encrypted"),
        (
            "missing-stickiness-key",
            "cannot read stickiness key: No such file or directory"
            " - at `$.stickiness.key_files[0]`",
        ),
        (
            "short-stickiness-key",
            "a stickiness key needs at least 16 bytes - at `$.stickiness.key_files[0]`",
        ),
    ],
)
def test_check_config_refuses_the_files_the_start_refuses_with_its_message(
    tmp_path, capsys, files, case, reason
):
    cert, key, key_files = files["cert"], files["key"], f'"{files["sticky"]}"'
    if case == "missing-certificate":
        cert = files["missing"]
    elif case == "key-of-another-certificate":
        key = files["other_key"]
    elif case == "encrypted-key":
        key = files["encrypted_key"]
    elif case == "missing-stickiness-key":
        key_files = f'"{files["missing"]}"'
    else:
        short = tmp_path / "short.key"
        short.write_bytes(b"k" * 8)
        key_files = f'"{short}"'
    path = tmp_path / "balancer.toml"
    path.write_text(https_config(cert, key, key_files=key_files))
    expected = start_error(path)
    assert reason in expected
    assert main(["check-config", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"{expected}\n"
    assert captured.out == ""


def test_check_config_accepts_files_that_load_and_writes_nothing(tmp_path, capsys, files):
    path = tmp_path / "balancer.toml"
    log = tmp_path / "access.log"
    path.write_text(
        https_config(files["cert"], files["key"], key_files=f'"{files["sticky"]}"')
        + f'[listeners.access_log]\nenabled = true\ndestination = "{log}"\n'
    )
    before = sorted(tmp_path.iterdir())
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"
    assert sorted(tmp_path.iterdir()) == before  # the access log is not created


def test_check_config_refuses_what_workers_cannot_share(tmp_path, capsys, files):
    path = tmp_path / "balancer.toml"
    path.write_text(https_config(files["cert"], files["key"], workers=2))
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: workers = 2 needs a fixed port - at `$.listeners[0].port`\n"
    )


def test_the_console_command_checks_the_certificates(tmp_path, files):
    path = tmp_path / "balancer.toml"
    path.write_text(https_config(files["missing"], files["key"]))
    result = subprocess.run(
        [sys.executable, "-m", "balancer.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"{files['missing']}: cannot read: No such file or directory"
        " - at `$.listeners[0].certificates[0]`\n"
    )
    assert result.stdout == ""
