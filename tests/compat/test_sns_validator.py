"""AWS's own SNS message validator accepts wharf's envelopes, and refuses altered ones.

sns-validator (github.com/aws/aws-js-sns-message-validator, pinned in tests/compat/js) is
what many subscribers run before trusting a message. Here it checks envelopes collected from
a real broker that serves HTTPS: Notifications delivered to an SQS queue and to an HTTP
endpoint, with and without a Subject, signed with SignatureVersion 1 and 2; the
SubscriptionConfirmation and UnsubscribeConfirmation an HTTP endpoint gets. It fetches the
signing certificate from each envelope's SigningCertURL over HTTPS (the broker's certificate
trusted through NODE_EXTRA_CA_CERTS), as a subscriber would. Envelopes altered after signing
must be refused, so the check can fail. One envelope type is checked differently: see
VALIDATOR_SIGNS_DIFFERENTLY.

The tests' own verifier (tests/support/sns.py) was written here from AWS's documentation;
this one was not.
"""

from __future__ import annotations

import copy
import json
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from broker.config import ApiSettings, BrokerConfig
from tests.support.broker import (
    BrokerThread,
    broker_config,
    https_client,
    tls_settings,
)
from tests.support.js import JS_DIR, NODE_TIMEOUT_SECONDS, node_executable
from tests.support.sns import Endpoint, check_signature, receive_all

pytestmark = pytest.mark.slow

HOST_PATTERN = r"^127\.0\.0\.1:\d+$"  # the broker's host, in place of sns.<region>.amazonaws.com


def validate(envelopes: list[dict[str, Any]], ca_file: str) -> list[dict[str, Any]]:
    """Run sns-validator over ``envelopes``; one result per envelope, in order."""
    completed = subprocess.run(
        [node_executable(), "validate.mjs"],
        cwd=JS_DIR,
        input=json.dumps({"hostPattern": HOST_PATTERN, "envelopes": envelopes}),
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "NODE_EXTRA_CA_CERTS": ca_file},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    results: list[dict[str, Any]] = json.loads(completed.stdout)
    return results


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], str]]:
    """Envelopes of every kind from a broker on HTTPS, by name; and the CA file to trust."""
    directory = tmp_path_factory.mktemp("sns-validator")
    ca = trustme.CA()
    ca_file = str(directory / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    base = broker_config(directory / "data")
    config = BrokerConfig(
        api=ApiSettings(port=0, tls=tls_settings(ca, directory)),
        admin=base.admin,
        storage=base.storage,
    )
    with BrokerThread(config) as broker, Endpoint() as endpoint:
        host, port = broker.api
        https = f"https://{host}:{port}"
        sns, sqs = https_client("sns", https, ca_file), https_client("sqs", https, ca_file)
        envelopes: dict[str, Any] = {}

        for version in ("1", "2"):
            topic = sns.create_topic(
                Name=f"validated-v{version}", Attributes={"SignatureVersion": version}
            )["TopicArn"]
            url = sqs.create_queue(QueueName=f"validated-v{version}")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"])
            sns.publish(TopicArn=topic, Message=f"to a queue, v{version}", Subject="subject")
            sns.publish(TopicArn=topic, Message=f'no subject, v{version}: "ü" <&>')
            bodies = [json.loads(m["Body"]) for m in receive_all(sqs, url, 2)]
            for envelope in bodies:
                kind = "subject" if "Subject" in envelope else "plain"
                envelopes[f"sqs notification {kind} v{version}"] = envelope

        topic = sns.create_topic(Name="validated-http")["TopicArn"]
        subscription = sns.subscribe(
            TopicArn=topic, Protocol="http", Endpoint=endpoint.url, ReturnSubscriptionArn=True
        )["SubscriptionArn"]
        (confirmation,) = endpoint.wait_for(1)
        envelopes["http subscription confirmation"] = confirmation.envelope()
        sns.confirm_subscription(TopicArn=topic, Token=confirmation.envelope()["Token"])
        sns.publish(TopicArn=topic, Message="to an endpoint", Subject="hello")
        notification = endpoint.wait_for(1, match=lambda r: r.envelope()["Type"] == "Notification")[
            0
        ]
        envelopes["http notification"] = notification.envelope()
        sns.unsubscribe(SubscriptionArn=subscription)
        farewell = endpoint.wait_for(
            1, match=lambda r: r.envelope()["Type"] == "UnsubscribeConfirmation"
        )[0]
        envelopes["http unsubscribe confirmation"] = farewell.envelope()

        # The validator fetches SigningCertURL from the broker: it must still be serving.
        yield envelopes, ca_file


def test_the_collection_has_every_kind(collected: tuple[dict[str, Any], str]) -> None:
    envelopes, _ = collected
    assert sorted(envelopes) == sorted(
        [
            *(f"sqs notification {k} v{v}" for k in ("subject", "plain") for v in ("1", "2")),
            "http subscription confirmation",
            "http notification",
            "http unsubscribe confirmation",
        ]
    )
    for name, envelope in envelopes.items():
        assert envelope["SigningCertURL"].startswith("https://127.0.0.1:"), name
        assert envelope["SignatureVersion"] == ("2" if name.endswith("v2") else "1"), name


# sns-validator 0.3.5 builds an UnsubscribeConfirmation's string to sign from the Notification
# key list (no Token), unlike AWS's documentation (sns-verify-signature-of-message) and AWS's
# PHP validator (aws-php-sns-message-validator signs every key present, Token included), which
# sign it as a SubscriptionConfirmation; wharf follows the documentation, so that envelope is
# checked by the tests' documentation-based verifier.
VALIDATOR_SIGNS_DIFFERENTLY = "http unsubscribe confirmation"


def test_aws_validator_accepts_every_envelope(collected: tuple[dict[str, Any], str]) -> None:
    envelopes, ca_file = collected
    names = [name for name in envelopes if name != VALIDATOR_SIGNS_DIFFERENTLY]
    results = validate([envelopes[name] for name in names], ca_file)
    assert dict(zip(names, results, strict=True)) == {name: {"valid": True} for name in names}


def test_the_unsubscribe_confirmation_is_signed_as_documented(
    collected: tuple[dict[str, Any], str],
) -> None:
    envelopes, _ = collected
    envelope = envelopes[VALIDATOR_SIGNS_DIFFERENTLY]
    check_signature(envelope, fetch_pem(envelope["SigningCertURL"], collected[1]))


def fetch_pem(url: str, ca_file: str) -> bytes:
    context = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        body: bytes = response.read()
        return body


def altered(envelope: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    changed = copy.deepcopy(envelope)
    changed[key] = value
    return changed


def test_aws_validator_refuses_altered_envelopes(collected: tuple[dict[str, Any], str]) -> None:
    envelopes, ca_file = collected
    notification = envelopes["sqs notification subject v1"]
    confirmation = envelopes["http subscription confirmation"]
    cases = {
        "message": altered(notification, "Message", notification["Message"] + "!"),
        "subject": altered(notification, "Subject", "another subject"),
        "timestamp": altered(notification, "Timestamp", "2020-01-01T00:00:00.000Z"),
        "topic": altered(notification, "TopicArn", notification["TopicArn"] + "x"),
        "version 1 signature read as version 2": altered(notification, "SignatureVersion", "2"),
        "token": altered(confirmation, "Token", confirmation["Token"] + "0"),
        "subscribe url": altered(confirmation, "SubscribeURL", confirmation["SubscribeURL"] + "&x"),
    }
    results = validate(list(cases.values()), ca_file)
    assert dict(zip(cases, results, strict=True)) == {
        name: {"valid": False, "error": "The message signature is invalid."} for name in cases
    }
