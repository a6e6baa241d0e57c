"""One broker per data directory: the lock is exclusive, names its holder, and dies with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from broker.store.lock import LOCK_FILE, DataDirectoryInUse, DataDirectoryLock
from broker.store.sqlite import SqliteStore


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path: Path):
    first = DataDirectoryLock(tmp_path)
    first.acquire()
    assert first.held
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    second = DataDirectoryLock(tmp_path)
    with pytest.raises(DataDirectoryInUse) as refused:
        second.acquire()
    assert str(refused.value) == (
        f"{tmp_path} is in use by another wharf-broker (pid {os.getpid()})"
    )
    assert not second.held
    first.release()
    second.acquire()  # free again once released
    second.release()
    second.release()  # releasing twice does nothing


def test_deleting_the_lock_file_does_not_let_a_second_broker_in(tmp_path: Path):
    # An operator who takes wharf.lock for a stale lock and deletes it must not get two
    # brokers on one file: the directory itself stays locked.
    first = DataDirectoryLock(tmp_path)
    first.acquire()
    (tmp_path / LOCK_FILE).unlink()
    with pytest.raises(DataDirectoryInUse, match=r"in use by another wharf-broker \(pid unknown\)"):
        DataDirectoryLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()  # the refused one left nothing behind
    first.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from broker.store.lock import DataDirectoryLock
                DataDirectoryLock({str(tmp_path)!r}).acquire()
                print("held", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(DataDirectoryInUse, match=f"pid {holder.pid}"):
            DataDirectoryLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    lock = DataDirectoryLock(tmp_path)
    lock.acquire()  # the file is still there; the kernel dropped the lock with the process
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    lock.release()


async def test_a_second_store_on_one_directory_is_refused(tmp_path: Path):
    first = SqliteStore(tmp_path)
    await first.open()
    second = SqliteStore(tmp_path)
    with pytest.raises(DataDirectoryInUse):
        await second.open()
    await first.aclose()
    await second.open()  # the first one's close let go of the directory
    await second.aclose()
