"""A captured SendMessage cannot be replayed as another action by swapping its X-Amz-Target.

The awsJson protocol takes the action from the ``X-Amz-Target`` header, so a signature that
does not cover that header does not say what the request does. boto3 against a real broker
that checks signatures: boto3's own signer (botocore's SigV4Auth) is made to leave the target
out of SignedHeaders, as a hand-written signer might, and what it sent is replayed on a raw
socket as PurgeQueue and DeleteQueue of the same ``{"QueueUrl": ...}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import botocore.exceptions
import botocore.parsers
import pytest

from tests.support.broker import BrokerThread, broker_config, sqs_client, write_credentials

pytestmark = pytest.mark.slow

SWAPPED_ACTIONS = ("PurgeQueue", "DeleteQueue", "SendMessage")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerThread]:
    """A broker that checks signatures against the test key."""
    directory = tmp_path_factory.mktemp("replay")
    auth = write_credentials(directory)
    with BrokerThread(broker_config(directory / "data", auth=auth)) as broker:
        yield broker


class Capture:
    """Records the SendMessage requests a boto3 client sends, exactly as they leave it.

    With ``unsigned_target``, the client's signer never sees ``X-Amz-Target`` (it is taken
    off before signing and put back before sending), so SignedHeaders leaves it out.
    """

    def __init__(self, client: Any, *, unsigned_target: bool) -> None:
        self.sent: list[tuple[list[tuple[str, str]], bytes]] = []
        self._target = ""
        events = client.meta.events
        if unsigned_target:
            events.register("before-sign.sqs.SendMessage", self._take_target)
        events.register("before-send.sqs.SendMessage", self._record)

    def _take_target(self, request: Any, **_: Any) -> None:
        self._target = request.headers["X-Amz-Target"]
        del request.headers["X-Amz-Target"]

    def _record(self, request: Any, **_: Any) -> None:
        if self._target:
            request.headers["X-Amz-Target"] = self._target
        headers = [
            (str(name), value.decode() if isinstance(value, bytes) else str(value))
            for name, value in request.headers.items()
        ]
        body = request.body if isinstance(request.body, bytes) else request.body.encode()
        self.sent.append((headers, body))


def replay(
    broker: BrokerThread, captured: tuple[list[tuple[str, str]], bytes], target: str
) -> tuple[int, dict[str, Any]]:
    """Send a captured request again with ``target`` as its X-Amz-Target: (status, error)."""
    headers, body = captured
    # The raw client writes Host (the one botocore signed: 127.0.0.1:port) and Content-Length.
    kept = [(k, v) for k, v in headers if k.lower() not in ("host", "content-length")]
    swapped = [(k, target if k.lower() == "x-amz-target" else v) for k, v in kept]
    status, response_headers, answer = broker.http("POST", "/", headers=swapped, body=body)
    raw = {"status_code": status, "headers": response_headers, "body": answer}
    parsed: dict[str, Any] = botocore.parsers.create_parser("json").parse(raw, None)
    return status, parsed.get("Error", {})


def bodies(client: Any, url: str) -> list[str]:
    got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    return sorted(message["Body"] for message in got.get("Messages", []))


def test_a_send_message_replayed_with_another_target_is_refused(secured: BrokerThread):
    owner = secured.client("json")
    url = owner.create_queue(QueueName=f"replay-{time.monotonic_ns()}")["QueueUrl"]
    owner.send_message(QueueUrl=url, MessageBody="kept")  # boto3 as shipped signs the target
    assert secured.client("query").get_queue_url(QueueName=url.rsplit("/", 1)[1])

    # A signer that leaves X-Amz-Target out: the broker refuses the request as it was sent...
    unsigned_client = sqs_client(secured.endpoint)
    unsigned = Capture(unsigned_client, unsigned_target=True)
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        unsigned_client.send_message(QueueUrl=url, MessageBody="captured")
    error = excinfo.value.response["Error"]
    assert error["Code"] == "IncompleteSignature"
    assert "not signed: x-amz-target." in error["Message"]
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    (captured,) = unsigned.sent
    authorization = {k.lower(): v for k, v in captured[0]}["authorization"]
    signed_headers = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "x-amz-target" not in signed_headers
    assert {"content-type", "host", "x-amz-date"} <= set(signed_headers)
    assert json.loads(captured[1]) == {"QueueUrl": url, "MessageBody": "captured"}

    # ...and replayed as a purge or a deletion of the queue it names.
    for action in SWAPPED_ACTIONS:
        status, error = replay(secured, captured, f"AmazonSQS.{action}")
        assert (status, error["Code"]) == (400, "IncompleteSignature"), action
    assert bodies(owner, url) == ["kept"]

    # Where the target is signed, as every SDK signs it, a swap breaks the signature; the
    # request as it was signed may be sent again within its 15 minutes, as AWS allows.
    signed_client = sqs_client(secured.endpoint)
    signed = Capture(signed_client, unsigned_target=False)
    signed_client.send_message(QueueUrl=url, MessageBody="signed")
    (captured,) = signed.sent
    for action in SWAPPED_ACTIONS[:2]:
        status, error = replay(secured, captured, f"AmazonSQS.{action}")
        assert (status, error["Code"]) == (403, "SignatureDoesNotMatch"), action
    assert replay(secured, captured, "AmazonSQS.SendMessage") == (200, {})
    assert bodies(owner, url) == ["kept", "signed", "signed"]
    owner.delete_queue(QueueUrl=url)
