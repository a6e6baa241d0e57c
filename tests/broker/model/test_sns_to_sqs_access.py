"""SNS's deliveries to queues: what the queue policy lets sns.amazonaws.com send, per topic.

Examples pin the three rules (a Deny blocks; another account needs an Allow; the topic's own
account is let in unless denied) with AWS's usual statements; hypothesis checks that a Deny on
``aws:SourceArn`` blocks exactly its topic, and that the answer is IAM's evaluation for the
service with only Wharf's same-account leniency added.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model import sns_to_sqs_access
from broker.model.policy import Decision, applicable, evaluate
from broker.model.sns_to_sqs_access import SNS_PRINCIPAL, Refusal, delivery_context, refusal

OWNER = "000000000000"
PARTNER = "111122223333"
QUEUE = f"arn:aws:sqs:us-east-1:{OWNER}:orders"
TOPIC = f"arn:aws:sns:us-east-1:{OWNER}:orders-topic"
OTHER_TOPIC = f"arn:aws:sns:us-east-1:{OWNER}:billing-topic"
PARTNER_TOPIC = f"arn:aws:sns:us-east-1:{PARTNER}:orders-topic"
NOW_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def policy_of(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def from_topic(
    effect: str, topic: str, principal: Any = None, operator: str = "ArnEquals"
) -> dict[str, Any]:
    """AWS's usual statement for a topic's deliveries (``effect`` Allow or Deny)."""
    return {
        "Effect": effect,
        "Principal": {"Service": SNS_PRINCIPAL} if principal is None else principal,
        "Action": "sqs:SendMessage",
        "Resource": QUEUE,
        "Condition": {operator: {"aws:SourceArn": topic}},
    }


def check(
    policy: str | None, topic: str = TOPIC, now_ms: int = NOW_MS, subscriber: str = OWNER
) -> Refusal | None:
    return refusal(policy, topic_arn=topic, queue_arn=QUEUE, subscriber=subscriber, now_ms=now_ms)


# ---------------------------------------------------------------------- examples


def test_without_a_policy_only_the_topics_own_account_is_let_in() -> None:
    assert check(None) is None
    assert check(None, PARTNER_TOPIC) is Refusal.NOT_ALLOWED


def test_a_subscription_made_by_another_account_needs_the_queues_explicit_allow() -> None:
    """A partner the topic policy lets Subscribe must not route the topic's messages into the
    owner's queues that their policy does not open to it (found by a report-only hunt)."""
    assert check(None, subscriber=PARTNER) is Refusal.NOT_ALLOWED
    assert check(policy_of(from_topic("Allow", TOPIC)), subscriber=PARTNER) is None


def test_a_deny_for_a_topic_blocks_that_topic_only() -> None:
    policy = policy_of(from_topic("Deny", TOPIC))
    assert check(policy) is Refusal.DENIED
    assert check(policy, OTHER_TOPIC) is None


def test_another_accounts_topic_needs_the_usual_allow() -> None:
    allow = policy_of(from_topic("Allow", PARTNER_TOPIC))
    assert check(allow, PARTNER_TOPIC) is None
    other = f"arn:aws:sns:us-east-1:{PARTNER}:elsewhere"
    assert check(allow, other) is Refusal.NOT_ALLOWED
    # The forms AWS's SDK helpers write: "*" or {"AWS": "*"}, ArnLike on the source.
    for principal in ("*", {"AWS": "*"}, {"AWS": ["*"]}):
        starred = policy_of(from_topic("Allow", PARTNER_TOPIC, principal, "ArnLike"))
        assert check(starred, PARTNER_TOPIC) is None
    by_account = policy_of(
        {
            "Effect": "Allow",
            "Principal": {"Service": [SNS_PRINCIPAL, "events.amazonaws.com"]},
            "Action": "sqs:Send*",
            "Resource": QUEUE,
            "Condition": {"StringEquals": {"aws:SourceAccount": PARTNER}},
        }
    )
    assert check(by_account, PARTNER_TOPIC) is None
    assert check(by_account, "arn:aws:sns:us-east-1:444455556666:t") is Refusal.NOT_ALLOWED


@pytest.mark.parametrize(
    "principal",
    [
        {"Service": "events.amazonaws.com"},
        {"AWS": PARTNER},
        {"AWS": f"arn:aws:iam::{PARTNER}:root"},
        {"AWS": f"arn:aws:iam::{PARTNER}:user/bob"},
    ],
)
def test_statements_for_other_principals_neither_allow_nor_deny_sns(principal: Any) -> None:
    allow = policy_of(from_topic("Allow", PARTNER_TOPIC, principal))
    assert check(allow, PARTNER_TOPIC) is Refusal.NOT_ALLOWED
    deny = policy_of(from_topic("Deny", TOPIC, principal))
    assert check(deny) is None


def test_the_statement_must_cover_send_message_on_this_queue() -> None:
    elsewhere = dict(from_topic("Allow", PARTNER_TOPIC), Resource=QUEUE + "-other")
    receive = dict(from_topic("Allow", PARTNER_TOPIC), Action="sqs:ReceiveMessage")
    for statement in (elsewhere, receive):
        assert check(policy_of(statement), PARTNER_TOPIC) is Refusal.NOT_ALLOWED
    every_action = dict(from_topic("Deny", TOPIC), Action="sqs:*", Resource="*")
    assert check(policy_of(every_action)) is Refusal.DENIED


def test_a_deny_wins_over_an_allow_and_not_principal_applies_to_sns() -> None:
    both = policy_of(from_topic("Allow", PARTNER_TOPIC), from_topic("Deny", PARTNER_TOPIC, "*"))
    assert check(both, PARTNER_TOPIC) is Refusal.DENIED
    everyone_but_alice = policy_of(
        {
            "Effect": "Deny",
            "NotPrincipal": {"AWS": f"arn:aws:iam::{OWNER}:user/alice"},
            "Action": "sqs:*",
            "Resource": QUEUE,
        }
    )
    assert check(everyone_but_alice) is Refusal.DENIED
    but_sns = policy_of(
        {
            "Effect": "Deny",
            "NotPrincipal": {"Service": SNS_PRINCIPAL},
            "Action": "sqs:*",
            "Resource": QUEUE,
        }
    )
    assert check(but_sns) is None


def test_sns_requests_come_over_https_and_carry_no_principal_keys() -> None:
    https_only = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "sqs:*",
        "Resource": "*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    assert check(policy_of(https_only)) is None
    keys = delivery_context(PARTNER_TOPIC, NOW_MS)
    assert keys["aws:sourcearn"] == (PARTNER_TOPIC,)
    assert keys["aws:sourceaccount"] == (PARTNER,)
    assert "aws:principalarn" not in keys
    assert "aws:principalaccount" not in keys
    only_users = dict(from_topic("Deny", TOPIC, "*"))
    only_users["Condition"] = {"Null": {"aws:PrincipalArn": "true"}}
    assert check(policy_of(only_users)) is Refusal.DENIED


def test_a_condition_on_the_time_is_asked_at_each_publish() -> None:
    cutoff = "2023-11-14T22:13:20Z"
    late = dict(from_topic("Deny", TOPIC))
    late["Condition"] = {"DateGreaterThan": {"aws:CurrentTime": cutoff}}
    policy = policy_of(late)
    assert check(policy, now_ms=NOW_MS - 1000) is None
    assert check(policy, now_ms=NOW_MS + 1000) is Refusal.DENIED
    assert check(policy, now_ms=NOW_MS - 1000) is None


def test_an_unreadable_stored_condition_can_only_deny_more() -> None:
    odd = {"StringSoundsLike": {"aws:SourceArn": TOPIC}}
    assert check(policy_of(dict(from_topic("Deny", TOPIC), Condition=odd))) is Refusal.DENIED
    allow = dict(from_topic("Allow", PARTNER_TOPIC), Condition=odd)
    assert check(policy_of(allow), PARTNER_TOPIC) is Refusal.NOT_ALLOWED


def test_a_policy_is_compiled_once_per_topic_not_per_publish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[str] = []

    def counting(policy: str | None, **kwargs: Any) -> list[dict[str, Any]]:
        compiled.append(kwargs["resource"])
        return applicable(policy, **kwargs)

    monkeypatch.setattr(sns_to_sqs_access, "applicable", counting)
    queue = QUEUE + "-compiled-once"
    policy = policy_of(dict(from_topic("Deny", TOPIC), Resource=queue))
    for now in range(NOW_MS, NOW_MS + 5000, 1000):
        for topic in (TOPIC, OTHER_TOPIC):
            refusal(policy, topic_arn=topic, queue_arn=queue, subscriber=OWNER, now_ms=now)
    assert compiled == [queue, queue]  # one per topic


# ---------------------------------------------------------------------- properties

TOPICS = [f"arn:aws:sns:us-east-1:{account}:t{i}" for account in (OWNER, PARTNER) for i in range(3)]
sns_principals = st.sampled_from(
    ["*", {"AWS": "*"}, {"Service": SNS_PRINCIPAL}, {"Service": ["x.amazonaws.com", SNS_PRINCIPAL]}]
)
any_principals = st.one_of(
    sns_principals,
    st.sampled_from(
        [{"Service": "events.amazonaws.com"}, {"AWS": PARTNER}, {"AWS": OWNER}, {"AWS": [OWNER]}]
    ),
)
conditions = st.one_of(
    st.none(),
    st.builds(lambda t: {"ArnEquals": {"aws:SourceArn": t}}, st.sampled_from(TOPICS)),
    st.builds(lambda t: {"ArnNotLike": {"aws:SourceArn": t}}, st.sampled_from(TOPICS)),
    st.builds(
        lambda a: {"StringEquals": {"aws:SourceAccount": a}}, st.sampled_from([OWNER, PARTNER])
    ),
    st.just({"ArnLike": {"aws:SourceArn": f"arn:aws:sns:*:{PARTNER}:*"}}),
    st.just({"Bool": {"aws:SecureTransport": "false"}}),
)


@st.composite
def statements(draw: st.DrawFn) -> dict[str, Any]:
    statement = {
        "Effect": draw(st.sampled_from(["Allow", "Deny"])),
        "Principal": draw(any_principals),
        "Action": draw(st.sampled_from(["sqs:SendMessage", "sqs:*", "*", "sqs:ReceiveMessage"])),
        "Resource": draw(st.sampled_from([QUEUE, "*", QUEUE + "-other"])),
    }
    condition = draw(conditions)
    if condition is not None:
        statement["Condition"] = condition
    return statement


@given(
    policy=st.lists(statements(), max_size=4),
    denied=st.sampled_from(TOPICS),
    principal=sns_principals,
    topic=st.sampled_from(TOPICS),
)
def test_a_source_arn_deny_blocks_exactly_its_topic(
    policy: list[dict[str, Any]], denied: str, principal: Any, topic: str
) -> None:
    # Whatever else the policy says, a Deny on aws:SourceArn for one topic refuses that topic,
    # and changes nothing for any other.
    base = policy_of(*policy)
    with_deny = policy_of(*policy, from_topic("Deny", denied, principal))
    if topic == denied:
        assert check(with_deny, topic) is Refusal.DENIED
    else:
        assert check(with_deny, topic) is check(base, topic)


def iam(document: str, topic: str) -> Decision:
    """IAM's own evaluation of SNS's request: no leniency, an explicit Allow needed."""
    return evaluate(
        document,
        principal_arn="",
        principal_account="",
        owner_account=OWNER,
        action="SendMessage",
        resource=QUEUE,
        context=delivery_context(topic, NOW_MS),
        calling_service=SNS_PRINCIPAL,
    )


@given(policy=st.lists(statements(), max_size=4), topic=st.sampled_from(TOPICS))
def test_the_answer_is_iams_for_the_service_plus_same_account_leniency(
    policy: list[dict[str, Any]], topic: str
) -> None:
    document = policy_of(*policy)
    # With an Allow for everything added, IAM still refuses exactly when a Deny matches.
    allow_all = {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}
    explicitly_denied = iam(policy_of(*policy, allow_all), topic) is Decision.DENY
    if explicitly_denied:
        expected = Refusal.DENIED
    elif iam(document, topic) is Decision.ALLOW or topic.split(":")[4] == OWNER:
        expected = None
    else:
        expected = Refusal.NOT_ALLOWED
    assert check(document, topic) is expected
