from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from balancer.config import BalancerConfig
from monitoring.configfile import ConfigError, decode, load
from tests.support.schema import key_paths, lookup

CONF = Path(__file__).parents[2] / "conf" / "balancer.toml"


def test_shipped_file_loads():
    config = load(CONF, BalancerConfig)
    assert config.admin.port == 9326


@pytest.mark.parametrize("path", sorted(set(key_paths(BalancerConfig))))
def test_every_schema_key_appears_in_the_shipped_file(path):
    document = tomllib.loads(CONF.read_text())
    assert lookup(document, path), f"{CONF.name} lacks {path}"


def test_every_key_in_the_shipped_file_has_a_comment_above_it():
    lines = CONF.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"line {i + 1} ({line!r}) is not commented"


def test_admin_port_default_differs_from_the_broker():
    assert decode(b"", BalancerConfig).admin.port == 9326


def test_unknown_section_is_rejected_with_its_path():
    with pytest.raises(ConfigError) as info:
        decode(b"[admni]\nport = 1\n", BalancerConfig, path="balancer.toml")
    assert str(info.value) == "balancer.toml: Object contains unknown field `admni`"
