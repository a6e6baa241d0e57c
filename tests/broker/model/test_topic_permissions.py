"""AddPermission / RemovePermission on topic policies, and their evaluation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.policy import Decision, evaluate, topic_policy_problem
from broker.model.sns_errors import SnsError
from broker.model.topic_permissions import TOPIC_ACTIONS, add_permission, remove_permission

TOPIC = "arn:aws:sns:us-east-1:000000000000:t"
OWNER = "000000000000"
OTHER = "111122223333"


def allowed(policy: str | None, account: str, action: str) -> bool:
    decision = evaluate(
        policy,
        principal_arn=f"arn:aws:iam::{account}:user/u",
        principal_account=account,
        owner_account=OWNER,
        action=action,
        resource=TOPIC,
        service="sns",
    )
    return decision is Decision.ALLOW


def test_the_owner_may_everything_and_others_nothing_by_default() -> None:
    assert allowed(None, OWNER, "Publish")
    assert not allowed(None, OTHER, "Publish")


def test_add_permission_writes_aws_statement_and_grants_the_action() -> None:
    policy = add_permission(
        None, topic_arn=TOPIC, owner=OWNER, label="p", accounts=[OTHER], actions=["Publish"]
    )
    statement = json.loads(policy)["Statement"][-1]
    assert statement == {
        "Sid": "p",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{OTHER}:root"},
        "Action": "SNS:Publish",
        "Resource": TOPIC,
    }
    assert allowed(policy, OTHER, "Publish")
    assert not allowed(policy, OTHER, "DeleteTopic")
    assert not allowed(
        remove_permission(policy, topic_arn=TOPIC, owner=OWNER, label="p"), OTHER, "Publish"
    )


def test_add_permission_refuses_duplicates_and_foreign_actions() -> None:
    policy = add_permission(
        None, topic_arn=TOPIC, owner=OWNER, label="p", accounts=[OTHER], actions=["Publish"]
    )
    with pytest.raises(SnsError, match="Statement already exists"):
        add_permission(
            policy, topic_arn=TOPIC, owner=OWNER, label="p", accounts=[OTHER], actions=["Publish"]
        )
    with pytest.raises(SnsError, match="out of service scope"):
        add_permission(
            None, topic_arn=TOPIC, owner=OWNER, label="q", accounts=[OTHER], actions=["SendMessage"]
        )


def test_add_permission_stops_at_sns_policy_quotas() -> None:
    # 100 statements at most: the default policy's one and 99 labels fit, the 100th label not.
    policy: str | None = None
    for n in range(99):
        policy = add_permission(
            policy,
            topic_arn=TOPIC,
            owner=OWNER,
            label=f"l{n}",
            accounts=[OTHER],
            actions=["Publish"],
        )
    assert len(json.loads(policy or "")["Statement"]) == 100
    with pytest.raises(SnsError, match="at most 100 statements") as caught:
        add_permission(
            policy,
            topic_arn=TOPIC,
            owner=OWNER,
            label="last",
            accounts=[OTHER],
            actions=["Publish"],
        )
    assert caught.value.code == "InvalidParameter"
    assert caught.value.message == (
        "Invalid parameter: Policy Error: AddPermission would exceed the policy quota: "
        "a policy holds at most 100 statements"
    )


@given(
    st.lists(
        st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True), min_size=1, max_size=5, unique=True
    ),
    st.lists(st.sampled_from(sorted(TOPIC_ACTIONS)), min_size=1, max_size=3),
)
def test_adding_then_removing_labels_restores_the_statements(
    labels: list[str], actions: list[str]
) -> None:
    policy: str | None = None
    for label in labels:
        policy = add_permission(
            policy, topic_arn=TOPIC, owner=OWNER, label=label, accounts=[OTHER], actions=actions
        )
    assert policy is not None
    assert topic_policy_problem(policy, TOPIC) is None  # what SetTopicAttributes would store
    for action in actions:
        assert allowed(policy, OTHER, action)
    for label in labels:
        policy = remove_permission(policy, topic_arn=TOPIC, owner=OWNER, label=label)
    statements = json.loads(policy)["Statement"]
    assert [s["Sid"] for s in statements] == ["__default_statement_ID"]
    assert not any(allowed(policy, OTHER, action) for action in actions)
