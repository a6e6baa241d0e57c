"""The files balancer.toml names (stickiness keys, listener certificates and keys) are read
without ever blocking: a FIFO or a device named by mistake, or a file far too large, is
refused at once by ``check-config``, at the start and on reload, naming the file.

``check-config`` runs in a child process under a timeout: a blocking open in this process
would hang the test run instead of failing it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme

from tests.support.http import request
from tests.support.processes import daemon_process
from tests.support.tls import write_pair
from tests.support.unreadable_files import CHECK_CONFIG_TIMEOUT_SECONDS, REASONS, bad_file


def balancer_toml(cert_file: str, key_file: str, sticky_key: str) -> str:
    return f"""
[admin]
port = 0
[stickiness]
key_files = ["{sticky_key}"]

[[listeners]]
name = "tls"
protocol = "https"
host = "127.0.0.1"
port = 0
certificates = [{{ cert_file = "{cert_file}", key_file = "{key_file}" }}]
default_action = {{ type = "fixed_response", status_code = 200 }}
"""


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "balancer.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=CHECK_CONFIG_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.mark.parametrize("kind", ["fifo", "device", "oversize"])
@pytest.mark.parametrize("named", ["stickiness key", "cert_file", "key_file"])
def test_check_config_refuses_a_named_file_that_is_no_regular_file_or_too_large(
    tmp_path, named, kind
):
    good = write_pair(trustme.CA(), tmp_path, "good", "a.example.com")
    sticky = tmp_path / "sticky.key"
    sticky.write_bytes(b"k" * 32)
    files = {"cert_file": good.cert_file, "key_file": good.key_file, "stickiness key": sticky}
    bad = bad_file(tmp_path, kind)
    files[named] = bad
    path = tmp_path / "balancer.toml"
    path.write_text(
        balancer_toml(str(files["cert_file"]), str(files["key_file"]), str(files["stickiness key"]))
    )
    result = check_config(path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}: ")
    assert REASONS[kind] in result.stderr
    at = (
        "$.stickiness.key_files[0]"
        if named == "stickiness key"
        else "$.listeners[0].certificates[0]"
    )
    assert result.stderr.rstrip().endswith(f" - at `{at}`")  # file, key and reason
    assert result.stderr.count("\n") == 1  # one line, no traceback


async def test_a_reload_naming_a_fifo_key_is_refused_and_the_daemon_keeps_serving(tmp_path):
    """The reload froze the event loop in open(): /healthz, every listener and SIGTERM too."""
    path = tmp_path / "balancer.toml"
    plain = (
        '[admin]\nport = 0\n[[listeners]]\nname = "web"\nprotocol = "http"\n'
        'host = "127.0.0.1"\nport = 0\n'
        'default_action = { type = "fixed_response", status_code = 200 }\n'
    )
    path.write_text(plain)
    fifo = tmp_path / "sticky.key"
    os.mkfifo(fifo)
    async with daemon_process("balancer", path, tmp_path) as daemon:
        await daemon.wait_log("event=daemon.ready")
        path.write_text(plain + f'[stickiness]\nkey_files = ["{fifo}"]\n')
        daemon.signal(signal.SIGHUP)
        refused = await daemon.wait_log("event=config.reload_refused")  # fails after 20 s
        assert str(fifo) in refused
        with trio.fail_after(20):
            assert (await request(daemon.addresses["admin"], target="/healthz"))[0] == 200
            assert (await request(daemon.addresses["web"], target="/"))[0] == 200
        daemon.signal(signal.SIGTERM)
