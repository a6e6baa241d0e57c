from __future__ import annotations

import contextlib
import gc
import json
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from broker.app import _refuse_a_store_without_its_key as refuse_a_store_without_its_key
from broker.cli import GC_THRESHOLDS, SPEC, main
from broker.config import BrokerConfig
from broker.model.settings import QueueSettings
from broker.sns_keys import load_signing_keys
from broker.store.sqlite import SqliteStore
from broker.store.sqlite_schema import SCHEMA_VERSION
from monitoring.configfile import ConfigError, load
from monitoring.lifecycle import Daemon
from tests.support.http import request
from tests.support.mutations import inserted
from tests.support.processes import daemon_process
from tests.support.tls import write_pair


def test_check_config_accepts_a_good_file_and_names_the_problem_in_a_bad_one(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text("[admin]\nport = 9999\n")
    assert main(["check-config", str(good)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[admin]\nport = 70000\n")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err == f"{bad}: Expected `int` <= 65535 - at `$.admin.port`\n"


def test_main_collects_the_youngest_generation_less_often(capsys):
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        assert main(["config-schema"]) == 0
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > 700
    finally:
        gc.set_threshold(*saved)


def test_config_schema_is_json(capsys):
    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$ref"] == "#/$defs/BrokerConfig"


def test_console_script_entry_point_exits_1_on_a_bad_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[admin\n")
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    # As every start failure: the event, then one line saying why.
    logged, said = result.stderr.splitlines()
    assert "level=error event=daemon.start_failed daemon=broker" in logged
    assert said.startswith(f"wharf-broker: cannot start: {bad}: TOML syntax error: ")


async def test_daemon_lifecycle_ready_reload_and_stop_with_a_request_in_flight(tmp_path):
    config = tmp_path / "broker.toml"
    config.write_text("[admin]\nport = 0\n[lifecycle]\ngrace_period_seconds = 10\n")
    async with daemon_process("broker", config, tmp_path) as daemon:
        assert await daemon.next_notification() == b"READY=1\nSTATUS=serving"
        # READY came after the bind: the address is already in the log and answers.
        await daemon.wait_log("event=daemon.ready")
        admin = daemon.addresses["admin"]
        assert (await request(admin, target="/readyz"))[0] == 200

        config.write_text('[admin]\nport = 0\n[logging]\nlevel = "debug"\n')
        mark = len(daemon.log_lines)
        daemon.signal(signal.SIGHUP)
        assert (await daemon.next_notification()).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert await daemon.next_notification() == b"READY=1\nSTATUS=serving"

        config.write_text("[admin]\nport = 0\nnot toml at all\n")
        daemon.signal(signal.SIGHUP)
        assert (await daemon.next_notification()).startswith(b"RELOADING=1")
        refused = await daemon.next_notification()
        assert refused.startswith(b"READY=1\nSTATUS=reload refused: ")
        line = await daemon.wait_log("event=config.reload_refused", start=mark)
        assert f"file={config}" in line
        assert "TOML syntax error" in line
        assert (await request(admin, target="/healthz"))[0] == 200

        stream = await trio.open_tcp_stream(*admin)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            await trio.sleep(0.1)
            daemon.signal(signal.SIGTERM)
            assert await daemon.next_notification() == b"STOPPING=1"
            await stream.send_all(b"\r\n")
            reply = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some(4096):
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 ")
    assert daemon.process.returncode == 0
    assert any("event=daemon.stopped" in line for line in daemon.log_lines)


def test_restore_does_not_guess_the_data_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["restore", str(tmp_path / "backup")]) == 2
    assert "say which data directory to restore into: --data-dir DIR" in capsys.readouterr().err
    assert not (tmp_path / "wharf-data").exists()


def test_backup_and_restore_with_an_explicit_data_directory(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["backup", "--data-dir", str(data), str(tmp_path / "b")]) == 2
    assert f"backup failed: {data / 'wharf.sqlite3'}: no store file here" in capsys.readouterr().err
    trio.run(_make_store, data)
    assert main(["backup", "--data-dir", str(data), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert out == (
        f"backed up {data} to {tmp_path / 'b'}: 1 queues, 0 messages, 0 topics, "
        f"0 subscriptions, {(tmp_path / 'b' / 'wharf.sqlite3').stat().st_size} bytes, "
        f"schema version {SCHEMA_VERSION}\n"
    )
    assert main(["restore", "--data-dir", str(tmp_path / "fresh"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"restored {tmp_path / 'b'} into {tmp_path / 'fresh'}: ")
    assert (tmp_path / "fresh" / "wharf.sqlite3").is_file()
    # Nothing was replaced in the fresh directory: no before-restore-* directory, no line.
    assert "replaced" not in out
    assert not list((tmp_path / "fresh").glob("before-restore-*"))
    assert main(["restore", "--data-dir", str(tmp_path / "fresh"), str(tmp_path / "b")]) == 0
    assert "the files it replaced are in " in capsys.readouterr().out
    assert len(list((tmp_path / "fresh").glob("before-restore-*"))) == 1


async def _make_store(data: Path) -> None:
    store = SqliteStore(data)
    await store.open()
    await store.create_queue("q", QueueSettings(), {}, 0)
    await store.aclose()
    (data / "receipt-handle.key").write_bytes(b"k" * 32)  # as the broker's first start makes


# -- check-config reads the files the start reads -------------------------------------------


@pytest.fixture
def pair(tmp_path) -> tuple[str, str, str]:
    """(cert_file, key_file, another certificate's key_file)."""
    ca = trustme.CA()
    good = write_pair(ca, tmp_path, "api", "localhost")
    other = write_pair(ca, tmp_path, "other", "localhost")
    return good.cert_file, good.key_file, other.key_file


def broker_file(tmp_path: Path, extra: str = "", *, storage: str = "") -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(
        "[admin]\nport = 0\n[api]\nport = 0\n"
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n{storage}{extra}'
    )
    return path


def start_error(path: Path) -> str:
    """What the start says: building the broker reads credentials, certificate and keys."""
    with pytest.raises(ConfigError) as error:
        Daemon(SPEC, load(path, BrokerConfig), config_path=path)
    return str(error.value)


@pytest.mark.parametrize(
    ("case", "reason", "where"),
    [
        ("missing-certificate", "No such file or directory", "api.tls.cert_file"),
        (
            "key-of-another-certificate",
            "this key does not match the certificate",
            "api.tls.key_file",
        ),
        ("missing-credentials", "No such file or directory", "auth.credentials_file"),
        ("missing-encryption-keys", "No such file or directory", "storage.key_file"),
    ],
)
def test_check_config_refuses_the_files_the_start_refuses(
    tmp_path, capsys, pair, case, reason, where
):
    cert, key, other_key = pair
    missing = tmp_path / "missing"
    if case == "missing-certificate":
        path = broker_file(tmp_path, f'[api.tls]\ncert_file = "{missing}"\nkey_file = "{key}"\n')
    elif case == "key-of-another-certificate":
        tls = f'[api.tls]\ncert_file = "{cert}"\nkey_file = "{other_key}"\n'
        path = broker_file(tmp_path, tls)
    elif case == "missing-credentials":
        path = broker_file(tmp_path, f'[auth]\ncredentials_file = "{missing}"\n')
    else:
        path = broker_file(tmp_path, storage=f'key_file = "{missing}"\n')
    expected = start_error(path)
    assert reason in expected
    assert expected.endswith(f" - at `$.{where}`")  # the file, the key and the reason
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == f"{expected}\n"


@pytest.mark.parametrize(
    ("case", "reason", "where"),
    [
        ("garbage-key", "{key}: not a PEM private key", "api.tls.key_file"),
        ("truncated-key", "{key}: not a PEM private key", "api.tls.key_file"),
        ("ed25519-key", "{key}: this key does not match the certificate in", "api.tls.key_file"),
        (
            "ca-first",
            "{cert}: the certificate of the key in {key} is number 2 in this file: the server "
            "(leaf) certificate must come first",
            "api.tls.cert_file",
        ),
        (
            "not-linked",
            "{cert}: certificate 2 of the chain did not issue certificate 1",
            "api.tls.cert_file",
        ),
    ],
)
def test_api_tls_errors_name_the_file_at_fault_and_why(tmp_path, capsys, case, reason, where):
    """The key's faults were blamed on the certificate file with OpenSSL's "PEM lib", a CA-first
    chain on the key, and a chain that does not link up was accepted (found by a report-only
    hunt); the balancer's checks (monitoring.certificates) now say which and why."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    cert, key = tmp_path / "api.pem", tmp_path / "api.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    if case == "garbage-key":
        key.write_text("garbage\n")
    elif case == "truncated-key":
        key.write_bytes(key.read_bytes()[:300])
    elif case == "ed25519-key":
        key.write_bytes(
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    elif case == "ca-first":
        cert.write_bytes(ca.cert_pem.bytes() + leaf.cert_chain_pems[0].bytes())
    else:
        stranger = trustme.CA().create_child_ca()
        cert.write_bytes(leaf.cert_chain_pems[0].bytes() + stranger.cert_pem.bytes())
    path = broker_file(tmp_path, f'[api.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n')
    expected = start_error(path)
    assert expected.startswith(reason.format(cert=cert, key=key))
    assert expected.endswith(f" - at `$.{where}`")
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == f"{expected}\n"


def test_check_config_reads_the_sns_signing_key_and_ca_file(tmp_path, capsys, pair):
    cert = pair[0]
    missing = tmp_path / "missing.pem"
    signing = f'[sns]\nsigning_key_file = "{missing}"\nsigning_cert_file = "{cert}"\n'
    path = broker_file(tmp_path, signing)
    with pytest.raises(ConfigError) as error:  # what the start calls, once the store is open
        load_signing_keys(load(path, BrokerConfig).sns, tmp_path / "data")
    assert str(error.value).endswith(" - at `$.sns.signing_key_file`")
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == f"{error.value}\n"
    path = broker_file(tmp_path, f'[sns]\nca_file = "{missing}"\n')
    assert main(["check-config", str(path)]) == 1
    printed = capsys.readouterr().err
    assert printed.startswith(f"{missing}: cannot load the CA file: ")
    assert printed.endswith(" - at `$.sns.ca_file`\n")


def self_signed_rsa(directory: Path, bits: int) -> tuple[Path, Path]:
    """An RSA key of ``bits`` and a self-signed certificate of it, as openssl makes them."""
    key_file, cert_file = directory / f"rsa{bits}.key", directory / f"rsa{bits}.pem"
    request = ["openssl", "req", "-x509", "-newkey", f"rsa:{bits}", "-nodes", "-subj", "/CN=sns"]
    subprocess.run(
        [*request, "-days", "1", "-keyout", str(key_file), "-out", str(cert_file)],
        capture_output=True,
        check=True,
    )
    return key_file, cert_file


def test_check_config_refuses_an_sns_signing_key_under_2048_bits(tmp_path, capsys):
    """A 512-bit key passed (found by a report-only hunt): anyone could forge the
    notifications subscribers verify with it. AWS signs with 2048-bit RSA."""
    for bits in (512, 1024):
        key_file, cert_file = self_signed_rsa(tmp_path, bits)
        signing = f'[sns]\nsigning_key_file = "{key_file}"\nsigning_cert_file = "{cert_file}"\n'
        path = broker_file(tmp_path, signing)
        assert main(["check-config", str(path)]) == 1
        assert capsys.readouterr().err == (
            f"{key_file}: the signing key has {bits} bits; SNS signs with RSA keys of at "
            "least 2048 bits - at `$.sns.signing_key_file`\n"
        )
    key_file, cert_file = self_signed_rsa(tmp_path, 2048)
    signing = f'[sns]\nsigning_key_file = "{key_file}"\nsigning_cert_file = "{cert_file}"\n'
    assert main(["check-config", str(broker_file(tmp_path, signing))]) == 0


def test_check_config_accepts_files_that_load_and_leaves_the_data_directory_alone(
    tmp_path, capsys, pair
):
    cert, key, _ = pair
    path = broker_file(tmp_path, f'[api.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n')
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"
    assert not (tmp_path / "data").exists()  # no store opened, no key generated


def test_a_file_refused_once_the_store_is_open_is_one_cannot_start_line(tmp_path, pair):
    """The SNS signing key and the delivery CA file are read while the broker starts, after
    its store opens: a refusal there is the one line of any start failure, no traceback."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    path = broker_file(tmp_path, f'[sns]\nca_file = "{garbage}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"wharf-broker: cannot start: {garbage}: cannot load the CA file: ")
    )


def _serve_once(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_store_that_cannot_be_opened_is_one_cannot_start_line(tmp_path):
    path = broker_file(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "wharf.sqlite3").write_text("this is not a database, it is a text file\n" * 200)
    result = _serve_once(path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wharf-broker: cannot start: ")
    assert "wharf.sqlite3: cannot open the store: file is not a database" in last


def test_an_emptied_store_in_a_used_data_directory_stops_the_start(tmp_path):
    """SQLite would take the zero-byte file for a new database: every message, silently gone."""
    path = broker_file(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "wharf.sqlite3").write_bytes(b"")
    (data / "receipt-handle.key").write_bytes(b"k" * 32)
    result = _serve_once(path)
    assert result.returncode == 1
    assert "the store file is empty, but this data directory was in use" in result.stderr
    assert (data / "wharf.sqlite3").stat().st_size == 0  # left as it was


def test_a_missing_store_in_a_used_data_directory_stops_the_start(tmp_path):
    path = broker_file(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "receipt-handle.key").write_bytes(b"k" * 32)
    result = _serve_once(path)
    assert result.returncode == 1
    assert "the store file is missing, but this data directory was in use" in result.stderr
    assert not (data / "wharf.sqlite3").exists()


def test_a_store_with_messages_but_no_receipt_handle_key_stops_the_start(tmp_path):
    # A store file put back without its key (copied by hand, the key deleted): a new key
    # would make every receipt handle consumers hold ReceiptHandleIsInvalid.
    path = broker_file(tmp_path)
    data = tmp_path / "data"

    async def fill() -> None:
        store = SqliteStore(data)
        await store.open()
        queue = await store.create_queue("q", QueueSettings(), {}, 0)
        await store.commit([inserted(queue.queue_id, 1, "in flight")])
        await store.aclose()

    trio.run(fill)
    assert not (data / "receipt-handle.key").exists()
    result = _serve_once(path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"wharf-broker: cannot start: {data / 'receipt-handle.key'}: missing")
    assert "holds messages" in last
    assert not (data / "receipt-handle.key").exists()  # not made behind the operator's back


def test_a_store_holding_only_rows_of_deleted_queues_needs_no_receipt_handle_key(tmp_path):
    # Rows of a deleted queue wait to be reclaimed: no receipt handle for them comes back, so
    # a missing key strands nothing and the start may make a new one.
    data = tmp_path / "data"

    async def fill_then_delete() -> None:
        store = SqliteStore(data)
        await store.open()
        queue = await store.create_queue("q", QueueSettings(), {}, 0)
        await store.commit([inserted(queue.queue_id, 1, "of a deleted queue")])
        await store.delete_queue(queue.queue_id, deleted_at=1, forget_before=0)
        await store.aclose()

    trio.run(fill_then_delete)
    with sqlite3.connect(data / "wharf.sqlite3") as connection:
        assert connection.execute("SELECT COUNT(*) FROM messages").fetchone() == (1,)
    refuse_a_store_without_its_key(data, data / "wharf.sqlite3")  # nothing to refuse


def test_a_store_whose_wal_cannot_be_read_stops_the_start_and_keeps_the_wal(tmp_path):
    # Killed before any checkpoint, a store's data is all in its -wal; SQLite reads a WAL
    # with a damaged first frame as no WAL, so the file looks new and empty. Creating the
    # schema would overwrite the WAL: the start stops instead, leaving it as it was.
    path = broker_file(tmp_path)
    live, data = tmp_path / "live", tmp_path / "data"

    async def fill_then_copy_without_closing() -> None:
        store = SqliteStore(live)
        await store.open()
        queue = await store.create_queue("q", QueueSettings(), {}, 0)
        await store.commit([inserted(queue.queue_id, 1, "kept in the WAL")])
        data.mkdir()
        for name in ("wharf.sqlite3", "wharf.sqlite3-wal"):
            (data / name).write_bytes((live / name).read_bytes())
        await store.aclose()

    trio.run(fill_then_copy_without_closing)
    (data / "receipt-handle.key").write_bytes(b"k" * 32)
    wal = data / "wharf.sqlite3-wal"
    with wal.open("r+b") as file:  # the first frame's header: its checksums no longer match
        file.seek(32 + 8)
        file.write(b"\xff" * 16)
    damaged = wal.read_bytes()
    result = _serve_once(path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        "the store file holds no store (is its -wal damaged?), but this data directory"
        in result.stderr
    )
    assert wal.read_bytes() == damaged


def test_a_store_damaged_past_its_first_pages_is_one_cannot_start_line(tmp_path):
    # Opening reads only the first pages; the damage shows while the queues load.
    path = broker_file(tmp_path)
    data = tmp_path / "data"

    async def fill() -> None:
        store = SqliteStore(data)
        await store.open()
        queue = await store.create_queue("q", QueueSettings(), {}, 0)
        for start in range(0, 3_000, 100):
            await store.commit(
                [inserted(queue.queue_id, start + i + 1, "m" * 80) for i in range(100)]
            )
        await store.aclose()

    trio.run(fill)
    (data / "receipt-handle.key").write_bytes(b"k" * 32)  # as in a data directory in use
    store_file = data / "wharf.sqlite3"
    pages = store_file.stat().st_size // 4096
    with store_file.open("r+b") as file:  # four pages of garbage in the middle
        file.seek(pages // 2 * 4096)
        file.write(random.Random(7).randbytes(4 * 4096))
    result = _serve_once(path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wharf-broker: cannot start: ")
    assert "wharf.sqlite3: cannot open the store: " in last


async def test_signals_in_the_last_moments_of_a_stop_do_not_change_its_exit_code(tmp_path):
    # A logrotate SIGHUP, a second SIGTERM: after the drain, until the process is gone.
    config = tmp_path / "broker.toml"
    config.write_text("[api]\nport = 0\n[admin]\nport = 0\n")
    async with daemon_process("broker", config, tmp_path) as daemon:
        await daemon.wait_log("event=daemon.ready")
        daemon.signal(signal.SIGTERM)
        with trio.fail_after(20):
            while daemon.process.returncode is None:  # the signals are the point
                with contextlib.suppress(ProcessLookupError):
                    daemon.signal(signal.SIGHUP)
                    daemon.signal(signal.SIGTERM)
                await trio.sleep(0.002)
    assert daemon.process.returncode == 0
