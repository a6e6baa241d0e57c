"""boto3 against a broker that signs in a signing process: killed mid-stream, nothing is lost.

Publishes from several clients at once to a topic with two enveloped SQS subscriptions while
the signing process is SIGKILLed: every acknowledged publish reaches both queues with a
signature that the served certificate verifies (the test's own string to sign), the broker
starts a new signing process, and its metrics say where signatures were made.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from broker.config import SnsSettings
from tests.support.broker import BrokerThread, broker_config
from tests.support.sns import check_signature, fetch, queue_arn, receive_all, sns_client

CLIENTS = 4
PUBLISHES_PER_CLIENT = 40


def signature_counts(broker: BrokerThread) -> dict[str, float]:
    family = broker.metrics()["wharf_sns_signatures"]
    return {
        sample.labels["signer"]: sample.value
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def topic_with_queues(broker: BrokerThread, count: int) -> tuple[Any, Any, str, list[str]]:
    """An SNS and an SQS client, a topic, and ``count`` queues subscribed with envelopes."""
    sns = sns_client(broker.endpoint)
    sqs = broker.client("json")
    topic = sns.create_topic(Name="signed")["TopicArn"]
    urls = [sqs.create_queue(QueueName=f"copy-{n}")["QueueUrl"] for n in range(count)]
    for url in urls:
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn(sqs, url))
    return sns, sqs, topic, urls


def signing_pids(broker: BrokerThread) -> list[int]:
    signing = broker.app.signing
    assert signing is not None
    return signing.pids


def wait_for_pids(broker: BrokerThread, condition: Any) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = broker.call_sync(signing_pids, broker)
        if condition(pids):
            return pids
        time.sleep(0.05)
    raise AssertionError(f"signing processes never reached the expected state: {pids}")


def test_a_killed_signing_process_loses_no_publish(tmp_path: Path) -> None:
    config = broker_config(tmp_path / "data", sns=SnsSettings(signing_processes=1))
    with BrokerThread(config) as broker:
        sns, sqs, topic, urls = topic_with_queues(broker, 2)
        sns.publish(TopicArn=topic, Message="first")  # starts the signing process
        (pid,) = wait_for_pids(broker, lambda pids: len(pids) == 1)
        acknowledged: list[str] = []
        lock = threading.Lock()

        def publish(client: int) -> None:
            for number in range(PUBLISHES_PER_CLIENT):
                message = f"{client}-{number}"
                sns.publish(TopicArn=topic, Message=message)
                with lock:
                    acknowledged.append(message)

        threads = [threading.Thread(target=publish, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        while len(acknowledged) < PUBLISHES_PER_CLIENT:  # mid-stream
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        for thread in threads:
            thread.join(120)
        assert len(acknowledged) == CLIENTS * PUBLISHES_PER_CLIENT
        certificates: dict[str, bytes] = {}
        for url in urls:
            copies = receive_all(sqs, url, len(acknowledged) + 1, timeout=30)
            envelopes = [json.loads(copy["Body"]) for copy in copies]
            assert sorted(e["Message"] for e in envelopes) == sorted([*acknowledged, "first"])
            for envelope in envelopes:
                cert_url = envelope["SigningCertURL"]
                if cert_url not in certificates:
                    certificates[cert_url] = fetch(cert_url)
                check_signature(envelope, certificates[cert_url])
        (new_pid,) = wait_for_pids(broker, lambda pids: len(pids) == 1 and pids != [pid])
        assert new_pid != pid
        counts = signature_counts(broker)
        assert counts["process"] > 0
        assert counts["process"] + counts["event_loop"] == len(acknowledged) + 1


def test_none_configured_signs_on_the_event_loop(tmp_path: Path) -> None:
    config = broker_config(tmp_path / "data", sns=SnsSettings(signing_processes=0))
    with BrokerThread(config) as broker:
        sns, sqs, topic, (url,) = topic_with_queues(broker, 1)
        for number in range(3):
            sns.publish(TopicArn=topic, Message=str(number))
        assert len(receive_all(sqs, url, 3)) == 3
        assert broker.call_sync(signing_pids, broker) == []
        assert signature_counts(broker) == {"process": 0.0, "event_loop": 3.0}
