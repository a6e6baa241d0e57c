"""The AWS CLI (v1, from the venv) against a real broker: the commands people type first.

Each command runs in a subprocess with only the environment given here (no user config or
credentials files), so the results do not depend on the machine's ~/.aws.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    BrokerThread,
    broker_config,
    write_credentials,
)

AWS = Path(sys.executable).with_name("aws")
pytestmark = pytest.mark.slow


def aws(
    endpoint: str,
    *args: str,
    key: tuple[str, str] = (ACCESS_KEY_ID, SECRET_ACCESS_KEY),
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
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
        [str(AWS), "--endpoint-url", endpoint, "--output", "json", "sqs", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert completed.returncode == 0, completed.stderr
    return completed


def aws_json(endpoint: str, *args: str) -> Any:
    output = aws(endpoint, *args).stdout
    return json.loads(output) if output.strip() else None


def test_the_everyday_commands(shared_broker: BrokerThread):
    endpoint = shared_broker.endpoint
    name = f"cli-{os.getpid()}"
    url = aws_json(endpoint, "create-queue", "--queue-name", name)["QueueUrl"]
    assert url == f"{endpoint}/000000000000/{name}"
    assert aws_json(endpoint, "get-queue-url", "--queue-name", name)["QueueUrl"] == url

    body = 'hello from the CLI: <&> "quoted" ünïcode'
    sent = aws_json(
        endpoint,
        "send-message",
        "--queue-url",
        url,
        "--message-body",
        body,
        "--message-attributes",
        json.dumps({"kind": {"DataType": "String", "StringValue": "greeting"}}),
    )
    assert sent["MD5OfMessageBody"] == hashlib.md5(body.encode()).hexdigest()

    attributes = aws_json(
        endpoint, "get-queue-attributes", "--queue-url", url, "--attribute-names", "All"
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1"
    assert attributes["QueueArn"].endswith(f":{name}")

    received = aws_json(
        endpoint,
        "receive-message",
        "--queue-url",
        url,
        "--message-attribute-names",
        "All",
        "--attribute-names",
        "All",
        "--wait-time-seconds",
        "1",
    )
    (message,) = received["Messages"]
    assert message["Body"] == body
    assert message["MessageId"] == sent["MessageId"]
    assert message["MessageAttributes"]["kind"]["StringValue"] == "greeting"
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"

    aws(
        endpoint, "delete-message", "--queue-url", url, "--receipt-handle", message["ReceiptHandle"]
    )
    counts = aws_json(
        endpoint,
        "get-queue-attributes",
        "--queue-url",
        url,
        "--attribute-names",
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
    )["Attributes"]
    assert counts == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
    assert url in aws_json(endpoint, "list-queues", "--queue-name-prefix", name)["QueueUrls"]
    aws(endpoint, "delete-queue", "--queue-url", url)


def test_errors_reach_the_cli_with_their_codes(shared_broker: BrokerThread):
    completed = aws(
        shared_broker.endpoint, "get-queue-url", "--queue-name", "no-such-cli-queue", check=False
    )
    assert completed.returncode != 0
    assert "AWS.SimpleQueueService.NonExistentQueue" in completed.stderr


def test_the_cli_signs_and_the_broker_checks(tmp_path: Path):
    auth = write_credentials(tmp_path)
    with BrokerThread(broker_config(tmp_path / "data", auth=auth)) as broker:
        url = aws_json(broker.endpoint, "create-queue", "--queue-name", "signed")["QueueUrl"]
        aws(broker.endpoint, "send-message", "--queue-url", url, "--message-body", "ok")
        refused = aws(
            broker.endpoint,
            "list-queues",
            key=(ACCESS_KEY_ID, "a-secret-that-is-wrong"),
            check=False,
        )
        assert refused.returncode != 0
        assert "SignatureDoesNotMatch" in refused.stderr
