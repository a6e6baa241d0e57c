"""The disk's raw fsync rate: append a small block and fsync (or fdatasync), in a loop.

This is the ceiling a durable broker works against: every acknowledged write waits for one
of these, so messages/s <= fsyncs/s x messages per fsync. Run it on the filesystem that holds
the broker's data directory. Bounded by ``--seconds``; the file is removed afterwards.

    python bench/fsync_rate.py [--dir DIR] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any


def _loop(path: str, seconds: float, block: int, sync: str) -> dict[str, Any]:
    flush = os.fdatasync if sync == "fdatasync" else os.fsync
    data = os.urandom(block)
    latencies: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        deadline = time.monotonic() + seconds
        offset = 0
        while time.monotonic() < deadline:
            started = time.monotonic_ns()
            os.pwrite(fd, data, offset)
            flush(fd)
            latencies.append(time.monotonic_ns() - started)
            offset += block
            if offset >= 64 << 20:  # wrap, like a WAL that is reset after a checkpoint
                offset = 0
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    total = sum(latencies) / 1e9
    return {
        "sync": sync,
        "block_bytes": block,
        "operations": len(latencies),
        "per_second": round(len(latencies) / total, 1) if total else 0.0,
        "p50_ms": round(latencies[len(latencies) // 2] / 1e6, 4) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] / 1e6, 4) if latencies else None,
    }


def measure(directory: str, seconds: float = 3.0, block: int = 4096) -> dict[str, Any]:
    """write+fsync and write+fdatasync rates, ``seconds`` each, in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    results: dict[str, Any] = {"directory": directory, "seconds_each": seconds}
    for sync in ("fsync", "fdatasync"):
        handle, path = tempfile.mkstemp(prefix="fsync-rate-", dir=directory)
        os.close(handle)
        results[sync] = _loop(path, seconds, block, sync)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description="write+fsync loop on one filesystem")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--block", type=int, default=4096)
    args = parser.parse_args()
    print(json.dumps(measure(args.dir, args.seconds, args.block), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
