"""The ``[sns]`` keys that shape envelopes, end to end: a TOML file, a real broker, boto3.

``signing_cert_url_base`` must reach every envelope's SigningCertURL (ahead of
``api.public_url`` and of the publishing request's Host), and ``signature_version`` is the
SignatureVersion of every topic that sets none; SigningCertURL names the certificate itself,
beside ``signing_cert_path``, and stays served after the key changes. Each test writes a
broker.toml with the keys, loads it the way ``wharf-broker serve --config`` does, publishes to
an SQS subscription, reads the envelope and checks its signature with the certificate the
broker serves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme

from broker.config import BrokerConfig
from monitoring.configfile import load
from tests.support.broker import BrokerThread
from tests.support.sns import check_signature, fetch, queue_arn, receive_all, sns_client

CERT_BASE = "https://sns-certs.example.test:8443"  # deliberately not the broker's own address
PUBLIC_URL = "http://broker.example.test"
CERT_PATH = "/certs/wharf-test.pem"
# AWS's form: the certificate's own name, in the directory of signing_cert_path here.
SIGNED_CERT_PATH = re.compile(r"/certs/SimpleNotificationService-[0-9a-f]{32}\.pem")


def write_config(directory: Path, sns: str, api: str = "") -> Path:
    path = directory / "broker.toml"
    path.write_text(
        "[api]\n"
        'host = "127.0.0.1"\n'
        "port = 0\n"
        f"{api}\n"
        "[admin]\n"
        'host = "127.0.0.1"\n'
        "port = 0\n"
        "[storage]\n"
        f'data_dir = "{directory / "data"}"\n'
        "[sns]\n"
        f"{sns}\n"
    )
    return path


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[BrokerThread]:
    config = load(
        write_config(
            tmp_path,
            sns=(
                f'signing_cert_url_base = "{CERT_BASE}"\n'
                f'signing_cert_path = "{CERT_PATH}"\n'
                'signature_version = "2"\n'
            ),
            api=f'public_url = "{PUBLIC_URL}"',
        ),
        BrokerConfig,
    )
    assert config.sns.signing_cert_url_base == CERT_BASE  # the file, not a default
    with BrokerThread(config) as running:
        yield running


def envelope_of(broker: BrokerThread, topic_attributes: dict[str, str]) -> dict[str, Any]:
    """Publish once to a new topic through an SQS subscription; the envelope it delivered."""
    sns = sns_client(broker.endpoint)
    sqs = broker.client("json")
    name = f"t{len(topic_attributes)}-{abs(hash(json.dumps(topic_attributes))) % 10**6}"
    topic = sns.create_topic(Name=name, Attributes=topic_attributes)["TopicArn"]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn(sqs, url))
    sns.publish(TopicArn=topic, Message="configured", Subject="keys")
    (message,) = receive_all(sqs, url, 1, timeout=5)
    envelope: dict[str, Any] = json.loads(message["Body"])
    assert envelope["Type"] == "Notification"
    assert envelope["TopicArn"] == topic
    return envelope


def served_certificate(broker: BrokerThread) -> bytes:
    # The configured base names a host the tests cannot reach; the broker serves the same
    # certificate at the configured path on its own listener.
    return fetch(broker.endpoint.rstrip("/") + CERT_PATH)


def test_signing_cert_url_base_and_the_default_signature_version_reach_the_envelope(
    configured: BrokerThread,
) -> None:
    envelope = envelope_of(configured, {})
    assert envelope["SigningCertURL"].startswith(CERT_BASE + "/")
    path = envelope["SigningCertURL"].removeprefix(CERT_BASE)
    assert SIGNED_CERT_PATH.fullmatch(path)
    assert fetch(configured.endpoint.rstrip("/") + path) == served_certificate(configured)
    # api.public_url still shapes the other URLs: the cert base overrides only SigningCertURL.
    assert envelope["UnsubscribeURL"].startswith(PUBLIC_URL + "/?Action=Unsubscribe")
    assert envelope["SignatureVersion"] == "2"
    check_signature(envelope, served_certificate(configured))


def test_a_topic_signature_version_overrides_the_configured_default(
    configured: BrokerThread,
) -> None:
    envelope = envelope_of(configured, {"SignatureVersion": "1"})
    assert envelope["SignatureVersion"] == "1"
    assert SIGNED_CERT_PATH.fullmatch(envelope["SigningCertURL"].removeprefix(CERT_BASE))
    check_signature(envelope, served_certificate(configured))


def test_without_the_keys_the_request_host_and_version_1_are_used(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, sns=""), BrokerConfig)
    with BrokerThread(config) as broker:
        envelope = envelope_of(broker, {})
        assert envelope["SignatureVersion"] == "1"
        assert envelope["SigningCertURL"].startswith(broker.endpoint.rstrip("/") + "/")
        check_signature(envelope, fetch(envelope["SigningCertURL"]))


def test_envelopes_signed_before_a_key_change_still_verify(tmp_path: Path) -> None:
    """A message queued under the generated key, received after a restart with a configured
    key: its SigningCertURL still serves the certificate that signed it, and the new
    envelopes name another URL, so a subscriber caching by URL never holds a stale one."""
    config = load(write_config(tmp_path, sns=""), BrokerConfig)
    with BrokerThread(config) as broker:
        sns = sns_client(broker.endpoint)
        sqs = broker.client("json")
        topic = sns.create_topic(Name="rekeyed")["TopicArn"]
        url = sqs.create_queue(QueueName="rekeyed")["QueueUrl"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn(sqs, url))
        sns.publish(TopicArn=topic, Message="before")
    leaf = trustme.CA().issue_cert("sns.example", key_type=trustme.KeyType.RSA)
    key_file, cert_file = tmp_path / "new.key", tmp_path / "new.pem"
    leaf.private_key_pem.write_to_path(str(key_file))
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    sns_keys = f'signing_key_file = "{key_file}"\nsigning_cert_file = "{cert_file}"\n'
    config = load(write_config(tmp_path, sns=sns_keys), BrokerConfig)
    with BrokerThread(config) as broker:
        sns = sns_client(broker.endpoint)
        sqs = broker.client("json")
        sns.publish(TopicArn=topic, Message="after")
        messages = receive_all(sqs, url, 2, timeout=5)
        envelopes = {json.loads(m["Body"])["Message"]: json.loads(m["Body"]) for m in messages}
        before, after = envelopes["before"], envelopes["after"]
        assert before["SigningCertURL"] != after["SigningCertURL"]
        for envelope in (before, after):
            # The port of the first run's listener is gone: the path, on this listener.
            path = urlsplit(envelope["SigningCertURL"]).path
            check_signature(envelope, fetch(broker.endpoint.rstrip("/") + path))
        assert fetch(after["SigningCertURL"]) == cert_file.read_bytes()
        # signing_cert_path serves the current certificate.
        legacy = broker.endpoint.rstrip("/") + "/SimpleNotificationService-wharf.pem"
        assert fetch(legacy) == cert_file.read_bytes()
