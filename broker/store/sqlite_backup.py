"""Online backup of the SQLite store, and the checks a restore makes of a backup file.

A backup is ``VACUUM INTO`` on a read-only connection: one read transaction, so the copy is
the store as one commit left it (a consistent snapshot, every acknowledged write up to that
commit included), written compactly into a new file while the broker goes on committing
(WAL readers never block the writer). SQLite's incremental backup API is not used: it starts
over whenever another connection writes, which a busy broker does all the time. The copy is
written under a temporary name, fsync'd, then renamed, so a file with the final name is
always whole. It is the owner's only (0600), whatever the umask and the destination directory:
it holds every message of the queues stored in clear.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import msgspec

from broker.store.base import StoreError
from broker.store.sqlite_schema import SCHEMA_VERSION
from monitoring.durable import fsync_directory

PARTIAL_SUFFIX = ".partial"
# What a restore moves every sequence forward by (see advance_sequences): more messages than
# one queue takes, and more queues than one broker creates, between a backup and a restore.
RESTORED_SEQ_GAP = 1 << 40
RESTORED_ID_GAP = 1 << 32


class StoreSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What a store file holds, as a backup or restore reports it."""

    schema_version: int
    queues: int
    messages: int
    topics: int
    subscriptions: int
    bytes: int


def snapshot(source: Path, destination: Path) -> StoreSummary:
    """Write a consistent copy of the store file ``source`` to ``destination``.

    Safe while a broker has ``source`` open. ``destination`` must not exist.

    Raises:
        StoreError: no store at ``source``, ``destination`` exists, or SQLite failed.
    """
    if not source.is_file():
        raise StoreError(f"{source}: no store file here")
    if destination.exists():
        raise StoreError(f"{destination}: exists; a backup never overwrites a file")
    partial = destination.with_name(destination.name + PARTIAL_SUFFIX)
    partial.unlink(missing_ok=True)  # left by a backup that was killed
    try:
        # VACUUM INTO writes into an empty file that exists: made here, the owner's only
        # (SQLite would create it with the umask's mode, 0644 from a shell).
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StoreError(f"{destination}: could not write the copy of {source}: {error}") from error
    try:
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        with contextlib.closing(_read_only(source)) as connection:
            connection.execute("VACUUM INTO ?", (str(partial),))
        with open(partial, "rb+") as copy:  # VACUUM INTO leaves syncing to the caller
            os.fsync(copy.fileno())
        partial.replace(destination)
        fsync_directory(destination.parent)
    except sqlite3.Error as error:
        partial.unlink(missing_ok=True)
        # Named after the copy: a full disk here is most often the destination's.
        raise StoreError(f"{destination}: could not write the copy of {source}: {error}") from error
    return inspect(destination)


def inspect(path: Path) -> StoreSummary:
    """Check that ``path`` is a whole wharf store this broker can open, and summarise it.

    Raises:
        StoreError: not a file, not an SQLite database, damaged, not a wharf store, or
            written by a newer broker.
    """
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        with contextlib.closing(_read_only(path)) as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{path}: schema version {version} is newer than this broker's "
                    f"({SCHEMA_VERSION}); restore it with the broker version that wrote it"
                )
            try:
                check = connection.execute("PRAGMA quick_check").fetchall()
            except sqlite3.DatabaseError as error:  # "database disk image is malformed"
                raise StoreError(f"{path}: damaged: {error}") from error
            if check != [("ok",)]:
                problems = "; ".join(str(row[0]) for row in check[:3])
                raise StoreError(f"{path}: damaged: {problems}")
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
            if version < 1 or not {"queues", "messages"} <= tables:
                raise StoreError(f"{path}: not a wharf-broker store")

            def count(table: str, where: str = "") -> int:
                if table not in tables:
                    return 0  # an older schema, migrated when the broker opens it
                query = f"SELECT count(*) FROM {table} {where}"  # names from this module only
                return int(connection.execute(query).fetchone()[0])

            return StoreSummary(
                schema_version=version,
                queues=count("queues", "WHERE deleted = 0"),
                messages=count("messages"),
                topics=count("topics"),
                # Not the unsubscribed ones kept for their restore links (SubscriptionRecord).
                subscriptions=count(
                    "subscriptions",
                    "WHERE json_extract(CAST(record AS TEXT), '$.unsubscribed') IS NOT 1",
                ),
                bytes=path.stat().st_size,
            )
    except sqlite3.Error as error:
        raise StoreError(f"{path}: not a readable SQLite database: {error}") from error


def advance_sequences(path: Path) -> None:
    """Move every sequence of the restored store ``path`` past anything the lost history
    can have reached.

    Message ids, FIFO SequenceNumbers and receipt handles derive from (queue id, seq), and the
    store comes back with its counters as they were at the backup, while the broker went on
    issuing from them until it was replaced. Reused, a new message would get the MessageId
    of one acknowledged after the backup (consumers that deduplicate by id drop it), and a
    handle of that lost message would delete the new one. The history since the backup may
    be gone with the disk it was on, so no high-water mark is read from it: every queue's and
    topic's next seq moves ``RESTORED_SEQ_GAP`` ahead, and the next queue and topic id
    ``RESTORED_ID_GAP`` ahead, in one transaction. Nothing that existed at the backup moves.

    Raises:
        StoreError: SQLite failed; the file is as it was.
    """
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
            connection.execute("PRAGMA busy_timeout = 10000")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("BEGIN IMMEDIATE")
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
            for table in ("queues", "topics"):
                if table not in tables:
                    continue  # an older schema: created, and counted from 1, at migration
                connection.execute(
                    f"UPDATE {table} SET next_seq = next_seq + ?", (RESTORED_SEQ_GAP,)
                )
                # sqlite_sequence has no key on name: update the table's row, or add it.
                moved = connection.execute(
                    "UPDATE sqlite_sequence SET seq = seq + ? WHERE name = ?",
                    (RESTORED_ID_GAP, table),
                ).rowcount
                if not moved:
                    connection.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
                        (table, RESTORED_ID_GAP),
                    )
            connection.execute("COMMIT")
    except sqlite3.Error as error:
        raise StoreError(f"{path}: could not move its sequences forward: {error}") from error


def _read_only(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    connection.execute("PRAGMA busy_timeout = 10000")
    return connection
