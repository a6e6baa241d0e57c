"""Fuzzing config loading of both daemons: a bad file is refused with the file, key and reason.

The rule: "A bad config file names the file, the key and the reason, and a running daemon
keeps its old config." Documents start valid (the shipped conf/*.toml, and richer ones using
every file key: HTTPS certificates, credentials, sealing and stickiness keys, SNS signing, rules,
weighted sticky forwards, declared queues), then get one to three mutations: a wrong-typed
value, a deleted key, an unknown key, a duplicated list entry, a file key pointed at a missing
file, a directory or garbage, a value copied from elsewhere, and raw-byte damage of the TOML
text (truncation, inserted bytes, invalid UTF-8, deep nesting).

Each mutated file goes through what the daemon does with it at start (``load``, then building
the app through :class:`~monitoring.lifecycle.Daemon`, which reads every file the config names,
plus the serve-time steps that read files and write nothing), and for the broker through a real
``Daemon.reload`` of a running configuration, as SIGHUP does. Loading either succeeds or raises
``ConfigError`` whose message passes :func:`tests.support.config_fuzz.check_refusal`; anything
else (TypeError, RecursionError, ValueError, ...) or a load over its time bound fails.

The bugs the properties found are pinned in the plain tests at the end.
``HYPOTHESIS_PROFILE=deep`` runs ten times as many examples.
"""

from __future__ import annotations

import io
import os
import ssl
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from balancer.access_log import AccessLogs
from balancer.cli import SPEC as BALANCER
from balancer.config import BalancerConfig
from balancer.peers import check_workers
from broker.app import BrokerApp
from broker.cli import SPEC as BROKER
from broker.config import BrokerConfig
from broker.http_client import HttpClient
from broker.sns_keys import load_signing_keys
from monitoring.configfile import ConfigError, decode, load
from monitoring.lifecycle import Daemon, DaemonSpec
from monitoring.logging import EventLog
from tests.support.config_fuzz import (
    DEEP,
    Files,
    balancer_document,
    bounded,
    broker_document,
    byte_mutation,
    check_refusal,
    encode,
    make_files,
    tree_mutation,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 150 * (10 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BOUND_SECONDS = 10.0  # one load, start and reload of a file


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return make_files(tmp_path_factory.mktemp("config-fuzz"))


def shipped(name: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / "conf" / name).read_text())


def bases(daemon: str, files: Files) -> list[dict[str, Any]]:
    if daemon == "broker":
        return [shipped("broker.toml"), broker_document(files), {}]
    return [shipped("balancer.toml"), balancer_document(files), {}]


def quiet(spec: DaemonSpec[Any]) -> EventLog:
    return EventLog(spec.name, level="debug", stream=io.StringIO())


def start_broker(path: Path) -> Daemon[BrokerConfig]:
    """What ``wharf-broker serve --config path`` does before binding, and the steps of serve
    that only read files."""
    config = load(path, BrokerConfig)
    daemon = Daemon(BROKER, config, config_path=path, log=quiet(BROKER))
    settings = config.sns
    if settings.signing_key_file:  # without one, serve generates a key: a write, left out
        load_signing_keys(settings, path.parent)
    try:  # as BrokerApp._sns does
        HttpClient(connect_timeout=1.0, response_timeout=1.0, ca_file=settings.ca_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(settings.ca_file, f"cannot load the CA file: {error}") from None
    return daemon


def start_balancer(path: Path, files: Files) -> Daemon[BalancerConfig]:
    """What ``wharf-balancer serve --config path`` does before binding (the supervisor's
    workers check included), and the file-opening step of a reload."""
    config = load(path, BalancerConfig)
    check_workers(config, str(path))
    daemon = Daemon(BALANCER, config, config_path=path, log=quiet(BALANCER))
    logs = AccessLogs()
    try:  # as BalancerApp.reload does; only inside the fixture directory (the tests run as root)
        for listener in config.listeners:
            if files.writable(listener.access_log.destination):
                logs.get(listener.access_log)
    except (ValueError, OSError) as exc:
        raise ConfigError("<config>", str(exc)) from None
    finally:
        logs.close()
    return daemon


class RecordingLog(EventLog):
    """The daemon's log, keeping the fields of every error event (the refusal's file and
    reason: ``Daemon.reload`` logs them as they were raised)."""

    def __init__(self, daemon: str) -> None:
        super().__init__(daemon, level="debug", stream=io.StringIO())
        self.errors: list[dict[str, object]] = []

    def error(self, event: str, **fields: object) -> None:
        self.errors.append({"event": event, **fields})
        super().error(event, **fields)


def reload_broker(path: Path, running: Path, data: bytes, document: Any) -> None:
    """A broker running ``running``'s config reloads ``data`` (as SIGHUP makes it): it is
    applied, or refused with the rule's message and the old config left serving."""
    log = RecordingLog(BROKER.name)
    daemon = Daemon(BROKER, load(running, BrokerConfig), config_path=path, log=log)
    app = daemon.app
    assert isinstance(app, BrokerApp)
    old_config, old_auth = daemon.config, app.authenticator
    old_tls = app.tls.context if app.tls else None
    path.write_bytes(data)
    refused = trio.run(daemon.reload)
    if refused is None:
        event("reloaded")
        assert daemon.config == load(path, BrokerConfig)
        return
    event("reload refused")
    note(f"reload refused: {refused}")
    assert daemon.config is old_config
    assert app.config is old_config
    assert app.authenticator is old_auth
    assert (app.tls.context if app.tls else None) is old_tls
    [logged] = [e for e in log.errors if e["event"] == "config.reload_refused"]
    error = ConfigError(str(logged["file"]), str(logged["reason"]))
    assert str(error) == refused
    check_refusal(error, path, data, document, BrokerConfig)


@st.composite
def mutated(draw: st.DrawFn, daemon: str, files: Files) -> tuple[bytes, Any]:
    """(file bytes, the document they came from) after one to three mutations."""
    shipped, rich, empty = bases(daemon, files)
    document = draw(st.sampled_from([shipped, rich, rich, empty]))
    # Two in three: mutations of the document alone; else raw bytes too (mostly syntax errors).
    tree, raw = draw(
        st.tuples(st.integers(1, 3), st.just(0))
        | st.tuples(st.integers(1, 3), st.just(0))
        | st.tuples(st.integers(0, 1), st.integers(1, 2))
    )
    for _ in range(tree):
        note(draw(tree_mutation(document, files)))
    data = encode(document)
    for _ in range(raw):
        data = draw(byte_mutation(data))
        note(f"bytes: {data[:300]!r}...")
    # A garbage file a file key may now point at: its contents drawn too.
    Path(files.garbage).write_bytes(draw(st.binary(max_size=64)))
    return data, document


def outcome(
    start: Any, path: Path, data: bytes, document: Any, schema: type[msgspec.Struct]
) -> None:
    try:
        with bounded(BOUND_SECONDS):
            start()
    except ConfigError as error:
        note(f"refused: {error}")
        event(f"start refused: {kind(error, path)}")
        check_refusal(error, path, data, document, schema)
    else:
        event("started")


def kind(error: ConfigError, path: Path) -> str:
    """The kind of a refusal, for hypothesis' statistics."""
    if error.path != str(path):
        return "a file it names"
    return error.reason.split(":")[0][:40] if "syntax" in error.reason else "a value"


@FUZZ
@given(data=st.data())
def test_broker_config_is_loaded_or_refused_by_the_rule(files: Files, data: st.DataObject) -> None:
    raw, document = data.draw(mutated("broker", files))
    path = files.root / "broker.toml"
    path.write_bytes(raw)
    outcome(lambda: start_broker(path), path, raw, document, BrokerConfig)
    running = files.root / "broker-running.toml"
    running.write_bytes(encode(data.draw(st.sampled_from(bases("broker", files)))))
    with bounded(BOUND_SECONDS):
        reload_broker(path, running, raw, document)


@FUZZ
@given(data=st.data())
def test_balancer_config_is_loaded_or_refused_by_the_rule(
    files: Files, data: st.DataObject
) -> None:
    raw, document = data.draw(mutated("balancer", files))
    path = files.root / "balancer.toml"
    path.write_bytes(raw)
    outcome(lambda: start_balancer(path, files), path, raw, document, BalancerConfig)


# ---------------------------------------------------------------------------------------------
# The valid documents are valid, and what the properties found.


@pytest.mark.parametrize("daemon", ["broker", "balancer"])
def test_every_base_document_starts(files: Files, daemon: str) -> None:
    for i, document in enumerate(bases(daemon, files)):
        path = files.root / f"base-{daemon}-{i}.toml"
        path.write_bytes(encode(document))
        if daemon == "broker":
            start_broker(path)
        else:
            start_balancer(path, files)


@pytest.mark.parametrize("schema", [BrokerConfig, BalancerConfig])
def test_deep_nesting_is_a_syntax_error_not_a_recursion_error(schema: type[Any]) -> None:
    # Found: tomllib parses nested arrays and inline tables by recursion, and msgspec let its
    # RecursionError through (monitoring/configfile.py decode).
    for text in [DEEP, b"x = " + b"{a = " * 3000 + b"}" * 3000]:
        with pytest.raises(ConfigError) as info:
            decode(text, schema, path="deep.toml")
        assert str(info.value) == (
            "deep.toml: TOML syntax error: arrays or tables nested too deeply"
        )


NUL_PATHS = [
    ("broker", ["api", "tls", "cert_file"]),
    ("broker", ["api", "tls", "key_file"]),
    ("broker", ["auth", "credentials_file"]),
    ("broker", ["storage", "key_file"]),
    ("broker", ["sns", "signing_key_file"]),
    ("broker", ["sns", "ca_file"]),
    ("balancer", ["listeners", 1, "certificates", 0, "cert_file"]),
    ("balancer", ["listeners", 0, "access_log", "destination"]),
    ("balancer", ["stickiness", "key_files", 0]),
    ("balancer", ["state_dir"]),
]


@pytest.mark.parametrize(("daemon", "key"), NUL_PATHS)
def test_a_nul_in_a_file_path_is_refused_with_its_key(
    files: Files, daemon: str, key: list[Any]
) -> None:
    # Found: open() and ssl refuse a path with a NUL with ValueError ("embedded null byte"),
    # which escaped the start and the reload (broker/config.py, balancer/config.py: FilePath).
    document = bases(daemon, files)[1]
    parent = document
    for part in key[:-1]:
        parent = parent[part]
    parent[key[-1]] = files.missing + "\x00.pem"
    path = files.root / f"nul-{daemon}.toml"
    path.write_bytes(encode(document))
    start = start_broker if daemon == "broker" else lambda p: start_balancer(p, files)
    with pytest.raises(ConfigError) as info:
        start(path)
    where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key)
    assert str(info.value) == (
        f"{path}: Expected `str` matching regex '^[^\\\\x00]*$' - at `${where}`"
    )


def test_an_empty_stickiness_key_file_name_is_refused_with_its_key(files: Files) -> None:
    # Found: "" read the working directory, refused as ": cannot read stickiness key: Is a
    # directory", naming neither file nor key (balancer/config.py StickinessKeys.key_files).
    document = balancer_document(files)
    document["stickiness"]["key_files"] = [files.sticky1, ""]
    path = files.root / "empty-key-file.toml"
    path.write_bytes(encode(document))
    with pytest.raises(ConfigError) as info:
        start_balancer(path, files)
    assert str(info.value) == (
        f"{path}: Expected `str` of length >= 1 - at `$.stickiness.key_files[1]`"
    )
