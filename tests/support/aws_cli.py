"""The AWS CLI (v1, from the venv) as a subprocess, with nothing from the machine's ~/.aws.

Each command runs with only the environment given here (no user config or credentials
files), so results do not depend on the machine, and with one attempt (no retries that
would hide an error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.broker import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

AWS = Path(sys.executable).with_name("aws")


def aws(
    endpoint: str,
    service: str,
    *args: str,
    key: tuple[str, str] = (ACCESS_KEY_ID, SECRET_ACCESS_KEY),
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``aws --endpoint-url ENDPOINT --output json SERVICE ARGS...``."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": "/nonexistent",
        "AWS_ACCESS_KEY_ID": key[0],
        "AWS_SECRET_ACCESS_KEY": key[1],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_PAGER": "",
    }
    completed = subprocess.run(
        [str(AWS), "--endpoint-url", endpoint, "--output", "json", service, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert completed.returncode == 0, completed.stderr
    return completed


def aws_json(endpoint: str, service: str, *args: str) -> Any:
    """The command's JSON output (None when it printed nothing)."""
    output = aws(endpoint, service, *args).stdout
    return json.loads(output) if output.strip() else None


def refused(endpoint: str, service: str, *args: str) -> str:
    """Run a command the broker must refuse; its stderr (where the CLI prints the code)."""
    completed = aws(endpoint, service, *args, check=False)
    assert completed.returncode != 0, completed.stdout
    return completed.stderr
