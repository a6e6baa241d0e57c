from __future__ import annotations

import argparse
import socket

import pytest

from broker.cli import SPEC
from broker.config import BrokerConfig
from monitoring.cli import Command, main


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
