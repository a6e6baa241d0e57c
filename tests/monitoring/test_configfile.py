from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.config import BalancerConfig
from broker.config import BrokerConfig
from monitoring.configfile import ConfigError, decode, json_schema, load
from monitoring.settings import AdminSettings, LifecycleSettings, LoggingSettings


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[admin]\nprot = 1\n", "Object contains unknown field `prot` - at `$.admin`"),
        ('[admin]\nport = "9325"\n', "Expected `int`, got `str` - at `$.admin.port`"),
        ("[admin]\nport = -1\n", "Expected `int` >= 0 - at `$.admin.port`"),
        (
            "[lifecycle]\ngrace_period_seconds = 4000\n",
            "Expected `float` <= 3600.0 - at `$.lifecycle.grace_period_seconds`",
        ),
        ('[logging]\nlevel = "loud"\n', "Invalid enum value 'loud' - at `$.logging.level`"),
        (
            '[admin]\nhost = "a b"\n',
            "invalid listen host 'a b': not an IP address or a DNS name - at `$.admin`",
        ),
    ],
)
def test_each_kind_of_bad_value_names_path_and_reason(text, reason):
    with pytest.raises(ConfigError) as info:
        decode(text.encode(), BrokerConfig, path="/etc/wharf/broker.toml")
    assert str(info.value) == f"/etc/wharf/broker.toml: {reason}"
    assert info.value.path == "/etc/wharf/broker.toml"


def test_toml_syntax_error_names_the_line():
    with pytest.raises(ConfigError) as info:
        decode(b"[admin]\nport = \n", BrokerConfig, path="b.toml")
    assert str(info.value).startswith("b.toml: TOML syntax error: ")
    assert "line 2" in str(info.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.toml", BrokerConfig)
    assert str(info.value) == f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"


def test_json_schema_describes_the_sections():
    schema = json.loads(json_schema(BrokerConfig))
    defs = schema["$defs"]
    assert defs["AdminSettings"]["properties"]["port"]["maximum"] == 65535
    assert defs["AdminSettings"]["additionalProperties"] is False
    # The balancer's admin section has its own default port, which the schema says.
    balancer = json.loads(json_schema(BalancerConfig))["$defs"]["BalancerAdminSettings"]
    assert balancer["properties"]["port"]["default"] == 9326


hosts = st.sampled_from(["127.0.0.1", "::1", "0.0.0.0", "localhost", "broker.internal"])
configs = st.builds(
    BrokerConfig,
    admin=st.builds(AdminSettings, host=hosts, port=st.integers(0, 65535)),
    logging=st.builds(
        LoggingSettings, level=st.sampled_from(["debug", "info", "warning", "error"])
    ),
    lifecycle=st.builds(
        LifecycleSettings,
        grace_period_seconds=st.floats(0, 3600, allow_nan=False, allow_infinity=False),
    ),
)


@given(configs)
def test_round_trip_through_toml(config):
    assert decode(msgspec.toml.encode(config), BrokerConfig) == config


@given(st.integers().filter(lambda p: not 0 <= p <= 65535))
def test_any_out_of_range_port_is_refused_with_its_path(port):
    with pytest.raises(ConfigError, match=r"at `\$\.admin\.port`"):
        decode(f"[admin]\nport = {port}\n".encode(), BrokerConfig)
