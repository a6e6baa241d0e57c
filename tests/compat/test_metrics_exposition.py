"""Both daemons' ``/metrics``, after real traffic, pass ``promtool check metrics``."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.support.balancer_http import balancer, config, front, group, listener
from tests.support.broker import BrokerThread
from tests.support.daemons import address
from tests.support.http import request
from tests.support.promtool import check_exposition
from tests.support.sns import queue_arn, sns_client
from tests.support.targets import TargetServer, echo, running_targets

pytestmark = pytest.mark.slow


def test_the_brokers_exposition_after_sqs_and_sns_traffic(shared_broker: BrokerThread) -> None:
    sqs: Any = shared_broker.client("json")
    url = sqs.create_queue(QueueName="promtool-checked")["QueueUrl"]
    sns: Any = sns_client(shared_broker.endpoint)
    topic = sns.create_topic(Name="promtool-checked")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn(sqs, url))
    sns.publish(TopicArn=topic, Message="checked")
    sqs.send_message(QueueUrl=url, MessageBody="checked")
    for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.get_queue_url(QueueName="promtool-missing")
    status, _, body = trio.run(request, shared_broker.admin, "GET", "/metrics")
    assert status == 200
    assert b'wharf_sns_messages_published_total{topic="promtool-checked"}' in body
    check_exposition(body)


async def test_the_balancers_exposition_after_forwarded_and_failed_requests() -> None:
    target = TargetServer("a", echo)
    async with running_targets(target):
        cfg = config([listener()], [group("web", target)])
        async with balancer(cfg) as daemon:
            for path in ("/", "/again"):
                status, _, _ = await request(front(daemon), target=path)
                assert status == 200
            status, _, _ = await request(front(daemon), "TRACE", "/")
            assert status == 405
            status, _, body = await request(address(daemon, "admin"), target="/metrics")
    assert status == 200
    assert b"wharf_balancer_http_requests_total{" in body
    check_exposition(body)
