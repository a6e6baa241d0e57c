"""Queue policies: evaluation order, matching, AddPermission/RemovePermission.

Examples pin AWS's documented behaviour; hypothesis compares ``evaluate`` with a small
reference evaluator written here from IAM's rules, over generated policies.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.errors import SqsError
from broker.model.policy import Decision, add_permission, evaluate, remove_permission

OWNER = "000000000000"
PARTNER = "111122223333"
ARN = f"arn:aws:sqs:us-east-1:{OWNER}:orders"
OTHER_ARN = f"arn:aws:sqs:us-east-1:{OWNER}:billing"
ALICE = f"arn:aws:iam::{OWNER}:user/alice"
BOB = f"arn:aws:iam::{PARTNER}:user/bob"


def decide(policy: dict[str, Any] | str | None, principal: str, action: str, resource: str = ARN):
    account = principal.split(":")[4]
    document = json.dumps(policy) if isinstance(policy, dict) else policy
    return evaluate(
        document,
        principal_arn=principal,
        principal_account=account,
        owner_account=OWNER,
        action=action,
        resource=resource,
    )


def statement(effect: str, principal: Any, action: Any, resource: Any = ARN, **extra: Any):
    return {
        "Effect": effect,
        "Principal": principal,
        "Action": action,
        "Resource": resource,
        **extra,
    }


def policy_of(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


# ---------------------------------------------------------------------- examples


def test_without_a_policy_the_owner_account_is_allowed_and_others_are_not():
    assert decide(None, ALICE, "SendMessage") is Decision.ALLOW
    assert decide(None, BOB, "SendMessage") is Decision.DENY
    assert decide("", BOB, "ReceiveMessage") is Decision.DENY


def test_an_explicit_deny_wins_over_an_allow():
    policy = policy_of(
        statement("Allow", "*", "sqs:*"),
        statement("Deny", {"AWS": ALICE}, "sqs:SendMessage"),
    )
    assert decide(policy, ALICE, "SendMessage") is Decision.DENY
    assert decide(policy, ALICE, "ReceiveMessage") is Decision.ALLOW
    assert decide(policy, BOB, "SendMessage") is Decision.ALLOW


@pytest.mark.parametrize(
    ("principal", "matches_bob"),
    [
        ("*", True),
        ({"AWS": "*"}, True),
        ({"AWS": BOB}, True),
        ({"AWS": [ALICE, BOB]}, True),
        ({"AWS": PARTNER}, True),
        ({"AWS": f"arn:aws:iam::{PARTNER}:root"}, True),
        ({"AWS": ALICE}, False),
        ({"AWS": OWNER}, False),
        ({"Service": "sns.amazonaws.com"}, False),
    ],
)
def test_principals(principal, matches_bob):
    policy = policy_of(statement("Allow", principal, "sqs:SendMessage"))
    expected = Decision.ALLOW if matches_bob else Decision.DENY
    assert decide(policy, BOB, "SendMessage") is expected


@pytest.mark.parametrize(
    ("action", "allowed"),
    [
        ("sqs:SendMessage", {"SendMessage", "SendMessageBatch"}),
        ("SQS:sendmessage", {"SendMessage", "SendMessageBatch"}),
        ("sqs:SendMessageBatch", set()),  # not an IAM action: grants nothing
        ("sqs:Send*", {"SendMessage", "SendMessageBatch"}),
        ("sqs:*", {"SendMessage", "SendMessageBatch", "ReceiveMessage", "DeleteMessage"}),
        ("*", {"SendMessage", "SendMessageBatch", "ReceiveMessage", "DeleteMessage"}),
        (["sqs:ReceiveMessage", "sqs:DeleteMessage"], {"ReceiveMessage", "DeleteMessage"}),
        ("sqs:*Message", {"SendMessage", "SendMessageBatch", "ReceiveMessage", "DeleteMessage"}),
        ("sqs:?eceiveMessage", {"ReceiveMessage"}),
        ("sns:Publish", set()),
    ],
)
def test_actions(action, allowed):
    policy = policy_of(statement("Allow", {"AWS": BOB}, action))
    for name in ("SendMessage", "SendMessageBatch", "ReceiveMessage", "DeleteMessage"):
        expected = Decision.ALLOW if name in allowed else Decision.DENY
        assert decide(policy, BOB, name) is expected, name


@pytest.mark.parametrize(
    ("batch", "single"),
    [
        ("SendMessageBatch", "SendMessage"),
        ("DeleteMessageBatch", "DeleteMessage"),
        ("ChangeMessageVisibilityBatch", "ChangeMessageVisibility"),
    ],
)
def test_batch_actions_need_the_permission_of_their_single_action(batch, single):
    # There is no sqs:SendMessageBatch in IAM: the batch is allowed or denied as its single.
    allow = policy_of(statement("Allow", {"AWS": BOB}, f"sqs:{single}"))
    assert decide(allow, BOB, batch) is Decision.ALLOW
    deny = policy_of(statement("Deny", {"AWS": ALICE}, f"sqs:{single}"))
    assert decide(deny, ALICE, batch) is Decision.DENY
    granted = add_permission(None, queue_arn=ARN, label="p", accounts=[PARTNER], actions=[single])
    assert decide(granted, BOB, batch) is Decision.ALLOW


def test_resources():
    policy = policy_of(statement("Allow", {"AWS": BOB}, "sqs:*", f"arn:aws:sqs:*:{OWNER}:ord*"))
    assert decide(policy, BOB, "SendMessage") is Decision.ALLOW
    assert decide(policy, BOB, "SendMessage", OTHER_ARN) is Decision.DENY
    no_resource = policy_of({"Effect": "Allow", "Principal": "*", "Action": "sqs:*"})
    assert decide(no_resource, BOB, "SendMessage") is Decision.ALLOW


def test_unsupported_conditions_can_only_deny_more():
    condition = {"Condition": {"ArnEquals": {"aws:SourceArn": "arn:aws:sns:x"}}}
    allow = policy_of(statement("Allow", {"AWS": BOB}, "sqs:SendMessage", **condition))
    assert decide(allow, BOB, "SendMessage") is Decision.DENY
    deny = policy_of(statement("Deny", {"AWS": ALICE}, "sqs:SendMessage", OTHER_ARN, **condition))
    assert decide(deny, ALICE, "SendMessage") is Decision.DENY
    assert decide(deny, ALICE, "ReceiveMessage") is Decision.ALLOW


@pytest.mark.parametrize("document", ["not json", "[]", '{"Statement": 3}', '{"Statement": [1]}'])
def test_unreadable_policies_grant_nothing(document):
    assert decide(document, BOB, "SendMessage") is Decision.DENY
    assert decide(document, ALICE, "SendMessage") is Decision.ALLOW


def test_add_and_remove_permission():
    policy = add_permission(
        None, queue_arn=ARN, label="partner", accounts=[PARTNER], actions=["SendMessage"]
    )
    document = json.loads(policy)
    assert document["Version"] == "2012-10-17"
    (added,) = document["Statement"]
    assert added["Sid"] == "partner"
    assert added["Principal"] == {"AWS": [f"arn:aws:iam::{PARTNER}:root"]}
    assert decide(policy, BOB, "SendMessage") is Decision.ALLOW
    assert decide(policy, BOB, "ReceiveMessage") is Decision.DENY
    everything = add_permission(
        policy, queue_arn=ARN, label="all", accounts=[PARTNER], actions=["*"]
    )
    assert decide(everything, BOB, "ReceiveMessage") is Decision.ALLOW
    back = remove_permission(everything, label="all")
    assert decide(back, BOB, "ReceiveMessage") is Decision.DENY
    assert decide(back, BOB, "SendMessage") is Decision.ALLOW


@pytest.mark.parametrize(
    ("label", "accounts", "actions"),
    [
        ("bad label", [PARTNER], ["SendMessage"]),
        ("x" * 81, [PARTNER], ["SendMessage"]),
        ("ok", [], ["SendMessage"]),
        ("ok", [PARTNER], []),
        ("taken", [PARTNER], ["SendMessage"]),
        ("ok", [PARTNER], ["Fly"]),
        ("ok", [PARTNER], ["sqs:SendMessage"]),
    ],
)
def test_add_permission_refuses(label, accounts, actions):
    existing = add_permission(
        None, queue_arn=ARN, label="taken", accounts=[PARTNER], actions=["SendMessage"]
    )
    with pytest.raises(SqsError) as excinfo:
        add_permission(existing, queue_arn=ARN, label=label, accounts=accounts, actions=actions)
    assert excinfo.value.code == "InvalidParameterValue"


def test_remove_permission_of_an_unknown_label():
    with pytest.raises(SqsError) as excinfo:
        remove_permission(None, label="absent")
    assert excinfo.value.code == "InvalidParameterValue"


def test_remove_permission_keeps_hand_written_statements():
    policy = policy_of(statement("Deny", {"AWS": ALICE}, "sqs:SendMessage"))
    policy["Id"] = "mine"
    added = add_permission(
        json.dumps(policy), queue_arn=ARN, label="p", accounts=[PARTNER], actions=["*"]
    )
    removed = json.loads(remove_permission(added, label="p"))
    assert removed["Statement"] == policy["Statement"]
    assert decide(removed, ALICE, "SendMessage") is Decision.DENY


# ---------------------------------------------------------------------- the property

ACTIONS = [
    "SendMessage",
    "SendMessageBatch",
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "PurgeQueue",
]
PRINCIPALS = [ALICE, BOB, f"arn:aws:iam::{PARTNER}:role/carol"]

action_globs = st.sampled_from(
    [
        "sqs:*",
        "*",
        "sqs:Send*",
        "SQS:ReceiveMessage",
        "sqs:*Message",
        "sqs:PurgeQueue",
        "sqs:?urge*",
    ]
)
principal_values = st.one_of(
    st.just("*"),
    st.fixed_dictionaries(
        {
            "AWS": st.one_of(
                st.sampled_from([*PRINCIPALS, OWNER, PARTNER, "*"]),
                st.lists(st.sampled_from([*PRINCIPALS, OWNER, PARTNER]), max_size=3),
            )
        }
    ),
)
statements = st.fixed_dictionaries(
    {
        "Effect": st.sampled_from(["Allow", "Deny"]),
        "Principal": principal_values,
        "Action": st.one_of(action_globs, st.lists(action_globs, max_size=3)),
        "Resource": st.sampled_from([ARN, OTHER_ARN, "*", f"arn:aws:sqs:*:{OWNER}:*"]),
    },
    optional={"Condition": st.just({"Bool": {"aws:SecureTransport": "true"}})},
)


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def reference(policy: list[dict[str, Any]], principal: str, action: str, resource: str) -> Decision:
    """IAM's order in a dozen lines: explicit Deny, then Allow, then same-account default."""
    account = principal.split(":")[4]

    def principal_matches(spec: Any) -> bool:
        if spec == "*":
            return True
        return any(
            entry in ("*", principal, account, f"arn:aws:iam::{account}:root")
            for entry in _listed(spec.get("AWS", []))
        )

    def glob(patterns: Any, value: str) -> bool:
        return any(fnmatch.fnmatchcase(value.lower(), p.lower()) for p in _listed(patterns))

    iam_action = action.removesuffix("Batch")  # SendMessageBatch needs sqs:SendMessage
    allowed = False
    for s in policy:
        if not principal_matches(s["Principal"]) or not glob(s["Action"], f"sqs:{iam_action}"):
            continue
        conditional = "Condition" in s
        in_resource = glob(s["Resource"], resource)
        if s["Effect"] == "Deny" and (conditional or in_resource):
            return Decision.DENY
        if s["Effect"] == "Allow" and not conditional and in_resource:
            allowed = True
    return Decision.ALLOW if allowed or account == OWNER else Decision.DENY


@given(
    policy=st.lists(statements, max_size=5),
    principal=st.sampled_from(PRINCIPALS),
    action=st.sampled_from(ACTIONS),
)
def test_evaluate_agrees_with_the_reference(policy, principal, action):
    expected = reference(policy, principal, action, ARN)
    assert decide(policy_of(*policy), principal, action) is expected


@given(
    policy=st.lists(statements, max_size=4),
    principal=st.sampled_from(PRINCIPALS),
    action=st.sampled_from(ACTIONS),
    extra=statements,
)
def test_a_deny_statement_never_grants(policy, principal, action, extra):
    extra = {**extra, "Effect": "Deny"}
    before = decide(policy_of(*policy), principal, action)
    after = decide(policy_of(*policy, extra), principal, action)
    assert not (before is Decision.DENY and after is Decision.ALLOW)


@given(
    policy=st.lists(statements, max_size=4),
    principal=st.sampled_from(PRINCIPALS),
    action=st.sampled_from(ACTIONS),
    accounts=st.lists(st.sampled_from([OWNER, PARTNER]), min_size=1, max_size=2, unique=True),
    granted=st.lists(
        st.sampled_from(["*", "SendMessage", "ReceiveMessage", "DeleteMessage", "PurgeQueue"]),
        min_size=1,
        max_size=3,
        unique=True,
    ),
)
def test_add_then_remove_permission_restores_every_decision(
    policy, principal, action, accounts, granted
):
    original = json.dumps(policy_of(*policy))
    added = add_permission(
        original, queue_arn=ARN, label="hypothesis", accounts=accounts, actions=granted
    )
    account = principal.split(":")[4]
    if account in accounts and ("*" in granted or action.removesuffix("Batch") in granted):
        assert decide(added, principal, action) is reference(
            [*policy, {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": ARN}],
            principal,
            action,
            ARN,
        )
    removed = remove_permission(added, label="hypothesis")
    assert decide(removed, principal, action) is decide(original, principal, action)
