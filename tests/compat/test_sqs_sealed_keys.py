"""boto3 against a real broker: messages sealed at rest that cannot be opened any more.

A key retired from the key file too early (or replaced under the same id) leaves messages no
receive can open. Each is left as a consumer that took it and failed would leave it -- hidden
for its visibility timeout, counted, dead-lettered by a RedrivePolicy -- and the other
messages of its queue flow; a receive fails only when it opened none of the messages it took.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from botocore.exceptions import ClientError

from broker.config import BrokerConfig, StorageSettings
from monitoring.configfile import ConfigError
from tests.support.broker import BrokerThread, broker_config

K1 = os.urandom(32)
K1_REPLACED = os.urandom(32)  # another key listed under k1's id
K2 = os.urandom(32)
OLD = "sealed under k1"
NEW = [f"new {i}" for i in range(20)]


def write_key_file(path: Path, sse: str, keys: dict[str, bytes]) -> None:
    lines = [f'sse_key_id = "{sse}"']
    for key_id, secret in keys.items():
        lines += ["[[keys]]", f'id = "{key_id}"', f'key = "{base64.b64encode(secret).decode()}"']
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


@dataclass
class SealedBroker:
    broker: BrokerThread
    config: BrokerConfig
    key_file: Path
    sqs: Any

    def keys(self, sse: str, keys: dict[str, bytes]) -> None:
        """Write the key file and reload it (as SIGHUP does)."""
        write_key_file(self.key_file, sse, keys)
        self.broker.call(self.broker.app.reload, self.config)

    def arn(self, url: str) -> str:
        attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(attributes["Attributes"]["QueueArn"])

    def counts(self, url: str) -> tuple[int, int]:
        """(visible, not visible) messages of a queue."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        return int(attributes["Attributes"][names[0]]), int(attributes["Attributes"][names[1]])

    def receive(self, url: str, visibility_timeout: int) -> list[dict[str, Any]]:
        """Receive up to 10 messages, and delete them."""
        reply = self.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=visibility_timeout,
            AttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = reply.get("Messages", [])
        for message in messages:
            self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return messages

    def receive_error(self, url: str, visibility_timeout: int) -> tuple[str, int]:
        with pytest.raises(ClientError) as info:
            self.receive(url, visibility_timeout)
        response = info.value.response
        return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]

    def log(self) -> str:
        return str(self.broker.daemon.log_output.getvalue())  # type: ignore[attr-defined]

    def log_lines(self, event: str) -> list[str]:
        return [line for line in self.log().splitlines() if f"event={event} " in line]


@pytest.fixture
def sealed(tmp_path: Path) -> Iterator[SealedBroker]:
    """A broker whose key file lists k1 only, as SSE-SQS key."""
    key_file = tmp_path / "keys.toml"
    write_key_file(key_file, "k1", {"k1": K1})
    config = broker_config(tmp_path / "data")
    storage = StorageSettings(data_dir=config.storage.data_dir, key_file=str(key_file))
    config = msgspec.structs.replace(config, storage=storage)
    with BrokerThread(config) as broker:
        yield SealedBroker(broker, config, key_file, broker.client())


def send_old_then_new(sealed: SealedBroker, urls: list[str]) -> dict[str, str]:
    """Send one message under k1, rotate to k2, send 20 under k2: the old message of each
    queue comes first. Returns {queue URL: the old message's id}."""
    sqs = sealed.sqs
    old = {url: sqs.send_message(QueueUrl=url, MessageBody=OLD)["MessageId"] for url in urls}
    sealed.keys("k2", {"k1": K1, "k2": K2})
    for url in urls:
        for start in (0, 10):
            entries = [
                {"Id": str(i), "MessageBody": body}
                for i, body in enumerate(NEW[start : start + 10])
            ]
            assert not sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
    return old


def test_a_message_whose_key_was_retired_does_not_hold_up_the_others(sealed):
    sqs = sealed.sqs
    url = sqs.create_queue(QueueName="rotated")["QueueUrl"]
    [old_id] = send_old_then_new(sealed, [url]).values()
    sealed.keys("k2", {"k2": K2})  # k1 retired while a message still needs it

    # Each receive takes the old message first (VisibilityTimeout 0: back at once) and
    # returns the others it took.
    received = [sealed.receive(url, 0) for _ in range(3)]
    assert [len(batch) for batch in received] == [9, 9, 2]
    bodies = [m["Body"] for batch in received for m in batch]
    assert sorted(bodies) == sorted(NEW)
    # Only the old message left: a receive that opens none of its messages says why.
    assert sealed.receive_error(url, 0) == ("KMS.NotFoundException", 400)
    # Logged once (four receives took it within the minute): the queue, the message, its key.
    [line] = sealed.log_lines("receive.unopened")
    for field in ("queue=rotated", f"message_id={old_id}", "key_id=k1", "cause=key_unavailable"):
        assert field in line.split()
    assert base64.b64encode(K1).decode() not in sealed.log()

    # The key back: the message opens, and shows every receive that took it.
    sealed.keys("k2", {"k1": K1, "k2": K2})
    [message] = sealed.receive(url, 30)
    assert (message["MessageId"], message["Body"]) == (old_id, OLD)
    assert message["Attributes"]["ApproximateReceiveCount"] == "5"


def test_a_message_that_cannot_be_opened_stays_hidden_for_its_visibility_timeout(sealed):
    sqs = sealed.sqs
    url = sqs.create_queue(QueueName="hidden")["QueueUrl"]
    send_old_then_new(sealed, [url])
    sealed.keys("k2", {"k2": K2})
    assert len(sealed.receive(url, 30)) == 9  # the old message taken too, and kept hidden
    assert len(sealed.receive(url, 30)) == 10
    assert len(sealed.receive(url, 30)) == 1
    assert sealed.receive(url, 30) == []  # not given back: no error, nothing to take
    assert sealed.counts(url) == (0, 1)


def test_a_message_that_cannot_be_opened_reaches_the_dead_letter_queue(sealed):
    sqs = sealed.sqs
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    policy = {"deadLetterTargetArn": sealed.arn(dlq), "maxReceiveCount": "2"}
    url = sqs.create_queue(QueueName="redriven", Attributes={"RedrivePolicy": json.dumps(policy)})
    url = url["QueueUrl"]
    [old_id] = send_old_then_new(sealed, [url]).values()
    sealed.keys("k2", {"k2": K2})

    # Taken twice without being opened; the third receive moves it to the dead-letter queue.
    received = [sealed.receive(url, 0) for _ in range(3)]
    assert [len(batch) for batch in received] == [9, 9, 2]
    assert sorted(m["Body"] for batch in received for m in batch) == sorted(NEW)
    assert sealed.receive(url, 0) == []
    assert sealed.counts(url) == (0, 0)
    assert sealed.counts(dlq) == (1, 0)
    assert sealed.receive_error(dlq, 0) == ("KMS.NotFoundException", 400)

    sealed.keys("k2", {"k1": K1, "k2": K2})
    [message] = sealed.receive(dlq, 30)
    assert (message["Body"], message["Attributes"]["DeadLetterQueueSourceArn"]) == (
        OLD,
        sealed.arn(url),
    )
    assert message["MessageId"] == old_id


def test_a_message_sealed_with_another_key_under_the_same_id_is_skipped(sealed):
    # The key file now lists other key material under k1 (a mistake, or a tampered file):
    # what the first k1 sealed fails authentication.
    sqs = sealed.sqs
    url = sqs.create_queue(QueueName="replaced")["QueueUrl"]
    old_id = sqs.send_message(QueueUrl=url, MessageBody=OLD)["MessageId"]
    # A reload refuses other material under a listed id; taking the id out first does not.
    sealed.keys("k2", {"k2": K2})
    sealed.keys("k1", {"k1": K1_REPLACED})
    for body in NEW[:3]:
        sqs.send_message(QueueUrl=url, MessageBody=body)

    assert sorted(m["Body"] for m in sealed.receive(url, 0)) == NEW[:3]
    # Only it left: the retryable answer as before, and it is not taken first forever.
    assert sealed.receive_error(url, 30) == ("ServiceUnavailable", 503)
    assert sealed.receive(url, 30) == []
    assert sealed.counts(url) == (0, 1)
    [line] = sealed.log_lines("receive.unopened")
    for field in (f"message_id={old_id}", "key_id=k1", "cause=authentication_failed"):
        assert field in line.split()
    assert base64.b64encode(K1_REPLACED).decode() not in sealed.log()


def test_a_reload_refuses_other_key_material_under_an_id_in_use_and_warns_of_removals(sealed):
    # Regenerating a key under its old id (a script run twice, a copy from another host):
    # refused, or every message sealed with the old material would fail authentication.
    sqs = sealed.sqs
    url = sqs.create_queue(QueueName="orders")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=OLD)
    with pytest.raises(ConfigError, match="key 'k1' now has other key material"):
        sealed.keys("k1", {"k1": K1_REPLACED})
    assert base64.b64encode(K1_REPLACED).decode() not in sealed.log()
    sqs.send_message(QueueUrl=url, MessageBody=NEW[0])  # still sealed with the running k1
    assert sorted(m["Body"] for m in sealed.receive(url, 30)) == sorted([OLD, NEW[0]])

    # Retiring a key is allowed (README: once no message uses it) and said.
    sealed.keys("k2", {"k1": K1, "k2": K2})
    assert sealed.log_lines("storage.key_removed") == []
    sealed.keys("k2", {"k2": K2})
    [line] = sealed.log_lines("storage.key_removed")
    assert "key_id=k1" in line.split()


def keyed_config(tmp_path: Path) -> tuple[Path, Path, BrokerConfig]:
    """A data directory, the key file's path, and a config naming both."""
    data_dir = tmp_path / "data"
    key_file = tmp_path / "keys.toml"
    config = broker_config(data_dir)
    storage = StorageSettings(data_dir=config.storage.data_dir, key_file=str(key_file))
    return data_dir, key_file, msgspec.structs.replace(config, storage=storage)


def test_a_start_refuses_other_key_material_under_an_id_and_warns_of_removals(tmp_path):
    # The key file rewritten while the broker was stopped (a configuration tool that
    # generates the key on each run, then restarts the service): what the reload refuses,
    # the start refuses too; a key taken out is said.
    data_dir, key_file, config = keyed_config(tmp_path)
    toml = tmp_path / "broker.toml"
    toml.write_text(
        f'[api]\nport = 0\n[admin]\nport = 0\n[storage]\ndata_dir = "{data_dir}"\n'
        f'key_file = "{key_file}"\n'
    )
    write_key_file(key_file, "k1", {"k1": K1, "k2": K2})
    with BrokerThread(config) as broker:
        sqs = broker.client()
        url = sqs.create_queue(QueueName="orders")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=OLD)

    write_key_file(key_file, "k1", {"k1": K1_REPLACED, "k2": K2})
    refused = subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"wharf-broker: cannot start: {key_file}: key 'k1' now has other")
    assert base64.b64encode(K1_REPLACED).decode() not in refused.stderr

    write_key_file(key_file, "k1", {"k1": K1})  # k2 retired (no message used it)
    with BrokerThread(config) as broker:
        sqs = broker.client()
        [message] = sqs.receive_message(QueueUrl=url)["Messages"]
        assert message["Body"] == OLD
        log = broker.daemon.log_output.getvalue()  # type: ignore[attr-defined]
    [line] = [line for line in log.splitlines() if "event=storage.key_removed " in line]
    assert "key_id=k2" in line.split()


def test_a_start_that_fails_remembers_none_of_its_keys(tmp_path):
    # A start that failed after its key check (here: its admin port taken) sealed nothing:
    # the key it added must not be held against the corrected key file of the next start.
    data_dir, key_file, config = keyed_config(tmp_path)
    write_key_file(key_file, "k1", {"k1": K1})
    with BrokerThread(config) as broker:
        sqs = broker.client()
        url = sqs.create_queue(QueueName="orders")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=OLD)

    write_key_file(key_file, "k1", {"k1": K1, "k2": K2})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        toml = tmp_path / "broker.toml"
        toml.write_text(
            f"[api]\nport = 0\n[admin]\nport = {taken.getsockname()[1]}\n[storage]\n"
            f'data_dir = "{data_dir}"\nkey_file = "{key_file}"\n'
        )
        failed = subprocess.run(
            [sys.executable, "-m", "broker.cli", "serve", "--config", str(toml)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert failed.returncode == 1, failed.stderr

    write_key_file(key_file, "k1", {"k1": K1, "k2": K1_REPLACED})  # k2 corrected
    with BrokerThread(config) as broker:
        [message] = broker.client().receive_message(QueueUrl=url)["Messages"]
    assert message["Body"] == OLD
