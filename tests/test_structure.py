"""The structure rules hold, and the checker really catches a violation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("structure", ROOT / "scripts" / "structure.py")
assert spec is not None
assert spec.loader is not None
structure = importlib.util.module_from_spec(spec)
spec.loader.exec_module(structure)


def test_the_tree_follows_the_rules():
    assert list(structure.problems()) == []


def test_a_forbidden_import_is_reported(tmp_path, monkeypatch):
    for package in structure.PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "proto" / "bad.py").write_text("import trio\nfrom broker import app\n")
    (tmp_path / "tests" / "proto").mkdir(parents=True)
    (tmp_path / "tests" / "proto" / "test_bad.py").write_text("def test(): pass\n")
    monkeypatch.setattr(structure, "ROOT", tmp_path)
    found = list(structure.problems())
    assert "proto/bad.py:1: pure module imports trio" in found
    assert "proto/bad.py:2: proto must not import broker" in found
    assert "proto/bad.py: tests/proto/test_bad.py has no hypothesis property" in found


def test_a_missing_mirror_is_reported(tmp_path, monkeypatch):
    for package in structure.PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "monitoring" / "thing.py").write_text("")
    monkeypatch.setattr(structure, "ROOT", tmp_path)
    assert list(structure.problems()) == [
        "monitoring/thing.py: no mirrored test file tests/monitoring/test_thing.py"
    ]
