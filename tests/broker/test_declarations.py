"""Queues declared in broker.toml, against the real broker process and boto3.

Each test writes a config file, starts ``python -m broker.cli serve`` on it (restarts and
SIGHUP reloads included) and looks at the queues through the API.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.broker import ACCOUNT_ID, REGION, sqs_client
from tests.support.crash_harness import broker_process, write_config
from tests.support.processes import DaemonProcess, daemon_process

Declaration = tuple[str, Mapping[str, str], Mapping[str, str]]


def arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"


def redrive(target: str, count: int = 3) -> str:
    return json.dumps({"deadLetterTargetArn": arn(target), "maxReceiveCount": count})


def declare(*queues: Declaration) -> str:
    """[[queues]] tables; JSON strings are valid TOML basic strings."""

    def table(values: Mapping[str, str]) -> str:
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "}"

    return "".join(
        f"[[queues]]\nname = {json.dumps(name)}\nattributes = {table(attributes)}\n"
        f"tags = {table(tags)}\n"
        for name, attributes, tags in queues
    )


def attributes_of(client: Any, name: str) -> dict[str, str]:
    url = client.get_queue_url(QueueName=name)["QueueUrl"]
    found: dict[str, str] = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
        "Attributes"
    ]
    return found


def tags_of(client: Any, name: str) -> dict[str, str]:
    url = client.get_queue_url(QueueName=name)["QueueUrl"]
    return dict(client.list_queue_tags(QueueUrl=url).get("Tags", {}))


async def reload(daemon: DaemonProcess, config: Path, text: str, outcome: str) -> str:
    """Rewrite the file's queues to ``text``, SIGHUP, and return the outcome's log line."""
    write_config(config.parent, text)
    start = len(daemon.log_lines)
    daemon.signal(signal.SIGHUP)
    return await daemon.wait_log(f"event=config.{outcome}", start=start)


async def refused_start(tmp_path: Path, text: str) -> str:
    """Start the broker on a file that must not start; its error output, whole."""
    config = write_config(tmp_path, text)
    run = tmp_path / "refused"
    run.mkdir(exist_ok=True)
    async with daemon_process("broker", config, run) as daemon:
        with trio.fail_after(30):
            await daemon.process.wait()
    assert daemon.process.returncode not in (0, None)
    assert not any("event=daemon.ready" in line for line in daemon.log_lines)
    assert not any("Traceback" in line for line in daemon.log_lines)
    return "\n".join(daemon.log_lines)


async def test_dead_letter_targets_declared_further_down_are_created_first(tmp_path: Path):
    text = declare(
        ("orders", {"RedrivePolicy": redrive("orders-retry")}, {}),
        ("orders-retry", {"RedrivePolicy": redrive("orders-dlq", 5)}, {}),
        ("orders-dlq", {"MessageRetentionPeriod": "1209600"}, {}),
        ("jobs.fifo", {"FifoQueue": "true", "RedrivePolicy": redrive("jobs-dlq.fifo")}, {}),
        ("jobs-dlq.fifo", {"FifoQueue": "true"}, {}),
    )
    async with broker_process(tmp_path, 1, text) as (daemon, endpoint):
        client = sqs_client(endpoint)
        policy = json.loads(attributes_of(client, "orders")["RedrivePolicy"])
        assert policy["deadLetterTargetArn"] == arn("orders-retry")
        retry = client.get_queue_url(QueueName="orders-retry")["QueueUrl"]
        sources = client.list_dead_letter_source_queues(QueueUrl=retry)["queueUrls"]
        assert sources == [client.get_queue_url(QueueName="orders")["QueueUrl"]]
        assert attributes_of(client, "orders-dlq")["MessageRetentionPeriod"] == "1209600"
        jobs = json.loads(attributes_of(client, "jobs.fifo")["RedrivePolicy"])
        assert jobs["deadLetterTargetArn"] == arn("jobs-dlq.fifo")
        created = [line for line in daemon.log_lines if "event=queue.created" in line]
        order = [line.split("queue=")[1].split()[0] for line in created]
        assert order.index("orders-dlq") < order.index("orders-retry") < order.index("orders")


@pytest.mark.parametrize(
    ("queues", "reason"),
    [
        (
            declare(
                ("a", {"RedrivePolicy": redrive("b")}, {}),
                ("b", {"RedrivePolicy": redrive("a")}, {}),
            ),
            "queues[0].attributes.RedrivePolicy: the declared dead-letter targets form a cycle "
            "(queues[0] 'a' -> queues[1] 'b' -> queues[0] 'a')",
        ),
        (
            declare(("self", {"RedrivePolicy": redrive("self")}, {})),
            "queues[0].attributes.RedrivePolicy: the declared dead-letter targets form a cycle",
        ),
        (
            declare(("fine", {}, {}), ("bad", {"VisibilityTimeout": "43201"}, {})),
            "queue 'bad': attributes.VisibilityTimeout: InvalidAttributeValue: "
            "Invalid value for the parameter VisibilityTimeout. - at `$.queues[1]`",
        ),
        (
            declare(("q", {"RedrivePolicy": '{"maxReceiveCount": 3}'}, {})),
            "queue 'q': attributes.RedrivePolicy: InvalidParameterValue:",
        ),
        (
            declare(("no.fifo", {}, {})),
            "name 'no.fifo': Can only include alphanumeric characters",
        ),
        (
            declare(("missing", {"RedrivePolicy": redrive("nowhere")}, {})),
            "queues[0].attributes.RedrivePolicy (queue 'missing'): InvalidParameterValue: "
            "Value {",  # ... Reason: Dead letter target does not exist.
        ),
    ],
    ids=["cycle", "self-cycle", "bad-value", "bad-policy", "bad-name", "missing-target"],
)
async def test_a_bad_declaration_stops_the_start_naming_file_key_and_reason(
    tmp_path: Path, queues: str, reason: str
):
    output = await refused_start(tmp_path, queues)
    assert f"{tmp_path / 'broker.toml'}: " in output
    assert reason in output
    if "missing" in queues:
        assert "Dead letter target does not exist" in output
    # check-config refuses what it can know without the live queues, the same way.
    checked = await trio.run_process(
        [sys.executable, "-m", "broker.cli", "check-config", str(tmp_path / "broker.toml")],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert (checked.returncode == 0) == ("missing" in queues), checked.stderr


async def test_a_dead_letter_target_may_be_an_existing_undeclared_queue(tmp_path: Path):
    async with broker_process(tmp_path, 1) as (_, endpoint):
        sqs_client(endpoint).create_queue(QueueName="made-by-api")
    text = declare(("declared", {"RedrivePolicy": redrive("made-by-api")}, {}))
    async with broker_process(tmp_path, 2, text) as (_, endpoint):
        attributes = attributes_of(sqs_client(endpoint), "declared")
        policy = json.loads(attributes["RedrivePolicy"])
        assert policy["deadLetterTargetArn"] == arn("made-by-api")
    await trio.sleep(1.1)  # LastModifiedTimestamp counts seconds
    async with broker_process(tmp_path, 3, text) as (_, endpoint):
        again = attributes_of(sqs_client(endpoint), "declared")
        # The same file again writes nothing: the queue was not modified.
        assert again["LastModifiedTimestamp"] == attributes["LastModifiedTimestamp"]


async def test_a_declared_queue_deleted_just_before_a_restart_is_recreated(tmp_path: Path):
    text = declare(("orders", {"VisibilityTimeout": "45"}, {"team": "shop"}))
    async with broker_process(tmp_path, 1, text) as (daemon, endpoint):
        client = sqs_client(endpoint)
        url = client.get_queue_url(QueueName="orders")["QueueUrl"]
        client.send_message(QueueUrl=url, MessageBody="gone with the queue")
        client.delete_queue(QueueUrl=url)
    async with broker_process(tmp_path, 2, text) as (daemon, endpoint):
        client = sqs_client(endpoint)
        attributes = attributes_of(client, "orders")
        assert attributes["VisibilityTimeout"] == "45"
        assert attributes["ApproximateNumberOfMessages"] == "0"
        assert tags_of(client, "orders") == {"team": "shop"}
        line = await daemon.wait_log("event=queue.recreated")
        assert "queue=orders" in line
        # The API's own CreateQueue of a recently deleted name is still refused.
        client.delete_queue(QueueUrl=client.get_queue_url(QueueName="orders")["QueueUrl"])
        with pytest.raises(client.exceptions.QueueDeletedRecently):
            client.create_queue(QueueName="orders")


async def test_reload_applies_changes_keeps_removed_queues_and_refuses_bad_files(
    tmp_path: Path,
):
    first = declare(
        ("kept", {}, {}),
        ("changed", {"VisibilityTimeout": "30"}, {"team": "a"}),
    )
    second = declare(
        ("added", {"RedrivePolicy": redrive("changed")}, {}),
        ("changed", {"VisibilityTimeout": "45"}, {"team": "b"}),
    )
    async with broker_process(tmp_path, 1, first) as (daemon, endpoint):
        client = sqs_client(endpoint)
        config = tmp_path / "broker.toml"
        changed = client.get_queue_url(QueueName="changed")["QueueUrl"]
        client.tag_queue(QueueUrl=changed, Tags={"owner": "api"})
        client.send_message(QueueUrl=changed, MessageBody="stays")

        await reload(daemon, config, second, "reloaded")
        assert attributes_of(client, "changed")["VisibilityTimeout"] == "45"
        assert tags_of(client, "changed") == {"team": "b", "owner": "api"}
        assert attributes_of(client, "changed")["ApproximateNumberOfMessages"] == "1"
        assert json.loads(attributes_of(client, "added")["RedrivePolicy"])["maxReceiveCount"] == 3
        client.get_queue_url(QueueName="kept")  # removed from the file, still there
        undeclared = await daemon.wait_log("event=queue.undeclared")
        assert "queue=kept" in undeclared

        # A value the schema refuses: the file, the key and the reason; nothing changes.
        bad_value = declare(("changed", {"VisibilityTimeout": "-1"}, {}))
        line = await reload(daemon, config, bad_value, "reload_refused")
        assert f"file={config}" in line
        assert "attributes.VisibilityTimeout" in line
        assert "queues[0]" in line
        # One the live queues refuse (a target that does not exist): nothing is applied,
        # not even the declarations before it.
        missing = declare(
            ("changed", {"VisibilityTimeout": "50"}, {}),
            ("orphan", {"RedrivePolicy": redrive("nowhere")}, {}),
        )
        line = await reload(daemon, config, missing, "reload_refused")
        assert f"file={config}" in line
        assert "queues[1].attributes.RedrivePolicy" in line
        assert "Dead letter target does not exist" in line
        assert attributes_of(client, "changed")["VisibilityTimeout"] == "45"
        with pytest.raises(client.exceptions.QueueDoesNotExist):
            client.get_queue_url(QueueName="orphan")

    # At the next start the file's values apply again, and the removed queue is still there.
    third = declare(("changed", {"VisibilityTimeout": "60"}, {}))
    async with broker_process(tmp_path, 2, third) as (daemon, endpoint):
        client = sqs_client(endpoint)
        assert attributes_of(client, "changed")["VisibilityTimeout"] == "60"
        assert attributes_of(client, "added")["VisibilityTimeout"] == "30"
        client.get_queue_url(QueueName="kept")
        assert any("event=queue.declaration_applied" in line for line in daemon.log_lines)
        # "added" was declared by the reload before the restart; dropped since, it is kept.
        undeclared = [line for line in daemon.log_lines if "event=queue.undeclared" in line]
        assert len(undeclared) == 1
        assert "queue=added" in undeclared[0]
