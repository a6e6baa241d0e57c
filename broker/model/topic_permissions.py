"""Topic access policies: SNS's AddPermission and RemovePermission on the Policy document.

Evaluation is :func:`broker.model.policy.evaluate` with ``service="sns"``; this module only
edits the document. AddPermission appends an Allow statement whose Sid is the label, with
``arn:aws:iam::<account>:root`` principals and ``SNS:<action>`` actions on the topic, which
is what AWS writes (LocalStack's AWS-validated ``test_add_permission`` snapshot); the
messages are AWS's as LocalStack records them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from broker.model.policy import ACCOUNT_ID, PERMISSION_LABEL, SNS_POLICY_QUOTAS, over_quota
from broker.model.sns_errors import invalid_parameter
from broker.model.topics import default_policy

# AddPermission's ActionName: "any Amazon SNS action name" that applies to a topic.
TOPIC_ACTIONS: Final = frozenset(
    {
        "GetTopicAttributes",
        "SetTopicAttributes",
        "AddPermission",
        "RemovePermission",
        "DeleteTopic",
        "Subscribe",
        "ListSubscriptionsByTopic",
        "Publish",
        "Receive",
    }
)


def _document(policy: str | None, topic_arn: str, owner: str) -> dict[str, Any]:
    try:
        document = json.loads(policy or default_policy(topic_arn, owner))
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):  # validated when set; defensive
        document = {"Version": "2008-10-17", "Statement": []}
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    document["Statement"] = [s for s in statements or [] if isinstance(s, dict)]
    result: dict[str, Any] = document
    return result


def add_permission(
    policy: str | None,
    *,
    topic_arn: str,
    owner: str,
    label: str,
    accounts: Sequence[str],
    actions: Sequence[str],
) -> str:
    """AddPermission: the Policy with one more Allow statement named ``label``.

    Args:
        policy: the topic's Policy, or None for AWS's default policy.
        topic_arn: the topic (the statement's Resource).
        owner: the topic's account (for the default policy).
        label: the statement's Sid.
        accounts: the AWS account ids to allow.
        actions: SNS action names.

    Returns:
        The new Policy JSON.

    Raises:
        SnsError: ``InvalidParameter`` for a duplicate or malformed label (SQS's rule), no
            accounts or one that is not twelve digits, no actions, or an action that is not a
            topic action, or when the new statement would take the policy past SNS's
            policy quotas.
    """
    document = _document(policy, topic_arn, owner)
    if any(statement.get("Sid") == label for statement in document["Statement"]):
        raise invalid_parameter("Statement already exists")
    if not PERMISSION_LABEL.fullmatch(label):
        raise invalid_parameter(
            "Label Reason: up to 80 alphanumeric characters, hyphens or underscores"
        )
    if not accounts or not all(ACCOUNT_ID.fullmatch(account) for account in accounts):
        raise invalid_parameter("AWSAccountId Reason: an AWS account id is twelve digits")
    if not actions or any(action not in TOPIC_ACTIONS for action in actions):
        raise invalid_parameter("Policy statement action out of service scope!")
    principals = [f"arn:aws:iam::{account}:root" for account in accounts]
    qualified = [f"SNS:{action}" for action in actions]
    document["Statement"].append(
        {
            "Sid": label,
            "Effect": "Allow",
            "Principal": {"AWS": principals[0] if len(principals) == 1 else principals},
            "Action": qualified[0] if len(qualified) == 1 else qualified,
            "Resource": topic_arn,
        }
    )
    policy = json.dumps(document, separators=(",", ":"))
    over = over_quota(policy, document["Statement"], SNS_POLICY_QUOTAS)
    if over is not None:  # SNS's AddPermission has no OverLimit: its only client error
        raise invalid_parameter(
            f"Policy Error: AddPermission would exceed the policy quota: {over}"
        )
    return policy


def remove_permission(policy: str | None, *, topic_arn: str, owner: str, label: str) -> str:
    """RemovePermission: the Policy without the statement named ``label``.

    Removing a label that is not there changes nothing, as on AWS.

    Args:
        policy: the topic's Policy, or None for AWS's default policy.
        topic_arn: the topic.
        owner: the topic's account.
        label: the Sid to remove.

    Returns:
        The new Policy JSON.
    """
    document = _document(policy, topic_arn, owner)
    document["Statement"] = [s for s in document["Statement"] if s.get("Sid") != label]
    return json.dumps(document, separators=(",", ":"))
