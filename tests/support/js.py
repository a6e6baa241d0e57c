"""node and the pinned npm packages of tests/compat/js, for the tests that run them.

The packages (the AWS SDK for JavaScript v3, AWS's SNS message validator) are pinned by
tests/compat/js/package-lock.json and installed by ``npm ci`` on first use, so the README's
test command alone passes on a fresh machine that has node and npm (.ci/run installs them).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).parents[1] / "compat" / "js"
PACKAGES = ("@aws-sdk/client-sqs", "@aws-sdk/client-sns", "sns-validator")
NODE_TIMEOUT_SECONDS = 120  # every script takes under 10 s; past this node is stuck
NPM_TIMEOUT_SECONDS = 300  # npm ci of the pinned packages: ~4 s from the registry


def node_executable() -> str:
    """node, with the pinned packages installed; a clear failure (not a skip) when either is
    missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (Debian: apt-get install nodejs npm; .ci/run does it)")
    if _missing_packages() and shutil.which("npm") is not None:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            capture_output=True,
            timeout=NPM_TIMEOUT_SECONDS,
            check=False,
        )
    missing = _missing_packages()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run `npm ci --prefix {JS_DIR}`")
    return node


def _missing_packages() -> list[str]:
    return [name for name in PACKAGES if not (JS_DIR / "node_modules" / name).is_dir()]
