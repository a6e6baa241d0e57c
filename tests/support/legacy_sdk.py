"""An old boto3/botocore that speaks the query protocol to SQS, in a venv of its own.

The SDK (the last botocore whose SQS model is ``"protocol": "query"``, and the dependencies of
its day) is pinned with hashes in tests/compat/legacy/requirements.txt and installed on first
use into tests/compat/legacy/.venv (git-ignored), never into the project's .venv: the README's
test command alone passes on a fresh machine that has python3 and PyPI, as CI has. The venv is
made anew when requirements.txt changes (its hash is kept in the venv).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

LEGACY_DIR = Path(__file__).parents[1] / "compat" / "legacy"
VENV_DIR = LEGACY_DIR / ".venv"
REQUIREMENTS = LEGACY_DIR / "requirements.txt"
STAMP = VENV_DIR / "wharf-requirements.sha256"
SCRIPT_TIMEOUT_SECONDS = 180  # the scenarios take ~15 s; past this the script is stuck
VENV_TIMEOUT_SECONDS = 120  # python -m venv with pip: ~3 s
PIP_TIMEOUT_SECONDS = 300  # the pinned wheels from the registry: ~5 s


def legacy_python() -> str:
    """The venv's python, with the pinned old SDK installed; a clear failure (not a skip) when
    it cannot be installed."""
    python = VENV_DIR / "bin" / "python"
    if not _installed(python):
        _install(python)
    return str(python)


def _wanted() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def _installed(python: Path) -> bool:
    return python.exists() and STAMP.exists() and STAMP.read_text().strip() == _wanted()


def _install(python: Path) -> None:
    steps = [
        ([sys.executable, "-m", "venv", "--clear", str(VENV_DIR)], VENV_TIMEOUT_SECONDS),
        (
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--require-hashes",
                "--only-binary=:all:",
                "-r",
                str(REQUIREMENTS),
            ],
            PIP_TIMEOUT_SECONDS,
        ),
    ]
    for command, timeout in steps:
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(command)} took over {timeout} s")
        if completed.returncode != 0:
            pytest.fail(
                f"cannot install the legacy SDK ({' '.join(command)}):\n"
                f"{completed.stdout}{completed.stderr}"
            )
    STAMP.write_text(_wanted() + "\n")
