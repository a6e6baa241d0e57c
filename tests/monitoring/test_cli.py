from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli import SPEC
from broker.config import BrokerConfig
from monitoring.cli import Command, main
from monitoring.configfile import ConfigError


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(SPEC, ["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"wharf-broker {SPEC.version}\n"


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(SPEC, ["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_missing_config_file_exits_1(tmp_path, capsys):
    assert main(SPEC, ["serve", "--config", str(tmp_path / "nope.toml")]) == 1
    assert "nope.toml: cannot read: No such file or directory" in capsys.readouterr().err


def test_a_daemon_command_gets_its_arguments_and_the_loaded_config(tmp_path, capsys):
    config = tmp_path / "broker.toml"
    config.write_text('[storage]\ndata_dir = "/somewhere"\n')
    seen = []

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target")

    def run(arguments: argparse.Namespace, loaded: BrokerConfig) -> int:
        seen.append((arguments.target, loaded.storage.data_dir))
        return 7

    commands = [Command("poke", "poke something", add_arguments, run)]
    assert main(SPEC, ["poke", "--config", str(config), "there"], commands) == 7
    assert main(SPEC, ["poke", "here"], commands) == 7  # built-in defaults without --config
    assert seen == [("there", "/somewhere"), ("here", "")]
    config.write_text("[storage\n")
    assert main(SPEC, ["poke", "--config", str(config), "x"], commands) == 1  # bad file
    assert "TOML syntax error" in capsys.readouterr().err


def test_a_daemon_that_cannot_start_says_why_in_one_line(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "broker.toml"
        config.write_text(
            f'[api]\nport = {port}\n[admin]\nport = 0\n[storage]\ndata_dir = "{tmp_path}"\n'
        )
        assert main(SPEC, ["serve", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.endswith(
        f"wharf-broker: cannot start: cannot bind 127.0.0.1:{port}: Address already in use\n"
    )
    assert "Traceback" not in err
    assert "event=daemon.start_failed" in err


def notifications(sock: socket.socket) -> list[bytes]:
    received = []
    while True:
        try:
            received.append(sock.recv(4096, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return received


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock


def test_a_file_the_app_cannot_read_stops_the_start_in_one_line(tmp_path, capsys, notify_socket):
    missing = tmp_path / "credentials.toml"
    config = tmp_path / "broker.toml"
    config.write_text(f'[admin]\nport = 0\n[auth]\ncredentials_file = "{missing}"\n')
    assert main(SPEC, ["serve", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    reason = f"{missing}: cannot read: No such file or directory - at `$.auth.credentials_file`"
    assert err.endswith(f"wharf-broker: cannot start: {reason}\n")
    assert "event=daemon.start_failed" in err
    # A supervisor (balancer workers) or systemd learns why from the STATUS.
    assert notifications(notify_socket) == [f"STATUS=cannot start: {reason}".encode()]


def test_a_start_failure_at_a_path_that_is_not_utf8_is_reported_not_raised(
    tmp_path, capsys, notify_socket
):
    """A non-UTF-8 byte in the config's path reaches the reason as a surrogate: it was
    encoded strictly for the status, and a traceback followed the one line."""
    config = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff.toml")
    with open(config, "w") as file:
        file.write('[admin]\nport = "not a port"\n')
    assert main(SPEC, ["serve", "--config", config]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "Expected `int`" in err
    [status] = notifications(notify_socket)
    assert status.startswith(b"STATUS=cannot start: ")
    assert b"bad\\udcff.toml" in status


def test_a_start_failure_is_sent_as_the_status(tmp_path, capsys, notify_socket):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "broker.toml"
        config.write_text(
            f'[api]\nport = {port}\n[admin]\nport = 0\n[storage]\ndata_dir = "{tmp_path}"\n'
        )
        assert main(SPEC, ["serve", "--config", str(config)]) == 1
    reason = f"cannot bind 127.0.0.1:{port}: Address already in use"
    assert capsys.readouterr().err.endswith(f"wharf-broker: cannot start: {reason}\n")
    assert notifications(notify_socket) == [f"STATUS=cannot start: {reason}".encode()]


def test_check_config_runs_the_daemons_file_check_after_the_file_decoded(tmp_path, capsys):
    config = tmp_path / "broker.toml"
    config.write_text("[admin]\nport = 9999\n")
    seen = []

    def check(loaded: BrokerConfig, path: Path) -> None:
        seen.append((loaded.admin.port, path))
        raise ConfigError("/etc/wharf/key.pem", "cannot read: No such file or directory")

    assert main(SPEC, ["check-config", str(config)], check=check) == 1
    assert seen == [(9999, config)]
    captured = capsys.readouterr()
    assert captured.err == "/etc/wharf/key.pem: cannot read: No such file or directory\n"
    assert captured.out == ""
    config.write_text("[admin\n")  # a file that does not decode is reported before any check
    assert main(SPEC, ["check-config", str(config)], check=check) == 1
    assert seen == [(9999, config)]
    assert "TOML syntax error" in capsys.readouterr().err
    config.write_text("[admin]\nport = 9999\n")
    assert main(SPEC, ["check-config", str(config)], check=lambda c, p: None) == 0
    assert capsys.readouterr().out == f"{config}: ok\n"


def test_a_config_file_that_does_not_load_is_a_start_failure_like_any_other(
    tmp_path, capsys, notify_socket
):
    """It printed the bare ``FILE: reason``: no ``cannot start:`` and no log event."""
    config = tmp_path / "broker.toml"
    config.write_text("[admin]\nport = 70000\n")
    reason = f"{config}: Expected `int` <= 65535 - at `$.admin.port`"
    assert main(SPEC, ["serve", "--config", str(config)]) == 1
    logged, said = capsys.readouterr().err.splitlines()
    assert "level=error event=daemon.start_failed daemon=broker" in logged
    assert f'reason="{reason}"' in logged
    assert said == f"wharf-broker: cannot start: {reason}"
    assert notifications(notify_socket) == [f"STATUS=cannot start: {reason}".encode()]
    # check-config keeps its own output: the message alone.
    assert main(SPEC, ["check-config", str(config)]) == 1
    assert capsys.readouterr().err == f"{reason}\n"


def test_an_emptied_config_file_stops_the_start_instead_of_serving_the_defaults(tmp_path):
    """A file truncated by an editor or a config-management tool started the broker on its
    embedded (anonymous) defaults. A subprocess: on the defaults, it would serve on."""
    config = tmp_path / "broker.toml"
    config.write_text("# truncated by an editor\n")
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,  # the defaults' data directory, ./wharf-data, stays in it
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"wharf-broker: cannot start: {config}: the file is empty (no keys, only whitespace "
        "or comments); run without --config for the embedded defaults"
    )


def test_a_supervised_worker_that_cannot_start_leaves_the_line_to_its_supervisor(
    tmp_path, capsys, notify_socket
):
    """With ``workers = 2`` the worker printed the line and its supervisor printed it again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "broker.toml"
        config.write_text(
            f'[api]\nport = {port}\n[admin]\nport = 0\n[storage]\ndata_dir = "{tmp_path}"\n'
        )
        assert main(SPEC, ["serve", "--config", str(config)], supervised=True) == 1
    reason = f"cannot bind 127.0.0.1:{port}: Address already in use"
    err = capsys.readouterr().err
    assert "cannot start:" not in err.replace("event=daemon.start_failed", "")
    assert "event=daemon.start_failed" in err  # its log line stays, for the journal
    assert notifications(notify_socket) == [f"STATUS=cannot start: {reason}".encode()]
