"""``backup`` and ``restore`` of a data directory: what they copy, move aside and refuse."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from botocore.exceptions import ClientError

from broker import backup as broker_backup
from broker.app import RESTORING_DIR
from broker.backup import KEY_FILES, backup, outside_files, restore
from broker.config import AuthSettings, BrokerConfig, StorageSettings
from broker.model.settings import QueueSettings
from broker.model.sns_mutations import SubscriptionDeleted, SubscriptionSaved
from broker.model.topics import TopicSettings
from broker.sns_keys import ARCHIVE_PREFIX as SNS_KEPT
from broker.store.base import StoreError
from broker.store.lock import LOCK_FILE, DataDirectoryInUse, DataDirectoryLock
from broker.store.sqlite import FILE_NAME, SqliteStore
from broker.store.sqlite_backup import RESTORED_SEQ_GAP
from broker.store.sqlite_schema import MIGRATIONS
from broker.store.sqlite_writer import SqliteWriter
from tests.broker.store.test_base import inserted
from tests.broker.store.test_sqlite_sns import subscription
from tests.support.broker import BrokerThread, broker_config


async def make_store(data_dir: Path, bodies: list[str]) -> None:
    store = SqliteStore(data_dir)
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    await store.commit([inserted(queue.queue_id, seq, b) for seq, b in enumerate(bodies, 1)])
    await store.aclose()
    for name in KEY_FILES:
        (data_dir / name).write_bytes(f"{name} of {data_dir.name}".encode())


async def bodies_in(data_dir: Path) -> list[str]:
    store = SqliteStore(data_dir)
    await store.open()
    try:
        (loaded,) = await store.load()
        seqs = [m.seq for m in loaded.messages]
        return [m.body for m in await store.read_messages(loaded.record.queue_id, seqs)]
    finally:
        await store.aclose()


async def test_backup_then_restore_brings_the_store_and_keys_back(tmp_path: Path):
    old, new = tmp_path / "old", tmp_path / "new"
    await make_store(old, ["a", "b"])
    summary = backup(old, tmp_path / "backup")
    assert (summary.queues, summary.messages) == (1, 2)
    copied = tmp_path / "backup"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o700
    assert stat.S_IMODE((copied / "receipt-handle.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((copied / "sns-signing.key").stat().st_mode) == 0o600

    await make_store(new, ["other"])
    (new / f"{FILE_NAME}-wal").write_bytes(b"a stale WAL must not meet the restored file")
    restored, aside = restore(new, copied, now=0)
    assert restored == summary
    assert aside == new / "before-restore-19700101T000000Z"
    assert await bodies_in(new) == ["a", "b"]
    for name in KEY_FILES:
        assert (new / name).read_bytes() == f"{name} of old".encode()
        assert (aside / name).read_bytes() == f"{name} of new".encode()  # nothing is deleted
    assert (aside / f"{FILE_NAME}-wal").exists()
    assert await bodies_in(aside) == ["other"]


async def test_a_restore_from_a_store_with_a_wal_brings_back_what_the_wal_holds(
    tmp_path: Path, monkeypatch
):
    """A before-restore-* directory, or a copy of a data directory after a crash, has its
    last commits in the store's -wal: the restore copied the main file alone, and lost them
    while its summary counted them (found by a report-only hunt)."""
    monkeypatch.setattr(SqliteWriter, "_checkpoint", lambda self, connection: None)
    data, crashed = tmp_path / "data", tmp_path / "crashed"
    store = SqliteStore(data)
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    await store.commit([inserted(queue.queue_id, seq, f"m{seq}") for seq in range(1, 201)])
    # A cold copy taken while the broker runs is what a kill leaves: the commits in the WAL.
    crashed.mkdir()
    for name in (FILE_NAME, f"{FILE_NAME}-wal"):
        shutil.copyfile(data / name, crashed / name)
    await store.aclose()
    (crashed / "receipt-handle.key").write_bytes(b"k" * 32)
    assert (crashed / f"{FILE_NAME}-wal").stat().st_size > 0
    source_files = {
        p.name: hashlib.sha256(p.read_bytes()).digest()
        for p in crashed.iterdir()
        if p.name != f"{FILE_NAME}-shm"  # SQLite's index of the WAL, rebuilt by any reader
    }

    summary, _ = restore(tmp_path / "new", crashed, now=0)

    assert summary.messages == 200
    assert await bodies_in(tmp_path / "new") == [f"m{seq}" for seq in range(1, 201)]
    assert source_files == {  # read, never written: the source keeps its WAL
        p.name: hashlib.sha256(p.read_bytes()).digest()
        for p in crashed.iterdir()
        if p.name != f"{FILE_NAME}-shm"
    }


async def test_restores_in_the_same_second_each_keep_what_they_replaced(tmp_path: Path):
    """The second failed with "[Errno 17] File exists: .../before-restore-<time>": a
    scripted "restore the wrong backup, then the right one" (found by a report-only hunt)."""
    for name in ("wrong", "right"):
        await make_store(tmp_path / name, [name])
        backup(tmp_path / name, tmp_path / f"backup-{name}")
    data = tmp_path / "data"
    await make_store(data, ["current"])
    first = restore(data, tmp_path / "backup-wrong", now=0)[1]
    second = restore(data, tmp_path / "backup-right", now=0)[1]
    third = restore(data, tmp_path / "backup-right", now=0)[1]
    assert [first, second, third] == [
        data / "before-restore-19700101T000000Z",
        data / "before-restore-19700101T000000Z-2",
        data / "before-restore-19700101T000000Z-3",
    ]
    assert await bodies_in(first) == ["current"]
    assert await bodies_in(second) == ["wrong"]
    assert await bodies_in(data) == ["right"]


async def test_kept_sns_certificates_are_backed_up_and_added_by_a_restore(tmp_path: Path):
    """Envelopes in the backed-up store may name a certificate of an earlier key: it must be
    served after the restore, beside those the data directory kept itself."""
    old, new = tmp_path / "old", tmp_path / "new"
    await make_store(old, ["a"])
    (old / f"{SNS_KEPT}{'1' * 32}.pem").write_bytes(b"earlier")
    backup(old, tmp_path / "backup")
    assert (tmp_path / "backup" / f"{SNS_KEPT}{'1' * 32}.pem").read_bytes() == b"earlier"
    await make_store(new, ["b"])
    (new / f"{SNS_KEPT}{'2' * 32}.pem").write_bytes(b"the newer one")
    restore(new, tmp_path / "backup", now=0)
    assert (new / f"{SNS_KEPT}{'1' * 32}.pem").read_bytes() == b"earlier"
    assert (new / f"{SNS_KEPT}{'2' * 32}.pem").read_bytes() == b"the newer one"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: restore hands files over only then")
async def test_a_restore_run_as_root_leaves_the_service_user_every_file(tmp_path: Path):
    old, new = tmp_path / "old", tmp_path / "new"
    await make_store(old, ["a"])
    backup(old, tmp_path / "backup")
    service_uid, service_gid = 4321, 4322
    new.mkdir()  # as systemd's StateDirectory= makes it: empty, the service user's
    os.chown(new, service_uid, service_gid)
    restore(new, tmp_path / "backup", now=0)
    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in new.iterdir()}
    assert LOCK_FILE in owners  # made by this restore, as root
    assert set(owners.values()) == {(service_uid, service_gid)}, owners


async def test_a_restored_topic_keeps_its_deleted_subscription_count(tmp_path: Path):
    old, new = tmp_path / "old", tmp_path / "new"
    store = SqliteStore(old)
    await store.open()
    topic_id = (await store.create_topic("t", TopicSettings(), {}, 0)).topic_id
    for name in ("a", "b", "c"):
        await store.commit([SubscriptionSaved(subscription=subscription(topic_id, name))])
    await store.commit([SubscriptionDeleted(subscription_id=n) for n in ("a", "b")])
    await store.aclose()
    (old / "receipt-handle.key").write_bytes(b"k" * 32)
    assert backup(old, tmp_path / "backup").subscriptions == 1
    restore(new, tmp_path / "backup", now=0)
    store = SqliteStore(new)
    await store.open()
    try:
        (topic,) = (await store.load_sns()).topics
        assert topic.record.subscriptions_deleted == 2
    finally:
        await store.aclose()


async def test_backup_refuses_a_directory_in_use_as_destination(tmp_path: Path):
    await make_store(tmp_path / "data", ["a"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    with pytest.raises(StoreError, match="exists and is not an empty directory"):
        backup(tmp_path / "data", busy)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert backup(tmp_path / "data", empty).messages == 1


async def test_restore_changes_nothing_while_the_broker_runs_or_for_a_bad_backup(tmp_path: Path):
    data, copy = tmp_path / "data", tmp_path / "copy"
    await make_store(data, ["live"])
    backup(data, copy)
    before = sorted(p.name for p in data.iterdir())

    running = DataDirectoryLock(data)
    running.acquire()
    with pytest.raises(DataDirectoryInUse):
        restore(data, copy)
    running.release()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / FILE_NAME).write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError, match="not a readable SQLite database"):
        restore(data, broken)
    with pytest.raises(StoreError, match="no such file"):
        restore(data, tmp_path / "nowhere")

    keyless = tmp_path / "keyless"  # a whole store without its key: say, a copy by hand
    keyless.mkdir()
    (keyless / FILE_NAME).write_bytes((copy / FILE_NAME).read_bytes())
    with pytest.raises(StoreError, match=r"no receipt-handle\.key: not a whole backup"):
        restore(data, keyless)

    assert sorted(p.name for p in data.iterdir()) == before
    assert await bodies_in(data) == ["live"]


async def test_a_backup_stopped_half_way_never_holds_a_store_without_its_keys(
    tmp_path: Path, monkeypatch
):
    await make_store(tmp_path / "data", ["a"])
    there_when_the_store_copy_began = []

    def interrupted(source: Path, destination: Path) -> None:
        there_when_the_store_copy_began.extend(sorted(p.name for p in destination.parent.iterdir()))
        raise OSError("killed while copying the store")

    monkeypatch.setattr(broker_backup, "snapshot", interrupted)
    with pytest.raises(OSError):
        backup(tmp_path / "data", tmp_path / "copy")
    # The keys went first (a kill at that moment leaves them, and no store file) ...
    assert there_when_the_store_copy_began == sorted(KEY_FILES)
    # ... and a failure the backup sees removes the directory it created.
    assert not (tmp_path / "copy").exists()


def test_a_failed_backup_leaves_no_destination_behind(tmp_path: Path):
    """A backup of a data directory without a store failed (exit 2) and left an empty 0700
    DEST behind, which the retry then refused as "exists and is not an empty directory"."""
    with pytest.raises(StoreError, match="no store file here"):
        backup(tmp_path / "no-such-data-dir", tmp_path / "new" / "copy")
    assert not (tmp_path / "new").exists()


async def test_a_backup_into_an_empty_directory_that_fails_empties_it_again(
    tmp_path: Path, monkeypatch
):
    await make_store(tmp_path / "data", ["a"])
    destination = tmp_path / "mounted-backup-disk"
    destination.mkdir()

    def disk_full(source: Path, destination: Path) -> None:
        destination.with_name(destination.name + ".partial").write_bytes(b"half a store")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(broker_backup, "snapshot", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        backup(tmp_path / "data", destination)
    assert list(destination.iterdir()) == []  # a retry is not refused as "not empty"


def test_outside_files_lists_what_the_operator_keeps(tmp_path: Path):
    config = BrokerConfig(
        storage=StorageSettings(data_dir=str(tmp_path), key_file="/etc/wharf/keys.toml"),
        auth=AuthSettings(anonymous=False, credentials_file="/etc/wharf/credentials.toml"),
    )
    assert outside_files(config) == ["/etc/wharf/keys.toml", "/etc/wharf/credentials.toml"]
    assert outside_files(BrokerConfig()) == []


async def test_a_restore_that_fails_half_way_changes_nothing(tmp_path, monkeypatch):
    data, copy = tmp_path / "data", tmp_path / "copy"
    await make_store(tmp_path / "old", ["backed up"])
    backup(tmp_path / "old", copy)
    await make_store(data, ["current"])
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    real_copy = broker_backup._copy

    def copy_until_full(source: Path, destination: Path) -> None:
        if destination.name != "receipt-handle.key":
            raise OSError(28, "No space left on device")  # one key was copied, the next not
        real_copy(source, destination)

    monkeypatch.setattr(broker_backup, "_copy", copy_until_full)
    with pytest.raises(OSError, match="No space left on device"):
        restore(data, copy, now=0)
    after = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    assert after == before
    assert [p for p in data.iterdir() if p.is_dir()] == []  # nothing moved aside or left
    assert await bodies_in(data) == ["current"]


def test_after_a_restore_no_id_or_handle_of_the_lost_history_is_issued_again(tmp_path: Path):
    """What the broker issued after the backup is lost in the restore, but clients may hold
    it: a MessageId, a FIFO SequenceNumber, a receipt handle. None may name a new message
    (found by a report-only hunt: old handles deleted new messages, ids came back)."""
    data_dir = tmp_path / "data"
    config = broker_config(data_dir)
    with BrokerThread(config) as broker:
        sqs = broker.client()
        url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
        fifo = sqs.create_queue(
            QueueName="jobs.fifo",
            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
        )["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="before the backup")
        backup(data_dir, tmp_path / "backup")
        lost_ids = {
            sqs.send_message(QueueUrl=url, MessageBody=f"lost {n}")["MessageId"] for n in range(3)
        }
        lost = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
        # (The handle of the message from before the backup would still delete it: rightly.)
        lost_handles = [
            m["ReceiptHandle"] for m in lost["Messages"] if m["Body"] != "before the backup"
        ]
        lost_sequence = sqs.send_message(QueueUrl=fifo, MessageBody="lost", MessageGroupId="g")[
            "SequenceNumber"
        ]
        lost_queue_url = sqs.create_queue(QueueName="created-after-the-backup")["QueueUrl"]
        sqs.send_message(QueueUrl=lost_queue_url, MessageBody="lost with its queue")
        lost_queue_handle = sqs.receive_message(QueueUrl=lost_queue_url)["Messages"][0][
            "ReceiptHandle"
        ]
    restore(data_dir, tmp_path / "backup")
    with BrokerThread(config) as broker:
        sqs = broker.client()
        new_ids = {
            sqs.send_message(QueueUrl=url, MessageBody=f"new {n}")["MessageId"] for n in range(3)
        }
        assert not new_ids & lost_ids
        sequence = sqs.send_message(QueueUrl=fifo, MessageBody="new", MessageGroupId="g")[
            "SequenceNumber"
        ]
        assert int(sequence) > int(lost_sequence)
        # Received (and let go), the new messages are where an old handle would find them.
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
        assert len(received["Messages"]) == 4
        for handle in lost_handles:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)  # a deleted message: quiet
        url_again = sqs.create_queue(QueueName="created-after-the-backup")["QueueUrl"]
        sqs.send_message(QueueUrl=url_again, MessageBody="a new queue's message")
        sqs.receive_message(QueueUrl=url_again, VisibilityTimeout=0)
        with pytest.raises(ClientError):  # names another queue's message: refused
            sqs.delete_message(QueueUrl=url_again, ReceiptHandle=lost_queue_handle)
        bodies = []
        while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
            bodies += [m["Body"] for m in batch]
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
                ],
            )
        assert sorted(bodies) == ["before the backup", "new 0", "new 1", "new 2"]
        assert (
            sqs.receive_message(QueueUrl=url_again)["Messages"][0]["Body"]
            == "a new queue's message"
        )


# A restore in a process of its own, SIGKILLed as it is about to take its Nth step: each
# rename, the only way a restore changes what a start finds.
RESTORE_KILLED_AT_STEP = """
import os, pathlib, signal, sys
from broker.backup import restore
steps_left = int(sys.argv[1])
def killed_at_its_step(real):
    def step(self, target):
        global steps_left
        steps_left -= 1
        if steps_left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, target)
    return step
pathlib.Path.rename = killed_at_its_step(pathlib.Path.rename)
pathlib.Path.replace = killed_at_its_step(pathlib.Path.replace)
restore(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]))
"""


def restore_killed_at(step: int, data_dir: Path, source: Path) -> int:
    run = [sys.executable, "-c", RESTORE_KILLED_AT_STEP, str(step), str(data_dir), str(source)]
    return subprocess.run(run, check=False, timeout=60).returncode


def serve_once(data_dir: Path) -> subprocess.CompletedProcess[str]:
    config = data_dir.with_name(data_dir.name + ".toml")
    config.write_text(f'[admin]\nport = 0\n[api]\nport = 0\n[storage]\ndata_dir = "{data_dir}"\n')
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def data_state(data_dir: Path) -> tuple[object, ...]:
    """What a start would serve: the bodies, the keys, kept certificates, and whether the
    sequences moved past the lost history."""
    if not (data_dir / FILE_NAME).exists():
        return ("no store",)
    with sqlite3.connect(f"{(data_dir / FILE_NAME).as_uri()}?mode=ro", uri=True) as connection:
        (next_seq,) = connection.execute("SELECT next_seq FROM queues").fetchone()
    return (
        await bodies_in(data_dir),
        {name: (data_dir / name).read_bytes() for name in KEY_FILES},
        broker_backup._kept_certificates(data_dir),
        next_seq > RESTORED_SEQ_GAP,
    )


async def test_a_restore_killed_at_any_step_leaves_the_old_data_or_a_start_that_refuses(
    tmp_path: Path,
):
    """Killed after the store was in place, a restore left it without its keys (the start
    made new ones: every receipt handle refused, SNS certificates gone) or without its
    sequences advanced (FIFO SequenceNumbers issued again) (found by a report-only hunt)."""
    await make_store(tmp_path / "old", ["backed up"])
    (tmp_path / "old" / f"{SNS_KEPT}{'1' * 32}.pem").write_bytes(b"earlier")
    backup(tmp_path / "old", tmp_path / "backup")
    await make_store(tmp_path / "current", ["current"])
    unchanged = tmp_path / "unchanged"
    shutil.copytree(tmp_path / "current", unchanged)
    old_state = await data_state(unchanged)
    restore(unchanged, tmp_path / "backup")
    restored_state = await data_state(unchanged)
    assert restored_state[0] == ["backed up"]
    assert restored_state[3]

    refused = 0
    for step in itertools.count(1):
        data = tmp_path / f"killed-at-{step}"
        shutil.copytree(tmp_path / "current", data)
        killed = restore_killed_at(step, data, tmp_path / "backup")
        if killed == 0:
            break  # a restore that took fewer steps than this one: all were tried
        assert killed == -signal.SIGKILL
        if (data / RESTORING_DIR).exists():
            refused += 1
            started = serve_once(data)
            assert started.returncode == 1
            assert "a wharf-broker restore into this data directory stopped" in started.stderr
            restore(data, tmp_path / "backup", now=0)  # what the start asks for
            assert await data_state(data) == restored_state
        else:
            assert await data_state(data) in (old_state, restored_state), step
    assert step > 5
    assert refused > 0


def _cli_with_umask_022(*arguments: str) -> subprocess.CompletedProcess[str]:
    """``wharf-broker ARGUMENTS`` from a shell's usual umask (022: new files 0644)."""
    before = os.umask(0o022)  # inherited by the child
    try:
        return subprocess.run(
            [sys.executable, "-m", "broker.cli", *arguments],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.umask(before)


async def test_backup_and_restore_leave_the_store_the_owners_only(tmp_path: Path):
    # The store holds the messages of every queue stored in clear: a backup into an empty
    # directory someone made 0755, or a restore onto a new host (the data directory made
    # by the restore), must not leave them readable by every user of the host.
    await make_store(tmp_path / "data", ["a clear body"])
    destination = tmp_path / "backup"
    destination.mkdir(mode=0o755)
    destination.chmod(0o755)
    run = _cli_with_umask_022("backup", "--data-dir", str(tmp_path / "data"), str(destination))
    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE((destination / FILE_NAME).stat().st_mode) == 0o600

    data_dir = tmp_path / "new-host" / "wharf-broker"
    run = _cli_with_umask_022("restore", "--data-dir", str(data_dir), str(destination))
    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / FILE_NAME).stat().st_mode) == 0o600
    assert await bodies_in(data_dir) == ["a clear body"]


def _key_file(path: Path, keys: dict[str, bytes]) -> Path:
    lines = [f'sse_key_id = "{next(iter(keys))}"']
    for key_id, secret in keys.items():
        lines += ["[[keys]]", f'id = "{key_id}"', f'key = "{base64.b64encode(secret).decode()}"']
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def test_a_restore_says_which_sealed_messages_the_key_file_cannot_open(tmp_path: Path):
    # A backup restored onto a broker whose key file lacks a key its messages were sealed
    # with (another host, the key rotated out): the broker starts, but every receive of them
    # fails (KMS.NotFoundException) and a RedrivePolicy dead-letters them. Say so first.
    old_key, new_key = os.urandom(32), os.urandom(32)
    data_dir = tmp_path / "data"
    keys = _key_file(tmp_path / "keys.toml", {"2025-06": old_key})
    storage = StorageSettings(data_dir=str(data_dir), key_file=str(keys))
    config = msgspec.structs.replace(broker_config(data_dir), storage=storage)
    with BrokerThread(config) as broker:
        sqs = broker.client()
        url = sqs.create_queue(QueueName="orders")["QueueUrl"]  # SqsManagedSseEnabled
        for n in range(3):
            sqs.send_message(QueueUrl=url, MessageBody=f"order {n}")
    backup(data_dir, tmp_path / "backup")

    def restore_with(key_file: str) -> subprocess.CompletedProcess[str]:
        target = tmp_path / "restored"
        shutil.rmtree(target, ignore_errors=True)
        config = tmp_path / "broker.toml"
        config.write_text(f'[storage]\ndata_dir = "{target}"\nkey_file = "{key_file}"\n')
        return _cli_with_umask_022("restore", "--config", str(config), str(tmp_path / "backup"))

    run = restore_with(str(keys))
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr

    other = _key_file(tmp_path / "other.toml", {"2026-01": new_key})
    run = restore_with(str(other))
    assert run.returncode == 0, run.stderr
    assert (
        f"warning: {other}: 3 messages are sealed with key '2025-06', which the key file "
        "does not list" in run.stderr
    )

    replaced = _key_file(tmp_path / "replaced.toml", {"2025-06": new_key})
    run = restore_with(str(replaced))
    assert run.returncode == 0, run.stderr
    assert "sealed with key '2025-06', which the key file lists with other key material" in (
        run.stderr
    )

    run = restore_with("")
    assert "3 messages are sealed with key '2025-06', and storage.key_file is empty" in (run.stderr)

    # Without --config there is no key file to judge by (the defaults name none): a note, not
    # a warning of every message.
    target = tmp_path / "restored"
    shutil.rmtree(target)
    run = _cli_with_umask_022("restore", "--data-dir", str(target), str(tmp_path / "backup"))
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr
    assert "note: the restored store holds messages sealed at rest" in run.stderr


async def test_a_restore_moves_the_fingerprints_of_the_replaced_keys_aside(tmp_path: Path):
    # The restored store may be sealed with other keys (another host's key file): the next
    # start must not compare the key file with the keys of the store it replaced.
    await make_store(tmp_path / "old", ["a"])
    backup(tmp_path / "old", tmp_path / "backup")
    await make_store(tmp_path / "data", ["b"])
    (tmp_path / "data" / "sealing-keys.json").write_text('{"k1": "0123"}')
    _, aside = restore(tmp_path / "data", tmp_path / "backup", now=0)
    assert aside is not None
    assert not (tmp_path / "data" / "sealing-keys.json").exists()
    assert (aside / "sealing-keys.json").read_text() == '{"k1": "0123"}'


def test_a_store_from_before_encryption_at_rest_has_nothing_unopenable(tmp_path: Path):
    # A version 1 store (no key_id column) restored: nothing in it can be sealed, so there is
    # no "could not be checked: no such column" warning.
    store_file = tmp_path / "wharf.sqlite3"
    with sqlite3.connect(store_file) as connection:
        MIGRATIONS[0](connection)
        connection.execute("PRAGMA user_version = 1")
        connection.execute(
            "INSERT INTO messages (queue_id, seq, message_id, visible_at, receive_count, "
            "received_at, enqueued_at, sent_at, sender_id, body) "
            "VALUES (1, 1, x'00', 0, 0, 0, 0, 0, '', CAST('old body' AS BLOB))"
        )
    assert broker_backup.unopenable_keys(store_file, None) == []
