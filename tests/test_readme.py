"""The README's two commands are the ones CI runs, and its config tables stay true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", README, flags=re.DOTALL)


def test_readme_opens_with_the_install_and_test_commands():
    first, second = shell_blocks()[:2]
    assert "pip install -e ." in first
    assert first.endswith("wharf-broker")
    assert "[test" in second
    assert second.endswith("pytest")


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert shell_blocks()[1] in ci_lines
    assert "scripts/check" in ci_lines
