from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from broker.config import BrokerConfig
from monitoring.configfile import ConfigError, decode, load
from tests.support.schema import key_paths, lookup

CONF = Path(__file__).parents[2] / "conf" / "broker.toml"


def test_shipped_file_loads_and_equals_the_defaults():
    assert load(CONF, BrokerConfig) == BrokerConfig()


@pytest.mark.parametrize("path", sorted(set(key_paths(BrokerConfig))))
def test_every_schema_key_appears_in_the_shipped_file(path):
    document = tomllib.loads(CONF.read_text())
    assert lookup(document, path), f"{CONF.name} lacks {path}"


def test_every_key_in_the_shipped_file_has_a_comment_above_it():
    lines = CONF.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"line {i + 1} ({line!r}) is not commented"


def test_minimal_file_gets_aws_like_defaults():
    config = decode(b"", BrokerConfig)
    assert config.admin.port == 9325
    assert config.lifecycle.grace_period_seconds == 30


def test_errors_name_file_key_path_and_reason():
    with pytest.raises(ConfigError) as info:
        decode(b"[admin]\nport = 70000\n", BrokerConfig, path="conf/broker.toml")
    assert str(info.value) == "conf/broker.toml: Expected `int` <= 65535 - at `$.admin.port`"
