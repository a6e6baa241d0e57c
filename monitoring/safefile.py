"""Reading the files a configuration names (keys, certificates, CA bundles, token files).

A name typed by mistake must get a refusal naming the file, never a daemon frozen or
exhausted: opening a FIFO for reading waits for a writer, and that wait would freeze the whole
event loop (every listener, ``/healthz``, SIGTERM) on a reload; ``/dev/zero`` or
``/dev/urandom`` read to the end never ends and grows memory until the kernel kills the
process. So the file is opened without blocking, must be a regular file, and is read up to a
limit its reader chooses.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

# Larger than any PEM bundle or key a daemon is given; anything bigger is the wrong file.
MAX_KEY_FILE_BYTES: Final = 1 << 20
# Bytes asked of each read() of a file read whole.
READ_CHUNK_BYTES: Final = 1 << 16

_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotRegularFile(OSError):
    """The file is a FIFO, a device, a directory or a socket.

    An :class:`OSError`, so that a reader's existing ``except OSError`` refuses it as it
    refuses a missing file; ``strerror`` is the reason, naming what the file is instead.
    """

    def __init__(self, path: str | Path, kind: str) -> None:
        super().__init__(None, f"not a regular file ({kind})", os.fspath(path))

    def __str__(self) -> str:  # the reason alone: the ConfigError it becomes names the file
        return str(self.strerror)


class FileTooLarge(OSError):
    """The file holds more than its reader's limit (:attr:`limit` bytes)."""

    def __init__(self, path: str | Path, limit: int) -> None:
        super().__init__(None, f"larger than {limit} bytes", os.fspath(path))
        self.limit = limit

    def __str__(self) -> str:  # the reason alone: the ConfigError it becomes names the file
        return str(self.strerror)


def file_kind(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) is, in words: ``a FIFO``, ``a directory``..."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "not a file"


def read_regular_file(path: str | Path, max_bytes: int | None = MAX_KEY_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, read without ever blocking on its type.

    The type is checked on the descriptor opened, not on the name, which may change
    meanwhile: ``O_NONBLOCK`` makes the open of a FIFO return at once, and then ``fstat``
    refuses it.

    Args:
        max_bytes: refuse a file holding more (None: read it whole, for files whose size is
            their own business, such as the configuration file).

    Raises:
        NotRegularFile: a FIFO, device, directory or socket.
        FileTooLarge: more than ``max_bytes`` bytes.
        OSError: the file cannot be opened or read (missing, permissions...).
    """
    fd = _open_regular(path)
    try:
        # Read one byte past the limit, not the size fstat gave: the file may grow meanwhile.
        budget = None if max_bytes is None else max_bytes + 1
        chunks = []
        while budget is None or budget > 0:
            wanted = READ_CHUNK_BYTES if budget is None else min(budget, READ_CHUNK_BYTES)
            chunk = os.read(fd, wanted)
            if not chunk:
                break
            chunks.append(chunk)
            if budget is not None:
                budget -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if max_bytes is not None and len(data) > max_bytes:
        raise FileTooLarge(path, max_bytes)
    return data


def check_regular_file(path: str | Path, max_bytes: int = MAX_KEY_FILE_BYTES) -> None:
    """Refuse, as :func:`read_regular_file` would, a file that a library then opens by name
    (``ssl``'s ``load_cert_chain``), which would block on a FIFO and read a device forever.

    The file may be swapped between this check and the library's open; the check is there
    for an operator's mistake, not for an adversary who can write the configured paths.

    Raises:
        NotRegularFile, FileTooLarge, OSError: as :func:`read_regular_file`.
    """
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size > max_bytes:
        raise FileTooLarge(path, max_bytes)


def _open_regular(path: str | Path) -> int:
    """A descriptor open for reading on the regular file at ``path`` (the caller closes it)."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(path, file_kind(mode))
    return fd
