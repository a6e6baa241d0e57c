"""One broker per data directory: an advisory lock held for as long as the store is open.

Two brokers on one SQLite file would each keep their own in-memory index and hand out the
same sequence numbers: messages would be lost. The store therefore takes an exclusive
``flock`` on ``wharf.lock`` in the data directory when it opens and keeps it until it closes;
a second broker, or ``wharf-broker restore``, finds it taken and refuses with the holder's
pid. The kernel drops the lock when the process dies (kill -9 included), so a crash never
leaves a stale lock behind: the file's presence means nothing, only the lock does.

The directory itself is locked too: a lock on the file alone stops holding the moment
someone deletes ``wharf.lock`` (believing it stale), since the next broker would lock a new
file of the same name. The file stays for the holder's pid, which the refusal names.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from broker.store.base import StoreError

LOCK_FILE: Final = "wharf.lock"


class DataDirectoryInUse(StoreError):
    """Another process holds the data directory's lock."""


class DataDirectoryLock:
    """The exclusive lock of one data directory (not reentrant)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None
        self._directory_fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            DataDirectoryInUse: another process holds it; the message names the directory
                and the holder's pid.
            OSError: the lock file cannot be created.
        """
        if self._fd is not None:
            return
        directory_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._lock_or_refuse(directory_fd)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                self._lock_or_refuse(fd)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            os.close(directory_fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._directory_fd = fd, directory_fd

    def _lock_or_refuse(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirectoryInUse(
                f"{self.path.parent} is in use by another wharf-broker (pid {self._holder()})"
            ) from None

    def _holder(self) -> str:
        try:
            with open(self.path, "rb") as file:
                return file.read(32).decode("ascii", "replace").strip() or "unknown"
        except OSError:  # deleted: the directory's lock still names no one
            return "unknown"

    def release(self) -> None:
        """Drop the lock (closing the files drops it); nothing if not held."""
        fd, self._fd = self._fd, None
        directory_fd, self._directory_fd = self._directory_fd, None
        for held in (fd, directory_fd):
            if held is not None:
                os.close(held)
