"""Online backups of the SQLite store: consistent while commits go on, and checked on restore."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from broker.model.settings import QueueSettings
from broker.store.base import StoreError
from broker.store.sqlite import FILE_NAME, SqliteStore
from broker.store.sqlite_backup import PARTIAL_SUFFIX, inspect, snapshot
from broker.store.sqlite_schema import SCHEMA_VERSION, migrate
from tests.broker.store.test_base import inserted

BATCH = 50


async def test_a_snapshot_taken_during_commits_is_one_commit_s_state(tmp_path: Path):
    store = SqliteStore(tmp_path / "data")
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    body = "x" * 1024
    seq = 0  # the last seq handed to a commit
    durable = 0  # the last seq of a commit that returned

    async def commit_batch() -> None:
        nonlocal seq, durable
        batch = [inserted(queue.queue_id, seq + i + 1, body) for i in range(BATCH)]
        seq += BATCH
        await store.commit(batch)
        durable = max(durable, batch[-1].seq)

    for _ in range(200):  # 10,000 rows: the copy takes a while
        await commit_batch()
    done = trio.Event()

    async def keep_committing() -> None:
        while not done.is_set():
            await commit_batch()

    destination = tmp_path / "backup" / FILE_NAME
    destination.parent.mkdir()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_committing)
        await trio.sleep(0.05)
        started_at = durable  # every commit that returned before the copy began is in it
        summary = await trio.to_thread.run_sync(snapshot, store.path, destination)
        ended_at = seq  # no commit handed over after it ended can be
        done.set()
    await store.aclose()

    assert started_at < ended_at  # commits went on while the copy was taken
    copy = sqlite3.connect(destination)
    seqs = [row[0] for row in copy.execute("SELECT seq FROM messages ORDER BY seq")]
    copy.close()
    # Whole commits only, in order: the copy is the file as some commit in between left it.
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) % BATCH == 0
    assert started_at <= len(seqs) <= ended_at
    assert summary.messages == len(seqs)
    assert summary.queues == 1
    assert summary.schema_version == SCHEMA_VERSION
    assert not destination.with_name(FILE_NAME + PARTIAL_SUFFIX).exists()

    # The copy opens as a store, with every row of it.
    restored = SqliteStore(destination.parent)
    await restored.open()
    (loaded,) = await restored.load()
    assert len(loaded.messages) == len(seqs)
    assert [m.body for m in await restored.read_messages(queue.queue_id, [1, len(seqs)])] == [
        body,
        body,
    ]
    await restored.aclose()


async def test_a_snapshot_never_overwrites_and_needs_a_store(tmp_path: Path):
    with pytest.raises(StoreError, match="no store file here"):
        snapshot(tmp_path / FILE_NAME, tmp_path / "copy")
    store = SqliteStore(tmp_path)
    await store.open()
    await store.aclose()
    existing = tmp_path / "copy"
    existing.write_text("keep me")
    with pytest.raises(StoreError, match="exists; a backup never overwrites"):
        snapshot(store.path, existing)
    assert existing.read_text() == "keep me"


async def test_a_copy_that_cannot_be_written_is_named_not_the_store(tmp_path: Path):
    """A full disk at the destination must not read as the live store's (found by a
    report-only hunt: the message named only the store, and said "backup failed" twice)."""
    store = SqliteStore(tmp_path)
    await store.open()
    await store.aclose()
    destination = tmp_path / "nowhere" / FILE_NAME
    with pytest.raises(StoreError) as failed:
        snapshot(store.path, destination)
    assert failed.value.args[0].startswith(f"{destination}: could not write the copy of ")


def test_inspect_refuses_what_is_not_a_usable_store(tmp_path: Path):
    with pytest.raises(StoreError, match="no such file"):
        inspect(tmp_path / "missing")

    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a readable SQLite database"):
        inspect(garbage)

    other = tmp_path / "other.sqlite3"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE notes (text)")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="not a wharf-broker store"):
        inspect(other)

    newer = tmp_path / "newer.sqlite3"
    connection = sqlite3.connect(newer)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(StoreError, match="newer than this broker's"):
        inspect(newer)


async def test_inspect_finds_a_damaged_file(tmp_path: Path):
    store = SqliteStore(tmp_path)
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    await store.commit([inserted(queue.queue_id, s, "y" * 3000) for s in range(1, 200)])
    await store.aclose()
    copy = tmp_path / "copy.sqlite3"
    snapshot(store.path, copy)
    data = bytearray(copy.read_bytes())
    page = 4096
    for offset in range(3 * page, len(data) - page, 7 * page):  # scribble over some pages
        data[offset : offset + 64] = b"\xff" * 64
    copy.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"{copy}: damaged: "):
        inspect(copy)


def test_inspect_counts_live_subscriptions_not_the_kept_restore_links(tmp_path: Path):
    store = tmp_path / FILE_NAME
    connection = sqlite3.connect(store, isolation_level=None)
    migrate(connection)
    connection.executemany(
        "INSERT INTO subscriptions (subscription_id, topic_id, record) VALUES (?, 1, ?)",
        [
            ("live", b'{"subscription_id":"live","unsubscribed":false}'),
            ("older", b'{"subscription_id":"older"}'),  # written before version 7
            ("gone", b'{"subscription_id":"gone","unsubscribed":true}'),
        ],
    )
    connection.close()
    assert inspect(store).subscriptions == 2
