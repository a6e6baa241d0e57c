"""The HTTP endpoints of the SNS crash-recovery test (tests/compat/test_sns_crash_recovery.py).

Two subscriber endpoints (:class:`tests.support.sns.Endpoint`, trio + h11 on 127.0.0.1 in
threads of the test process) that live across the broker's restarts, as real subscribers do:
``http0`` always answers 200 at once; ``http1`` answers some requests with a 500 or a TCP
reset, drawn per example (how often, and a seed). Every request either got is kept; the test
reads each once (``cursor``).
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from tests.support.sns import Endpoint, Received

Failure = Literal["none", "500", "reset"]
HOOKS = ("http0", "http1")  # the steady endpoint, the flaky one

# Fast retries, so that the flaky endpoint's failures cost a second, not AWS's 20 s: three
# immediate retries, then one a second, far more of them than a failure rate of at most one
# in two could use up (the broker gives up, and logs it, only past numRetries).
DELIVERY_POLICY = json.dumps(
    {
        "healthyRetryPolicy": {
            "numRetries": 60,
            "numNoDelayRetries": 3,
            "minDelayTarget": 1,
            "maxDelayTarget": 1,
        }
    }
)


@dataclass(frozen=True)
class Flakiness:
    """How the flaky endpoint fails: which way, how often, and the seed of its choices."""

    failure: Failure
    rate: float
    seed: int


@dataclass
class Hook:
    """One subscriber endpoint and what the test has read of it."""

    name: str
    endpoint: Endpoint
    cursor: int = 0  # requests read so far
    stale: set[str] = field(default_factory=set)  # confirmation tokens the broker refused
    used: set[str] = field(default_factory=set)  # tokens that confirmed a subscription

    @property
    def url(self) -> str:
        return self.endpoint.url

    def unread(self) -> list[Received]:
        """The requests not read yet (the endpoint's thread appends; a copy is taken)."""
        requests = self.endpoint.requests[self.cursor :]
        self.cursor += len(requests)
        return requests

    def confirmations(self, topic_arn: str) -> list[Received]:
        """The SubscriptionConfirmations for ``topic_arn`` answered 200, newest first."""
        found = [
            r
            for r in list(self.endpoint.requests)
            if r.headers.get("x-amz-sns-message-type") == "SubscriptionConfirmation"
            and r.headers.get("x-amz-sns-topic-arn") == topic_arn
            and r.answered == "ok"
        ]
        return found[::-1]


def behaviour(flakiness: Flakiness) -> Callable[[Received], str]:
    """The flaky endpoint's answer per request (called in its thread, one request at a time)."""
    rng = random.Random(flakiness.seed)

    def answer(_: Received) -> str:
        if flakiness.failure != "none" and rng.random() < flakiness.rate:
            return flakiness.failure
        return "ok"

    return answer


def moved(url: str, api: str) -> str:
    """A link the broker made in an earlier run, pointed at this run's API address."""
    return urlsplit(url)._replace(netloc=urlsplit(api).netloc).geturl()


def follow_subscribe_url(url: str) -> str | None:
    """GET a SubscribeURL as a subscriber's browser would; the SubscriptionArn it answers, or
    None when the broker refuses the token (4xx)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body: str = response.read().decode()
    except urllib.error.HTTPError as error:
        if 400 <= error.code < 500:
            return None
        raise
    start = body.index("<SubscriptionArn>") + len("<SubscriptionArn>")
    return body[start : body.index("</SubscriptionArn>")]
