"""Dead endpoints do not starve healthy ones: a real broker, boto3, real local endpoints.

Six endpoints hang on every request (the broker's response timeout must fire), one answers at
once. With ``endpoint_concurrency`` 2 the hung ones could ask for 12 attempts, more than the
8 shared slots: the healthy subscription must still get every notification promptly, before,
while and after the hung ones time out and turn to probing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.config import SnsSettings
from tests.support.broker import BrokerThread, broker_config
from tests.support.sns import Endpoint, Received, sns_client

pytestmark = pytest.mark.slow

HANG_TIMEOUT = 8.0  # the broker's response timeout; every bound below is well under it
PROMPT = 3.0  # generous on a busy machine, and still far below HANG_TIMEOUT
HUNG = 6
FAST_RETRIES = json.dumps(
    {"healthyRetryPolicy": {"numRetries": 20, "minDelayTarget": 1, "maxDelayTarget": 1}}
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerThread]:
    settings = SnsSettings(
        delivery_concurrency=8,
        endpoint_concurrency=2,
        connect_timeout_seconds=1,
        response_timeout_seconds=HANG_TIMEOUT,
    )
    with BrokerThread(broker_config(tmp_path / "data", sns=settings)) as running:
        yield running


def notification(request: Received) -> bool:
    return request.headers.get("x-amz-sns-message-type") == "Notification"


def subscribe_and_confirm(sns: Any, topic: str, endpoint: Endpoint) -> None:
    """Subscribe; confirm with the token the endpoint got (whether it answered or not)."""
    sns.subscribe(
        TopicArn=topic,
        Protocol="http",
        Endpoint=endpoint.url,
        Attributes={"DeliveryPolicy": FAST_RETRIES},
    )
    (confirmation,) = endpoint.wait_for(1, timeout=PROMPT)
    token = confirmation.envelope()["Token"]
    sns.confirm_subscription(TopicArn=topic, Token=token)


def test_hung_endpoints_never_starve_a_healthy_one(broker: BrokerThread) -> None:
    sns = sns_client(broker.endpoint)
    topic = sns.create_topic(Name="isolation")["TopicArn"]
    hung = [Endpoint(behaviour="hang") for _ in range(HUNG)]
    for endpoint in hung:
        endpoint.__enter__()
    try:
        with Endpoint() as healthy:
            for endpoint in hung:
                subscribe_and_confirm(sns, topic, endpoint)
            subscribe_and_confirm(sns, topic, healthy)
            started = time.monotonic()
            count = 0
            # Publish past the first response timeout: the hung lanes fail, retry, probe.
            while time.monotonic() - started < HANG_TIMEOUT * 1.5:
                sns.publish(TopicArn=topic, Message=f"m{count}")
                count += 1
                sent = time.monotonic()
                got = healthy.wait_for(count, timeout=PROMPT, match=notification)
                assert got[-1].at - sent < PROMPT
                time.sleep(0.5)
            assert count >= 10
            # One attempt in flight per hung endpoint: its confirmation, then one probe after
            # each response timeout, never endpoint_concurrency of them.
            for endpoint in hung:
                assert 1 <= len(endpoint.requests) <= 3, len(endpoint.requests)
    finally:
        for endpoint in hung:
            endpoint.__exit__(None, None, None)
