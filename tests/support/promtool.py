"""Prometheus's own linter over a daemon's ``/metrics`` text.

``promtool check metrics`` (Debian's ``prometheus`` package; ``.ci/run`` installs it) reads the
exposition as a Prometheus server would and applies Prometheus's naming conventions: counters
end in ``_total``, units are base units spelled out, HELP is present, no name is reused. It is
an implementation nobody here wrote, next to prometheus_client, which wrote the text.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

PROMTOOL = shutil.which("promtool")


def check_exposition(body: bytes) -> None:
    """Fail with promtool's findings unless it accepts ``body`` without a remark."""
    if PROMTOOL is None:
        pytest.skip("needs promtool (apt-get install prometheus)")
    assert body.startswith(b"# HELP "), body[:200]
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    findings = (result.stdout + result.stderr).decode(errors="replace").strip()
    assert result.returncode == 0, findings
    assert not findings, findings
