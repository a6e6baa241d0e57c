"""Files written so that a crash leaves either the old file or the whole new one.

The new content goes to a temporary file beside the target, which is fsync'd, renamed over
the target, and the directory fsync'd so that the rename itself survives a power loss. A
failure removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

COPY_CHUNK = 1 << 20


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a file created or renamed in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``), durably and atomically."""
    _replace(path, mode, lambda handle: handle.write(data))


def copy_file(source: Path, destination: Path, mode: int) -> None:
    """Replace ``destination`` with a copy of ``source``, durably and atomically, streamed."""
    with open(source, "rb") as reader:
        _replace(destination, mode, lambda handle: shutil.copyfileobj(reader, handle, COPY_CHUNK))


def _replace(path: Path, mode: int, fill: Callable[[BinaryIO], object]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with open(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # whatever the umask took away
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
