"""Durable file replacement: the new content whole, the mode asked for, nothing left over."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from monitoring import durable


def test_write_file_replaces_with_the_mode_asked_for(tmp_path: Path):
    target = tmp_path / "key"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        durable.write_file(target, b"new", 0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not what the umask left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_copy_file_streams_a_large_file(tmp_path: Path):
    source = tmp_path / "source"
    source.write_bytes(os.urandom(3 * durable.COPY_CHUNK + 17))
    durable.copy_file(source, tmp_path / "copy", 0o600)
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device"):
        durable.write_file(target, b"new", 0o600)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
