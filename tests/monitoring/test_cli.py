from __future__ import annotations

import pytest

from broker.cli import SPEC
from monitoring.cli import main


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
