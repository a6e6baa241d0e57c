"""``wharf-broker backup`` and ``wharf-broker restore``: a data directory, copied and put back.

A backup is a new directory holding a consistent snapshot of the store
(:func:`broker.store.sqlite_backup.snapshot`, taken while the broker serves) and the keys the
broker generated in its data directory: the receipt-handle key (message ids derive from it,
and handles issued before the backup stay valid after a restore), the SNS signing key and
certificate, and the SNS certificates kept so that envelopes signed earlier still verify
(:mod:`broker.sns_keys`; a restore adds them to those already there). Files the
configuration names outside the data directory (``storage.key_file``, the credentials file,
TLS keys) are the operator's to keep; the report says so.

A restore needs the broker stopped: it takes the data directory's lock
(:mod:`broker.store.lock`), checks the backup, and copies it into a directory beside the data:
the keys as files, the store through SQLite (:func:`snapshot`, on a read-only connection), so
that a source with a ``-wal`` beside it comes back with what that WAL holds. The copied
store's sequences move forward (:func:`advance_sequences`), so that nothing issued after the
backup, and lost in the restore, is issued again. Only then does it move the files it
replaces into ``before-restore-<UTC time>/`` (nothing is deleted) and the copies in, by
renames, under a marker the start refuses (see :func:`restore`): killed at any point, a
restore leaves the old data or, once a restore runs again, the restored. The next start opens
the restored store (and migrates it, if it came from an older broker).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Final

from broker.app import IDENTITY_FILE, KEY_HISTORY_FILE, RESTORING_DIR
from broker.app import KEY_FILE as RECEIPT_HANDLE_KEY_FILE
from broker.config import BrokerConfig
from broker.sns_keys import ARCHIVE_PREFIX as SNS_KEPT_CERT_PREFIX
from broker.sns_keys import CERT_FILE as SNS_CERT_FILE
from broker.sns_keys import KEY_FILE as SNS_KEY_FILE
from broker.store.base import KeyUnavailable, SealingError, StoreError
from broker.store.lock import DataDirectoryLock
from broker.store.sealing import KeyRing, Sealer, associated_data
from broker.store.sqlite import FILE_NAME
from broker.store.sqlite_backup import (
    PARTIAL_SUFFIX,
    StoreSummary,
    advance_sequences,
    inspect,
    snapshot,
)
from monitoring.durable import copy_file, fsync_directory

# With the keys, the account and region the store was served under (a start under others is
# refused): a restore brings the backup's, and moves the replaced store's aside.
KEY_FILES: Final = (RECEIPT_HANDLE_KEY_FILE, SNS_KEY_FILE, SNS_CERT_FILE, IDENTITY_FILE)
_SECRET_FILES: Final = frozenset({RECEIPT_HANDLE_KEY_FILE, SNS_KEY_FILE})
_STORE_FILES: Final = (FILE_NAME, f"{FILE_NAME}-wal", f"{FILE_NAME}-shm")


def backup(data_dir: Path, destination: Path) -> StoreSummary:
    """Copy the data directory's store and keys into the new directory ``destination``.

    Raises:
        StoreError: no store in ``data_dir``, ``destination`` exists and is not empty, or the
            copy failed. What the backup wrote is removed then, and ``destination`` too if
            the backup created it: a retry finds it as it was. (A backup killed half-way
            leaves its keys, never a whole-looking store file.)
        OSError: creating or writing ``destination`` failed; cleaned up likewise.
    """
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise StoreError(f"{destination}: exists and is not an empty directory")
    store = data_dir / FILE_NAME
    if not store.is_file():  # before anything is created: a mistyped --data-dir, say
        raise StoreError(f"{store}: no store file here")
    created = _first_missing(destination)
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # Keys first: a backup stopped half-way must not look whole (a store without its keys).
        for name in (*KEY_FILES, *_kept_certificates(data_dir)):
            if (data_dir / name).is_file():
                _copy(data_dir / name, destination / name)
        return snapshot(store, destination / FILE_NAME)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        else:  # it was empty: take out only what this backup put in
            for name in (*KEY_FILES, *_kept_certificates(data_dir), FILE_NAME):
                (destination / name).unlink(missing_ok=True)
            (destination / (FILE_NAME + PARTIAL_SUFFIX)).unlink(missing_ok=True)
        raise


def _kept_certificates(directory: Path) -> list[str]:
    """The SNS certificates kept in ``directory`` (``sns-cert-<fingerprint>.pem``)."""
    return sorted(path.name for path in directory.glob(f"{SNS_KEPT_CERT_PREFIX}*.pem"))


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` (itself included) that does not exist yet."""
    missing = None
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing = directory
    return missing


def restore(
    data_dir: Path, source: Path, now: float | None = None
) -> tuple[StoreSummary, Path | None]:
    """Put the backup directory ``source`` in place as ``data_dir``'s store and keys.

    Everything is prepared first under ``restore-in-progress.partial/`` in ``data_dir`` (the
    same filesystem): the keys, the store with its sequences advanced, all fsync'd. Renamed
    to ``restore-in-progress/``, it marks the switch: the replaced files go aside, the keys
    and kept certificates come in, the store last, then the marker goes. Killed before the
    switch, the restore leaves ``data_dir`` as it was (the next restore removes what it
    prepared); during it, the start refuses (:mod:`broker.app`) until a restore runs again.

    Returns:
        The restored store's summary, and the directory the replaced files were moved to
        (None when ``data_dir`` held none: no empty directory is left behind).

    Raises:
        StoreError: the broker is running on ``data_dir`` (``DataDirectoryInUse``), or
            ``source`` is not a usable backup. Nothing was changed then.
        OSError: copying failed (the disk is full, say); nothing was changed either.
    """
    inspect(source / FILE_NAME)  # a bad backup is refused before anything changes
    if not (source / RECEIPT_HANDLE_KEY_FILE).is_file():
        raise StoreError(
            f"{source}: no {RECEIPT_HANDLE_KEY_FILE}: not a whole backup (with a new key, "
            "every receipt handle issued before would be refused); take the backup again"
        )
    # As the broker makes it: the owner's only (the store holds the messages in clear).
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = DataDirectoryLock(data_dir)
    lock.acquire()
    try:
        switching = data_dir / RESTORING_DIR
        preparing = data_dir / (RESTORING_DIR + PARTIAL_SUFFIX)
        for leftover in (switching, preparing):  # of a restore that was killed: copies only
            shutil.rmtree(leftover, ignore_errors=True)
        summary, restored = _prepare(source, data_dir, preparing)
        preparing.rename(switching)
        fsync_directory(data_dir)
        # The store's WAL and shared-memory files go with it: left beside the restored file,
        # SQLite would replay the old WAL into it.
        # The fingerprints of the keys the replaced store was sealed with go too: the
        # restored store's may be others (another host's key file, keys rotated since).
        moved = [
            name
            for name in (*_STORE_FILES, *KEY_FILES, KEY_HISTORY_FILE)
            if (data_dir / name).exists()
        ]
        aside = _new_aside_directory(data_dir, now) if moved else None
        _switch(data_dir, switching, aside, moved, restored)
        replaced = [aside] if aside else []
        # The lock file too: made here by root, it would keep the service user's broker
        # from starting ("Permission denied: wharf.lock") on the restored data.
        _give_to_owner(data_dir, [lock.path, *replaced, *(data_dir / name for name in restored)])
    finally:
        lock.release()
    return summary, aside


def _new_aside_directory(data_dir: Path, now: float | None) -> Path:
    """``before-restore-<UTC time>``, made; ``-2``, ``-3``... after it when a restore in the
    same second took the name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    aside = data_dir / f"before-restore-{stamp}"
    taken = 1
    while True:
        try:
            aside.mkdir(mode=0o700)
            return aside
        except FileExistsError:
            taken += 1
            aside = data_dir / f"before-restore-{stamp}-{taken}"


def _copy(source: Path, destination: Path) -> None:
    copy_file(source, destination, 0o600 if source.name in _SECRET_FILES else 0o644)


def _prepare(source: Path, data_dir: Path, staging: Path) -> tuple[StoreSummary, list[str]]:
    """Copy the backup into the new directory ``staging``, as it is to be in ``data_dir``;
    what the store holds, and the names to move in, the store's last. A failure removes
    ``staging``."""
    staging.mkdir(mode=0o700)
    try:
        names = [name for name in KEY_FILES if (source / name).is_file()]
        # Public, and each names its own content: those in data_dir already stay, served on.
        names += [name for name in _kept_certificates(source) if not (data_dir / name).exists()]
        for name in names:
            _copy(source / name, staging / name)
        # Through SQLite, not as a file: a source with a -wal beside it (a before-restore-*
        # directory, a copy of a data directory after a crash) has its last commits there.
        summary = snapshot(source / FILE_NAME, staging / FILE_NAME)
        advance_sequences(staging / FILE_NAME)
        fsync_directory(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary, [*names, FILE_NAME]


def _switch(
    data_dir: Path, staging: Path, aside: Path | None, moved: list[str], names: list[str]
) -> None:
    """Move the files ``moved`` from ``data_dir`` into ``aside``, then ``names`` in from
    ``staging``, then remove ``staging``, whose presence marks the switch as unfinished."""
    if aside is not None:
        for name in moved:
            (data_dir / name).rename(aside / name)
        fsync_directory(aside)
    for name in names:
        (staging / name).rename(data_dir / name)
    fsync_directory(data_dir)  # every rename durable before the marker goes
    staging.rmdir()
    fsync_directory(data_dir)


def _give_to_owner(data_dir: Path, paths: list[Path]) -> None:
    """Run as root (``sudo wharf-broker restore``), hand the new files to the data
    directory's owner: the service user must be able to open them."""
    if os.geteuid() != 0:
        return
    owner = data_dir.stat()
    for path in paths:
        os.chown(path, owner.st_uid, owner.st_gid)


def unopenable_keys(store_file: Path, keyring: KeyRing | None) -> list[str]:
    """What keeps the messages sealed at rest in ``store_file`` from opening with ``keyring``
    (the configured key file; None: none), one line per key id; empty when nothing does.

    A restore onto a broker with another key file starts, but its receives cannot open those
    messages (``KMS.NotFoundException``, then the dead-letter queue): better said before the
    start. One message per key is opened, which also finds other key material listed under
    the same id. Reads the whole messages table once (the key id is stored after the body).
    """
    sealer = Sealer(keyring)
    connection = sqlite3.connect(f"{store_file.resolve().as_uri()}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(messages)")}
        if "key_id" not in columns:
            return []  # a store from before encryption at rest: nothing in it is sealed
        rows = connection.execute(
            "SELECT key_id, COUNT(*), MIN(rowid) FROM messages WHERE key_id IS NOT NULL "
            "GROUP BY key_id ORDER BY key_id"
        ).fetchall()
        problems = []
        for key_id, count, rowid in rows:
            message_id, body = connection.execute(
                "SELECT message_id, body FROM messages WHERE rowid = ?", (rowid,)
            ).fetchone()
            try:
                sealer.open(key_id, body, associated_data(message_id, b"body"))
                continue
            except KeyUnavailable:
                why = (
                    "which the key file does not list"
                    if keyring
                    else "and storage.key_file is empty"
                )
            except SealingError:
                why = "which the key file lists with other key material (one failed to open)"
            problems.append(f"{count} messages are sealed with key {key_id!r}, {why}")
        return problems
    finally:
        connection.close()


def outside_files(config: BrokerConfig) -> list[str]:
    """The files the configuration names that a backup does not copy."""
    named = [
        config.storage.key_file,
        config.auth.credentials_file,
        config.api.tls.cert_file,
        config.api.tls.key_file,
        config.sns.signing_key_file,
        config.sns.signing_cert_file,
    ]
    return [name for name in named if name]
