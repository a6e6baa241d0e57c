from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from broker.config import BrokerConfig
from monitoring.configfile import ConfigError, decode, load
from tests.support.schema import missing_key_paths, uncommented_key_lines

CONF = Path(__file__).parents[2] / "conf" / "broker.toml"


def test_shipped_file_loads_and_equals_the_defaults_but_for_its_example_queue():
    loaded = load(CONF, BrokerConfig)
    assert [q.name for q in loaded.queues] == ["example"]
    assert msgspec.structs.replace(loaded, queues=[]) == BrokerConfig()


def test_anonymous_access_on_the_network_must_be_asked_for():
    with pytest.raises(ConfigError, match=re.escape("non-loopback address '0.0.0.0'")):
        decode(b'[api]\nhost = "0.0.0.0"\n', BrokerConfig)
    text = b'[api]\nhost = "0.0.0.0"\n[auth]\nallow_anonymous_on_network = true\n'
    assert decode(text, BrokerConfig).auth.anonymous
    with pytest.raises(ConfigError, match=re.escape("needs auth.credentials_file")):
        decode(b"[auth]\nanonymous = false\n", BrokerConfig)


def test_identity_is_checked():
    with pytest.raises(ConfigError, match=re.escape("account_id must be 12 digits - at `$.aws`")):
        decode(b'[aws]\naccount_id = "123"\n', BrokerConfig)
    with pytest.raises(ConfigError, match="not an AWS-style region"):
        decode(b'[aws]\nregion = "mars"\n', BrokerConfig)


def test_every_schema_key_appears_in_the_shipped_file():
    assert missing_key_paths(BrokerConfig, CONF.read_text()) == []


def test_every_key_in_the_shipped_file_has_a_comment_above_it():
    assert uncommented_key_lines(CONF.read_text()) == []


def test_minimal_file_gets_aws_like_defaults():
    config = decode(b"", BrokerConfig)
    assert config.admin.port == 9325
    assert config.lifecycle.grace_period_seconds == 30


def test_errors_name_file_key_path_and_reason():
    with pytest.raises(ConfigError) as info:
        decode(b"[admin]\nport = 70000\n", BrokerConfig, path="conf/broker.toml")
    assert str(info.value) == "conf/broker.toml: Expected `int` <= 65535 - at `$.admin.port`"
