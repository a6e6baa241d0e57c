"""Whether SNS may deliver a topic's message to a subscribed queue: the queue policy decides.

On AWS, SNS sends to a subscribed queue as the service principal ``sns.amazonaws.com``, with
``aws:SourceArn`` the topic's ARN and ``aws:SourceAccount`` the topic owner's account, and the
queue policy must allow it ``sqs:SendMessage`` (the usual statement: ``"Principal": {"Service":
"sns.amazonaws.com"}``, or ``"*"``, with ``ArnEquals``/``ArnLike`` on ``aws:SourceArn``). Here:

- an explicit Deny that matches that request blocks the delivery;
- a queue in another account than the topic needs an explicit Allow;
- a queue in the topic's own account, subscribed by that account, is allowed unless denied.
  AWS asks for an explicit Allow there too; Wharf is lenient so that a same-account
  subscription to a queue without a policy (a broker serving one account, set up as it always
  was) keeps receiving. A subscription made by another account (one the topic policy lets
  Subscribe) gets no such leniency: otherwise it could route the topic's messages, or its
  dead letters, into any queue of the owner's, which the queue's policy refuses it.

The request also carries ``aws:SecureTransport`` true (SNS calls SQS over HTTPS) and the time,
and no principal keys.

A policy is compiled once per (policy text, topic ARN, queue ARN): the statements that can bear
on SNS's ``sqs:SendMessage`` to that queue are picked out of the parsed JSON once, and unless
one of their conditions reads the time, the answer itself is kept. A publish to many
subscriptions therefore parses no policy.
"""

from __future__ import annotations

from enum import Enum
from functools import lru_cache
from typing import Any, Final

from broker.model.conditions import TIME_KEYS, Context, keys_read, request_context
from broker.model.policy import Decision, applicable, explicit_decision

SNS_PRINCIPAL: Final = "sns.amazonaws.com"


class Refusal(Enum):
    """Why a delivery may not be made; the value is the reason as logged."""

    DENIED = "the queue policy denies sqs:SendMessage to sns.amazonaws.com for this topic"
    NOT_ALLOWED = (
        "the queue is in another account than the topic, or was subscribed by another "
        "account, and its policy does not allow sqs:SendMessage to sns.amazonaws.com for "
        "this topic"
    )


def refusal(
    policy: str | None, *, topic_arn: str, queue_arn: str, subscriber: str, now_ms: int
) -> Refusal | None:
    """Why SNS may not send ``topic_arn``'s message to the queue, or None if it may.

    Args:
        policy: the queue's Policy attribute, or None.
        topic_arn: the publishing topic (``aws:SourceArn``; its account is the topic owner's).
        queue_arn: the subscribed queue (the policy's resource; its account is the queue's),
            or the dead-letter queue of the subscription.
        subscriber: the account that made the subscription.
        now_ms: the time of the publish, for conditions on ``aws:CurrentTime``/``EpochTime``.
    """
    return _compiled(policy, topic_arn, queue_arn, subscriber).refusal(now_ms)


def delivery_context(topic_arn: str, now_ms: int) -> dict[str, tuple[str, ...]]:
    """The condition keys of SNS's ``sqs:SendMessage`` for ``topic_arn`` at ``now_ms``."""
    return request_context(
        now_ms=now_ms,
        secure=True,
        source_ip=None,
        principal_arn=None,
        principal_account=None,
        source_arn=topic_arn,
        source_account=_account(topic_arn),
    )


def _account(arn: str) -> str:
    parts = arn.split(":", 5)
    return parts[4] if len(parts) == 6 else ""


class _Access:
    """A queue policy compiled for one topic's deliveries to that queue."""

    __slots__ = ("_fixed", "_same_account", "_statements", "_timed", "_topic_arn")

    def __init__(self, policy: str | None, topic_arn: str, queue_arn: str, subscriber: str) -> None:
        self._topic_arn = topic_arn
        self._same_account = _account(topic_arn) == _account(queue_arn) == subscriber
        self._statements: list[dict[str, Any]] = applicable(
            policy,
            principal_arn=None,
            principal_account="",
            action="SendMessage",
            resource=queue_arn,
            calling_service=SNS_PRINCIPAL,
        )
        self._timed = any(
            TIME_KEYS & keys_read(statement.get("Condition")) for statement in self._statements
        )
        # Without a condition on the time every delivery gets the same answer: any time will do.
        self._fixed = None if self._timed else self._decide(delivery_context(topic_arn, 0))

    def refusal(self, now_ms: int) -> Refusal | None:
        if not self._timed:
            return self._fixed
        return self._decide(delivery_context(self._topic_arn, now_ms))

    def _decide(self, context: Context) -> Refusal | None:
        explicit = explicit_decision(self._statements, context)
        if explicit is Decision.DENY:
            return Refusal.DENIED
        if explicit is Decision.ALLOW or self._same_account:
            return None
        return Refusal.NOT_ALLOWED


@lru_cache(maxsize=4096)
def _compiled(policy: str | None, topic_arn: str, queue_arn: str, subscriber: str) -> _Access:
    return _Access(policy, topic_arn, queue_arn, subscriber)
