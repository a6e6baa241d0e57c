"""Files a daemon must refuse to read, for the tests of every file a configuration names."""

from __future__ import annotations

import os
from pathlib import Path

from monitoring.safefile import MAX_KEY_FILE_BYTES

# Far longer than check-config takes; the old code waited for the FIFO's writer forever.
CHECK_CONFIG_TIMEOUT_SECONDS = 60

# The reason check-config gives for each kind of bad_file.
REASONS = {
    "fifo": "not a regular file (a FIFO)",
    "device": "not a regular file (a character device)",
    "oversize": f"larger than {MAX_KEY_FILE_BYTES} bytes",
}


def bad_file(tmp_path: Path, kind: str) -> str:
    """A file no daemon should read: a FIFO, a device without end, or a 2 MiB sparse file."""
    if kind == "fifo":
        fifo = tmp_path / "named.fifo"
        os.mkfifo(fifo)  # opening it for reading waits for a writer
        return str(fifo)
    if kind == "device":
        return "/dev/zero"  # read whole, it never ends
    large = tmp_path / "large.pem"
    with large.open("wb") as file:
        file.truncate(2 * MAX_KEY_FILE_BYTES)
    return str(large)
