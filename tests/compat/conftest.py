"""Fixtures of the real-client suites: a running broker and boto3 clients in both protocols."""

from __future__ import annotations

from tests.support.broker import broker, protocol, queues, shared_broker, sqs

__all__ = ["broker", "protocol", "queues", "shared_broker", "sqs"]
