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

The balancer's reload runs on a real balancer: a base document made to run here
(:func:`~tests.support.config_fuzz.serving_document`: listeners on 127.0.0.1 port 0, targets
two :class:`~tests.support.targets.TargetServer` on held ports, plus a ``marker`` listener
whose fixed response says which configuration serves) is started, then reloaded with one to
three mutations of it, each by SIGHUP's path (``Daemon.request_reload``) or ``POST /reload``
on the admin listener, and after each the running document again. A reload must, within its
time bound, either apply (the new listeners, and no others, accept; the marker answers the
new message; ``/readyz`` is 200) or be refused by the rule, with the old configuration left
in place and every listener answering a set of requests (default actions, rules, redirects,
forwards to the targets, over TLS for https) as before; nothing but the refusal is logged at
error level. At the end the daemon's tasks are those it had at start, and once it stopped,
the process has the file descriptors it had before (no listener or file left open).

The bugs the properties found are pinned in the plain tests at the end.
``HYPOTHESIS_PROFILE=deep`` runs ten times as many examples.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import socket
import ssl
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from balancer.access_log import AccessLogs
from balancer.app import BalancerApp, open_access_logs
from balancer.cli import SPEC as BALANCER
from balancer.config import BalancerConfig, FixedResponse, HttpListener, HttpsListener
from balancer.peers import check_workers
from broker.app import BrokerApp
from broker.cli import SPEC as BROKER
from broker.config import BrokerConfig
from broker.http_client import HttpClient
from broker.sns_keys import load_signing_keys
from monitoring.configfile import EMPTY_FILE, ConfigError, decode, load
from monitoring.lifecycle import Daemon, DaemonSpec
from monitoring.logging import EventLog
from monitoring.sdnotify import Notifier
from tests.support.config_fuzz import (
    DEEP,
    MARKER_LISTENER,
    Files,
    balancer_document,
    bounded,
    broker_document,
    byte_mutation,
    check_refusal,
    encode,
    get,
    key_paths,
    make_files,
    serving_document,
    tree_mutation,
)
from tests.support.daemons import address
from tests.support.daemons import running as running_daemon
from tests.support.http import read_response, request
from tests.support.targets import Reply, Seen, TargetServer, running_targets

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
    # As BalancerApp.reload does; only inside the fixture directory (the tests run as root).
    if all(files.writable(li.access_log.destination) for li in config.listeners):
        try:
            open_access_logs(logs, config)
        finally:
            logs.close()
    return daemon


class RecordingLog(EventLog):
    """The daemon's log, keeping the fields of every error event (the refusal's file and
    reason: ``Daemon.reload`` logs them as they were raised)."""

    def __init__(self, daemon: str, stream: io.StringIO | None = None) -> None:
        super().__init__(daemon, level="debug", stream=stream or io.StringIO())
        self.errors: list[dict[str, object]] = []

    def error(self, event: str, **fields: object) -> None:
        self.errors.append({"event": event, **fields})
        super().error(event, **fields)


def reload_broker(path: Path, running: Path, data: bytes, document: Any) -> None:
    """A broker running ``running``'s config reloads ``data`` (as SIGHUP makes it): it is
    applied, or refused with the rule's message and the old config left serving."""
    log = RecordingLog(BROKER.name)
    daemon = Daemon(BROKER, decode(running.read_bytes(), BrokerConfig), config_path=path, log=log)
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
    return draw(mutations(draw(st.sampled_from([shipped, rich, rich, empty])), files))


@st.composite
def mutations(draw: st.DrawFn, document: dict[str, Any], files: Files) -> tuple[bytes, Any]:
    """(file bytes, the document they came from): ``document`` after one to three mutations."""
    document = copy.deepcopy(document)
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
# The balancer's reload, on a running balancer.

RELOAD_EXAMPLES = 150 * (10 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1)
# Without the explain phase: it reruns a failing scenario hundreds of times (minutes).
RELOAD_FUZZ = settings(
    FUZZ, max_examples=RELOAD_EXAMPLES, phases=[p for p in Phase if p is not Phase.explain]
)
ANSWER_SECONDS = 5.0  # one request through a listener
SETTLE_SECONDS = 5.0  # connections closed, removed listeners and their targets drained
SCENARIO_SECONDS = 120.0  # a whole example; each reload also has BOUND_SECONDS
TARGET_BODY = b"from a target"
# What every listener of the running balancer is asked, before and after each reload: its
# default action, and requests some rule of the base documents takes (the maintenance fixed
# responses, the /old/* redirect, the canary forward).
QUESTIONS: list[tuple[str, list[tuple[str, str]]]] = [
    ("/", []),
    ("/old/page?maintenance=on&down=yes", [("x-mode", "maintenance")]),
    ("/old/page", [("x-canary", "yes")]),
]
Answer = tuple[int, str, bytes]  # status, Location (the listener's port as {port}), body


async def answer_as_a_target(seen: Seen, server: TargetServer) -> Reply:
    return Reply(200, [("content-type", "text/plain")], TARGET_BODY)


class HeldPortTarget(TargetServer):
    """A target on a socket the module holds open, so that the documents can name its port
    before each example's trio run starts it."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__("target", answer_as_a_target)
        self.sock = sock
        self.port = sock.getsockname()[1]

    async def serve(self, *, task_status: trio.TaskStatus[TargetServer]) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock.dup()))
        task_status.started(self)
        await trio.serve_listeners(self._connection, [listener])


@pytest.fixture(scope="module")
def target_sockets() -> Iterator[list[socket.socket]]:
    held = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    yield held
    for sock in held:
        sock.close()


def safe_to_run(step: tuple[bytes, Any], files: Files) -> bool:
    """Whether every access log the mutated file names may be written (see Files.loggable)."""
    try:
        document = tomllib.loads(step[0].decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return True
    return all(
        files.loggable(get(document, path))
        for path in key_paths(document)
        if path[-1] == "destination"
    )


def open_descriptors() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


async def ask(
    address: tuple[str, int], path: str, headers: list[tuple[str, str]], tls: ssl.SSLContext | None
) -> Answer:
    """One request on a new connection (closed by the balancer after its answer)."""
    host, port = address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    with trio.fail_after(ANSWER_SECONDS):
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_hostname="www.example.com")
        try:
            conn = h11.Connection(h11.CLIENT)
            fields = [("host", "www.example.com"), ("connection", "close"), *headers]
            request = h11.Request(method="GET", target=path, headers=fields)
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            status, head, body = await read_response(conn, stream)
        finally:
            await trio.aclose_forcefully(stream)
    return status, head.get("location", "").replace(f":{port}", ":{port}"), body


def serving(daemon: Daemon[Any]) -> dict[str, list[tuple[str, int]]]:
    """The listeners accepting now (the admin one included) and their addresses."""
    return {li.name: sorted(li.addresses) for li in daemon.frame.listeners}


async def answers(
    daemon: Daemon[BalancerConfig], tls: ssl.SSLContext
) -> dict[tuple[str, str], Answer]:
    """What every listener of the running configuration answers to each of QUESTIONS."""
    found = {}
    addresses = serving(daemon)
    for listener in daemon.config.listeners:
        context = tls if isinstance(listener, HttpsListener) else None
        for path, headers in QUESTIONS:
            found[listener.name, path] = await ask(
                addresses[listener.name][0], path, headers, context
            )
    return found


# A connection attempt in progress (a health check's connect, spread over the first moments
# after a start): transient, so no part of what a reload must leave as it found it.
TRANSIENT_TASKS = ("open_tcp_stream.<locals>.attempt_connect",)


def task_names(task: trio.lowlevel.Task) -> Counter[str]:
    """The names of ``task`` and every task below it (transient ones left out)."""
    names = Counter([task.name])
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            names += task_names(child)
    for name in [n for n in names if n.endswith(TRANSIENT_TASKS)]:
        del names[name]
    return names


async def settled(daemon_task: trio.lowlevel.Task, baseline: Counter[str] | None) -> Counter[str]:
    """The daemon's tasks once no connection is open (and they are ``baseline``, if given)."""
    now: Counter[str] = Counter()
    with trio.move_on_after(SETTLE_SECONDS):
        while True:
            now = task_names(daemon_task)
            idle = not any("_run_handler" in name for name in now)
            if idle and (baseline is None or now == baseline):
                return now
            await trio.sleep(0.01)
    assert baseline is not None, f"connections still open: {now}"
    assert now == baseline, (
        f"tasks left after the reloads: {now - baseline}, gone: {baseline - now}"
    )
    return now


class ReadyNotifier(Notifier):
    """What systemd hears: READY=1 after every reload, with the status "serving" or
    "reload refused: <why>"."""

    def __init__(self) -> None:
        super().__init__(None)
        self.statuses: list[str] = []
        self.done = trio.Event()

    def ready(self, status: str = "") -> bool:
        self.statuses.append(status)
        self.done.set()
        return super().ready(status)


class BalancerUnderReload:
    """A balancer (its Daemon, log and what its running configuration answers), reloaded
    as SIGHUP and POST /reload make it."""

    def __init__(self, path: Path, tls: ssl.SSLContext) -> None:
        self.path, self.tls = path, tls
        self.output = io.StringIO()
        self.log = RecordingLog(BALANCER.name, stream=self.output)
        self.notifier = ReadyNotifier()
        self.daemon = Daemon(
            BALANCER,
            load(path, BalancerConfig),
            config_path=path,
            log=self.log,
            notifier=self.notifier,
        )
        app = self.daemon.app
        assert isinstance(app, BalancerApp)
        self.app = app
        self.expected: dict[tuple[str, str], Answer] = {}
        self.errors_seen = 0

    async def reload(self, data: bytes, via: str) -> str | None:
        """Write ``data`` to the file, reload it ``via`` SIGHUP or POST /reload; None, or
        the refusal (the reply's message, or the one the log says)."""
        self.path.write_bytes(data)
        with trio.fail_after(BOUND_SECONDS):
            if via == "POST /reload":
                refused = await self.post_reload()
            else:  # what the signal forwarder does with a SIGHUP
                self.notifier.done = trio.Event()
                self.daemon.request_reload()
                await self.notifier.done.wait()
                status = self.notifier.statuses[-1]
                refused = status.removeprefix("reload refused: ") if status != "serving" else None
        lines = self.output.getvalue().splitlines()
        errors = [line for line in lines if " level=error " in line]
        new_errors, self.errors_seen = errors[self.errors_seen :], len(errors)
        assert len(new_errors) == (refused is not None), new_errors
        assert all("event=config.reload_refused" in line for line in new_errors), new_errors
        return refused

    async def post_reload(self) -> str | None:
        admin = serving(self.daemon)["admin"][0]
        status, _, body = await request(admin, "POST", "/reload", limit_seconds=BOUND_SECONDS)
        reply = json.loads(body)
        if status == 400:
            assert reply["error"] == "ConfigError", reply
            return str(reply["message"])
        assert (status, reply["reloaded"]) == (200, True), reply
        return None

    async def check_applied(self) -> None:
        """The new configuration serves: every listener it names (and no other) accepts on
        the port it names, and its marker listener answers with the new message."""
        config = load(self.path, BalancerConfig)
        assert self.daemon.config == config
        assert self.app.config is self.daemon.config
        now = serving(self.daemon)
        assert set(now) == {"admin"} | {li.name for li in config.listeners}
        for listener in config.listeners:
            if listener.port:
                assert {port for _, port in now[listener.name]} == {listener.port}
        marker = next((li for li in config.listeners if li.name == MARKER_LISTENER), None)
        if (
            isinstance(marker, HttpListener)
            and not marker.rules
            and isinstance(marker.default_action, FixedResponse)
        ):
            fixed = marker.default_action
            status, _, body = await ask(now[MARKER_LISTENER][0], "/", [], None)
            assert status == fixed.status_code
            if status not in (204, 205):
                assert body == fixed.message_body.encode()
            event("reload applied, marker checked")
        readyz = await ask(now["admin"][0], "/readyz", [], None)
        assert readyz[0] == 200, readyz

    async def check_refused(
        self, refused: str, before: tuple[Any, ...], data: bytes, document: Any
    ) -> None:
        """The rule's message, and the old configuration serving as before."""
        config, snapshot, listeners, addresses = before
        assert self.daemon.config is config
        assert self.app.config is config
        assert self.app.runtime.current is snapshot
        assert {n: sorted(li.addresses) for n, li in self.app.listeners.items()} == listeners
        assert serving(self.daemon) == addresses
        logged = self.log.errors[-1]
        assert logged["event"] == "config.reload_refused"
        error = ConfigError(str(logged["file"]), str(logged["reason"]))
        assert str(error) == refused
        check_refusal(error, self.path, data, document, BalancerConfig)
        assert await answers(self.daemon, self.tls) == self.expected

    def state(self) -> tuple[Any, ...]:
        app = self.app
        listeners = {n: sorted(li.addresses) for n, li in app.listeners.items()}
        return self.daemon.config, app.runtime.current, listeners, serving(self.daemon)


async def reload_a_running_balancer(
    path: Path,
    running_data: bytes,
    steps: list[tuple[tuple[bytes, Any], str]],
    files: Files,
    targets: list[TargetServer],
) -> None:
    """Start a balancer on ``path`` (holding ``running_data``); reload each step's file,
    then the running one again."""
    under = BalancerUnderReload(path, ssl.create_default_context(cafile=files.ca))
    daemon = under.daemon
    async with running_targets(*targets), trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        [daemon_task] = nursery.child_tasks
        under.expected = await answers(daemon, under.tls)
        assert under.expected[MARKER_LISTENER, "/"] == (200, "", b"old")
        baseline = await settled(daemon_task, None)
        for (data, document), via in steps:
            event(f"reload via {via}")
            before = under.state()
            refused = await under.reload(data, via)
            if refused is None:
                event("reload applied")
                await under.check_applied()
            else:
                event("reload refused")
                note(f"reload refused: {refused}")
                await under.check_refused(refused, before, data, document)
            # Back to the running configuration: always applied, and answering as at start.
            assert await under.reload(running_data, via) is None
            assert await answers(daemon, under.tls) == under.expected
        await settled(daemon_task, baseline)
        assert daemon.failure is None
        daemon.request_stop()


@RELOAD_FUZZ
@given(data=st.data())
def test_a_running_balancer_reloads_or_keeps_serving_its_old_config(
    files: Files, target_sockets: list[socket.socket], data: st.DataObject
) -> None:
    targets = [HeldPortTarget(sock) for sock in target_sockets]
    ports = [target.port for target in targets]
    base = data.draw(st.sampled_from(bases("balancer", files)))
    running = serving_document(base, ports, "old")
    reloaded = serving_document(base, ports, "new")
    steps = data.draw(
        st.lists(
            st.tuples(
                mutations(reloaded, files).filter(lambda step: safe_to_run(step, files)),
                st.sampled_from(["SIGHUP", "POST /reload"]),
            ),
            min_size=1,
            max_size=3,
        )
    )
    path = files.root / "balancer-running.toml"
    path.write_bytes(encode(running))
    descriptors = open_descriptors()
    with bounded(SCENARIO_SECONDS):
        trio.run(reload_a_running_balancer, path, encode(running), steps, files, targets)
    # Descriptors this run left open. Not a count: in the whole suite, objects of earlier tests
    # that the garbage collector frees meanwhile close theirs.
    assert open_descriptors() - descriptors == set()


# ---------------------------------------------------------------------------------------------
# The valid documents are valid, and what the properties found.


@pytest.mark.parametrize("daemon", ["broker", "balancer"])
def test_every_base_document_starts(files: Files, daemon: str) -> None:
    for i, document in enumerate(bases(daemon, files)):
        path = files.root / f"base-{daemon}-{i}.toml"
        path.write_bytes(encode(document))
        if not document:  # a file that sets nothing is refused, not read as the defaults
            with pytest.raises(ConfigError, match=re.escape(EMPTY_FILE)):
                load(path, BrokerConfig if daemon == "broker" else BalancerConfig)
            continue
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


def web_listener(message: str, **keys: Any) -> dict[str, Any]:
    """A balancer.toml document: one HTTP listener answering ``message`` (its ``keys`` set)."""
    listener = {
        "name": "web",
        "protocol": "http",
        "host": "127.0.0.1",
        "port": 0,
        "default_action": {"type": "fixed_response", "status_code": 200, "message_body": message},
    }
    return {"admin": {"host": "127.0.0.1", "port": 0}, "listeners": [{**listener, **keys}]}


def reload_while_serving(
    path: Path, running: dict[str, Any], reloaded: dict[str, Any]
) -> tuple[str | None, Answer]:
    """A balancer serving ``running`` reloads ``reloaded``: the refusal (or None), and what
    its listener answers after it."""

    async def scenario() -> tuple[str | None, Answer]:
        async with running_daemon(BALANCER, load(path, BalancerConfig), config_path=path) as daemon:
            await trio.Path(path).write_bytes(encode(reloaded))
            refused = await daemon.reload()
            return refused, await ask(address(daemon, "web"), "/", [], None)

    path.write_bytes(encode(running))
    return trio.run(scenario)


def test_a_reload_whose_listener_cannot_bind_names_the_config_file(files: Files) -> None:
    # Found: a listener the reload could not bind was refused as "<config>: listener 'plain'
    # cannot bind '''127.0.0.1:0: Name or service not known - at `$.listeners[0]`" (its host
    # mutated to "'''127.0.0.1"), naming no file (balancer/app.py BalancerApp._bind). Here
    # the port is taken, which fails the same way on every machine.
    path = files.root / "bind-refused.toml"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        refused, answer = reload_while_serving(
            path, web_listener("old"), web_listener("new", port=port)
        )
    assert refused == (
        f"{path}: listener 'web' cannot bind 127.0.0.1:{port}: Address already in use"
        " - at `$.listeners[0]`"
    )
    assert answer == (200, "", b"old")


def test_a_reload_whose_access_log_cannot_be_opened_names_the_file_and_key(
    files: Files,
) -> None:
    # Found with the bind refusal: the access log's was "<config>: [Errno 21] Is a
    # directory: '...'", naming no key (balancer/app.py open_access_logs).
    path = files.root / "access-log-refused.toml"
    log = {"enabled": True, "destination": files.directory}
    refused, answer = reload_while_serving(
        path, web_listener("old"), web_listener("new", access_log=log)
    )
    assert refused == (
        f"{files.directory}: cannot open the access log of listener 'web': Is a directory"
        " - at `$.listeners[0].access_log.destination`"
    )
    assert answer == (200, "", b"old")


def test_a_reload_with_a_listen_host_that_is_not_ascii_is_refused_and_the_old_config_serves(
    files: Files,
) -> None:
    # Found in CI: a listener host "»" passed the config check, and the reload's bind raised
    # UnicodeError (IDNA) where an OSError was handled; the running balancer died. A listen
    # host is now an IP address or an ASCII DNS name (monitoring/settings.check_host).
    path = files.root / "host-refused.toml"
    refused, answer = reload_while_serving(path, web_listener("old"), web_listener("new", host="»"))
    assert refused == (
        f"{path}: invalid listen host '»': not an IP address or a DNS name - at `$.listeners[0]`"
    )
    assert answer == (200, "", b"old")
