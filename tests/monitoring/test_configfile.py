from __future__ import annotations

import json
import os
import subprocess
import sys

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.config import BalancerConfig
from broker.config import ApiSettings, BrokerConfig
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


def test_an_integer_past_pythons_digit_limit_is_a_syntax_error_not_a_crash():
    text = "[admin]\nport = " + "9" * 4301 + "\n"
    with pytest.raises(ConfigError) as info:
        decode(text.encode(), BrokerConfig, path="b.toml")
    assert str(info.value).startswith("b.toml: TOML syntax error: Exceeds the limit (4300 digits)")
    assert "set_int_max_str_digits" not in str(info.value)  # advice for programmers


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
# Not the API listener's default port: an admin listener on it (same address) is refused when
# the config is built, which hypothesis finds (it tries the literals of the code under test).
admin_ports = st.integers(0, 65535).filter(lambda port: port != ApiSettings().port)
configs = st.builds(
    BrokerConfig,
    admin=st.builds(AdminSettings, host=hosts, port=admin_ports),
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


@pytest.mark.parametrize("text", ["", "\n", "  \t\r\n", "# all commented out\n# port = 1\n"])
def test_a_file_with_no_keys_is_refused_not_read_as_the_defaults(tmp_path, text):
    """A tool that truncates the file before writing it, with a SIGHUP in between: the
    reload took "every default", turning the broker's anonymous access back on."""
    path = tmp_path / "broker.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, BrokerConfig, empty_hint="run without --config for the embedded defaults")
    assert str(info.value) == (
        f"{path}: the file is empty (no keys, only whitespace or comments); "
        "run without --config for the embedded defaults"
    )
    path.write_text(text + "[admin]\n")  # a table with no keys of its own says something
    assert load(path, BrokerConfig) == BrokerConfig()


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    """Windows Notepad writes one; it was "Invalid statement (at line 1, column 1)"."""
    path = tmp_path / "broker.toml"
    path.write_bytes(b"\xef\xbb\xbf[admin]\nport = 1234\n")
    assert load(path, BrokerConfig).admin.port == 1234
    path.write_bytes(b"\xef\xbb\xbf# nothing else\n")
    with pytest.raises(ConfigError, match="the file is empty"):
        load(path, BrokerConfig)


def test_bytes_that_are_not_utf8_are_reported_at_their_line_and_column(tmp_path):
    """It was "'utf-8' codec can't decode byte 0xe9 in position 93", with no line."""
    path = tmp_path / "broker.toml"
    path.write_bytes(b'[admin]\nhost = "127.0.0.1"\n# caf\xc3\xa9 d\xe9j\xe0 vu\n')
    with pytest.raises(ConfigError) as info:
        load(path, BrokerConfig)
    assert info.value.reason == (
        "TOML syntax error: byte 0xe9 is not UTF-8 (at line 3, column 9); save the file as UTF-8"
    )


def test_check_config_on_a_fifo_is_refused_at_once(tmp_path):
    """It blocked forever, waiting for a writer: a FIFO is not a configuration file."""
    fifo = tmp_path / "broker.toml"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "check-config", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        1,
        f"{fifo}: cannot read: not a regular file (a FIFO)\n",
    )


def test_a_directory_is_not_a_regular_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, BrokerConfig)
    assert str(info.value) == f"{tmp_path}: cannot read: not a regular file (a directory)"
