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

from broker.model.conditions import request_context
from broker.model.errors import SqsError
from broker.model.policy import (
    Decision,
    add_permission,
    check_policy,
    evaluate,
    remove_permission,
)

OWNER = "000000000000"
PARTNER = "111122223333"
ARN = f"arn:aws:sqs:us-east-1:{OWNER}:orders"
OTHER_ARN = f"arn:aws:sqs:us-east-1:{OWNER}:billing"
ALICE = f"arn:aws:iam::{OWNER}:user/alice"
BOB = f"arn:aws:iam::{PARTNER}:user/bob"


def decide(
    policy: dict[str, Any] | str | None,
    principal: str,
    action: str,
    resource: str = ARN,
    *,
    context: dict[str, tuple[str, ...]] | None = None,
    anonymous: bool = False,
):
    account = principal.split(":")[4]
    document = json.dumps(policy) if isinstance(policy, dict) else policy
    return evaluate(
        document,
        principal_arn=principal,
        principal_account=account,
        owner_account=OWNER,
        action=action,
        resource=resource,
        context=context,
        anonymous=anonymous,
    )


def over(
    *, secure: bool = True, principal: str = ALICE, **extra: str
) -> dict[str, tuple[str, ...]]:
    """A request context: what the broker builds for ``principal`` over HTTPS or HTTP."""
    context = request_context(
        now_ms=1_700_000_000_000,
        secure=secure,
        source_ip="127.0.0.1",
        principal_arn=principal,
        principal_account=principal.split(":")[4],
    )
    context.update({key.lower(): (value,) for key, value in extra.items()})
    return context


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
    # Queue names are case-sensitive: a resource in other letters is another queue.
    shouting = policy_of(statement("Allow", {"AWS": BOB}, "sqs:*", ARN.upper()))
    assert decide(shouting, BOB, "SendMessage") is Decision.DENY


def test_a_secure_transport_deny_refuses_plain_http_only():
    # AWS's recommended "deny everything over plain HTTP" statement.
    policy = policy_of(
        statement("Deny", "*", "sqs:*", Condition={"Bool": {"aws:SecureTransport": "false"}})
    )
    assert decide(policy, ALICE, "SendMessage", context=over(secure=True)) is Decision.ALLOW
    assert decide(policy, ALICE, "SendMessage", context=over(secure=False)) is Decision.DENY
    # A request that carries no context has no aws:SecureTransport: the condition is false.
    assert decide(policy, ALICE, "SendMessage") is Decision.ALLOW


def test_a_source_arn_allow_grants_only_to_that_source():
    topic = f"arn:aws:sns:us-east-1:{PARTNER}:orders"
    condition = {"Condition": {"ArnEquals": {"aws:SourceArn": topic}}}
    policy = policy_of(statement("Allow", {"AWS": BOB}, "sqs:SendMessage", **condition))
    assert decide(policy, BOB, "SendMessage", context=over(principal=BOB)) is Decision.DENY
    from_topic = over(principal=BOB, **{"aws:SourceArn": topic})
    assert decide(policy, BOB, "SendMessage", context=from_topic) is Decision.ALLOW
    elsewhere = over(principal=BOB, **{"aws:SourceArn": topic + "-other"})
    assert decide(policy, BOB, "SendMessage", context=elsewhere) is Decision.DENY


def test_a_principal_arn_condition():
    condition = {"Condition": {"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{PARTNER}:user/*"}}}
    policy = policy_of(statement("Allow", "*", "sqs:ReceiveMessage", **condition))
    assert decide(policy, BOB, "ReceiveMessage", context=over(principal=BOB)) is Decision.ALLOW
    carol = f"arn:aws:iam::{PARTNER}:role/carol"
    assert decide(policy, carol, "ReceiveMessage", context=over(principal=carol)) is Decision.DENY


def test_anonymous_callers_are_named_only_by_star():
    denied = policy_of(statement("Deny", "*", "sqs:SendMessage"))
    assert decide(denied, ALICE, "SendMessage", anonymous=True) is Decision.DENY
    by_account = policy_of(statement("Deny", {"AWS": OWNER}, "sqs:SendMessage"))
    assert decide(by_account, ALICE, "SendMessage", anonymous=True) is Decision.ALLOW
    assert decide(by_account, ALICE, "SendMessage") is Decision.DENY
    # Anonymous mode lets them in without an Allow, whatever account they stand for.
    assert decide(None, BOB, "SendMessage", anonymous=True) is Decision.ALLOW


SNS = "sns.amazonaws.com"


def by_service(policy: dict[str, Any] | None, service: str = SNS, **context: str) -> Decision:
    """The decision for ``sqs:SendMessage`` on ARN when ``service`` sends (SNS delivering)."""
    keys = request_context(
        now_ms=1_700_000_000_000,
        secure=True,
        source_ip=None,
        principal_arn=None,
        principal_account=None,
        source_arn=context.get("source_arn"),
        source_account=context.get("source_account"),
    )
    return evaluate(
        None if policy is None else json.dumps(policy),
        principal_arn="",
        principal_account="",
        owner_account=OWNER,
        action="SendMessage",
        resource=ARN,
        context=keys,
        calling_service=service,
    )


@pytest.mark.parametrize(
    ("principal", "names_sns"),
    [
        ("*", True),
        ({"AWS": "*"}, True),
        ({"AWS": ["*"]}, True),
        ({"Service": SNS}, True),
        ({"Service": ["events.amazonaws.com", SNS]}, True),
        ({"AWS": BOB, "Service": SNS}, True),
        ({"Service": "events.amazonaws.com"}, False),
        ({"Service": []}, False),
        ({"AWS": OWNER}, False),
        ({"AWS": f"arn:aws:iam::{OWNER}:root"}, False),
        ({"AWS": ALICE}, False),
    ],
)
def test_service_principals_name_only_the_service(principal, names_sns):
    allow = policy_of(statement("Allow", principal, "sqs:SendMessage"))
    assert (by_service(allow) is Decision.ALLOW) == names_sns
    deny = policy_of(statement("Allow", "*", "sqs:*"), statement("Deny", principal, "sqs:*"))
    assert (by_service(deny) is Decision.DENY) == names_sns


def test_a_service_entry_never_names_an_ordinary_caller():
    services = {"Service": [SNS, "events.amazonaws.com"]}
    deny = policy_of(statement("Deny", services, "sqs:*"))
    assert decide(deny, ALICE, "SendMessage") is Decision.ALLOW
    assert decide(deny, ALICE, "SendMessage", anonymous=True) is Decision.ALLOW
    allow = policy_of(statement("Allow", services, "sqs:*"))
    assert decide(allow, BOB, "SendMessage") is Decision.DENY


def test_a_service_needs_an_explicit_allow_and_sees_its_source_keys():
    # A service belongs to no account: the owner account's default does not let it in.
    assert by_service(None) is Decision.DENY
    topic = f"arn:aws:sns:us-east-1:{PARTNER}:orders"
    usual = statement(
        "Allow",
        {"Service": SNS},
        "sqs:SendMessage",
        Condition={"ArnEquals": {"aws:SourceArn": topic}},
    )
    policy = policy_of(usual)
    assert by_service(policy, source_arn=topic) is Decision.ALLOW
    assert by_service(policy, source_arn=topic + "-other") is Decision.DENY
    assert by_service(policy) is Decision.DENY  # no aws:SourceArn: the condition is false
    assert by_service(policy, "events.amazonaws.com", source_arn=topic) is Decision.DENY
    by_account = statement(
        "Allow",
        "*",
        "sqs:SendMessage",
        Condition={"StringEquals": {"aws:SourceAccount": PARTNER}},
    )
    assert by_service(policy_of(by_account), source_account=PARTNER) is Decision.ALLOW
    # NotPrincipal names services too: "deny everyone but SNS".
    but_sns = {"Effect": "Deny", "NotPrincipal": {"Service": SNS}, "Action": "sqs:*"}
    allow_all = statement("Allow", "*", "sqs:*")
    assert by_service(policy_of(allow_all, but_sns)) is Decision.ALLOW
    assert by_service(policy_of(allow_all, but_sns), "events.amazonaws.com") is Decision.DENY
    assert decide(policy_of(allow_all, but_sns), BOB, "SendMessage") is Decision.DENY


def test_not_action_not_resource_and_not_principal_match_what_they_do_not_name():
    allow = policy_of({"Effect": "Allow", "Principal": "*", "NotAction": "sqs:PurgeQueue"})
    assert decide(allow, BOB, "SendMessage") is Decision.ALLOW
    assert decide(allow, BOB, "PurgeQueue") is Decision.DENY
    elsewhere = policy_of(
        {"Effect": "Deny", "Principal": "*", "Action": "sqs:Send*", "NotResource": ARN}
    )
    assert decide(elsewhere, ALICE, "SendMessage") is Decision.ALLOW
    assert decide(elsewhere, ALICE, "SendMessage", OTHER_ARN) is Decision.DENY
    # The usual "deny everyone but this role" statement.
    everyone_but_alice = policy_of(
        {"Effect": "Deny", "NotPrincipal": {"AWS": ALICE}, "Action": "sqs:*", "Resource": ARN}
    )
    assert decide(everyone_but_alice, ALICE, "SendMessage") is Decision.ALLOW
    owner_role = f"arn:aws:iam::{OWNER}:role/deployer"
    assert decide(everyone_but_alice, owner_role, "SendMessage") is Decision.DENY
    assert decide(everyone_but_alice, ALICE, "SendMessage", anonymous=True) is Decision.DENY


def test_an_unreadable_stored_condition_can_only_deny_more():
    odd = {"Condition": {"StringSoundsLike": {"aws:username": "alice"}}}
    allow = policy_of(statement("Allow", {"AWS": BOB}, "sqs:SendMessage", **odd))
    assert decide(allow, BOB, "SendMessage", context=over(principal=BOB)) is Decision.DENY
    deny = policy_of(statement("Deny", {"AWS": ALICE}, "sqs:SendMessage", **odd))
    assert decide(deny, ALICE, "SendMessage", context=over()) is Decision.DENY


@pytest.mark.parametrize(
    "condition",
    [
        {"StringSoundsLike": {"aws:username": "alice"}},
        {"NumericLessThan": {"aws:EpochTime": "soon"}},
        {"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}},
        {"StringEquals": {"aws:username": {"nested": "object"}}},
        {"StringEquals": {}},
        ["not", "an", "object"],
    ],
)
def test_check_policy_refuses_conditions_it_cannot_evaluate(condition):
    policy = policy_of(statement("Allow", "*", "sqs:*", Condition=condition))
    with pytest.raises(SqsError) as excinfo:
        check_policy(json.dumps(policy))
    assert excinfo.value.code == "InvalidAttributeValue"
    assert "Policy" in excinfo.value.message


def test_check_policy_accepts_what_iam_documents():
    policy = policy_of(
        statement(
            "Allow",
            "*",
            "sqs:*",
            Condition={
                "ForAnyValue:StringLikeIfExists": {"aws:username": ["a*", "b?"]},
                "Bool": {"aws:SecureTransport": True},
                "DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"},
                "Null": {"aws:SourceArn": "true"},
                "NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "::1"]},
            },
        )
    )
    check_policy(json.dumps(policy))


def principals(count: int) -> dict[str, list[str]]:
    return {"AWS": [f"{n:012d}" for n in range(count)]}


def conditions(count: int) -> dict[str, dict[str, str]]:
    return {"StringEquals": {f"aws:username{n}": "x" for n in range(count)}}


ALLOW_ALL = statement("Allow", "*", "sqs:*")
# Each at a quota: accepted; one more of the same: refused.
AT_QUOTA = {
    "statements": lambda n: policy_of(*[ALLOW_ALL] * n),
    "actions": lambda n: policy_of(statement("Allow", "*", [f"sqs:A{i}" for i in range(n)])),
    "principals": lambda n: policy_of(statement("Allow", principals(n), "sqs:*")),
    "conditions": lambda n: policy_of(statement("Allow", "*", "sqs:*", Condition=conditions(n))),
}


@pytest.mark.parametrize(
    ("quota", "limit"), [("statements", 20), ("actions", 7), ("principals", 50), ("conditions", 10)]
)
def test_check_policy_holds_the_sqs_policy_quotas(quota, limit):
    check_policy(json.dumps(AT_QUOTA[quota](limit)))
    with pytest.raises(SqsError) as excinfo:
        check_policy(json.dumps(AT_QUOTA[quota](limit + 1)))
    assert excinfo.value.code == "InvalidAttributeValue"
    assert f"at most {limit} {quota}" in excinfo.value.message


def test_check_policy_holds_the_byte_quota():
    padded = policy_of(statement("Allow", "*", "sqs:*", Sid=""))
    room = 8192 - len(json.dumps(padded))
    padded["Statement"][0]["Sid"] = "s" * room
    check_policy(json.dumps(padded))
    padded["Statement"][0]["Sid"] += "s"
    with pytest.raises(SqsError, match="8,192 bytes"):
        check_policy(json.dumps(padded))


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("not json", "not a JSON document"),
        ('"a string"', "not a JSON object"),
        ('{"Version": "2012-10-17"}', "needs a Statement"),
        ('{"Statement": null}', "needs a Statement"),
        ('{"Statement": [1]}', "must be a JSON object"),
        (json.dumps(policy_of({**ALLOW_ALL, "Effect": "Maybe"})), "Effect of Allow or Deny"),
        (json.dumps(policy_of({"Effect": "Allow", "Action": "sqs:*"})), "one Principal"),
        (json.dumps(policy_of({"Effect": "Allow", "Principal": "*"})), "one Action"),
        (json.dumps(policy_of({**ALLOW_ALL, "NotPrincipal": {"AWS": "x"}})), "one Principal"),
        (json.dumps(policy_of({**ALLOW_ALL, "NotAction": "sqs:Send*"})), "one Action"),
        (json.dumps(policy_of({**ALLOW_ALL, "Action": []})), "one Action"),
    ],
)
def test_check_policy_refuses_what_is_not_a_resource_policy(document, reason):
    with pytest.raises(SqsError) as excinfo:
        check_policy(document)
    assert excinfo.value.code == "InvalidAttributeValue"
    assert excinfo.value.message.startswith("Invalid value for the parameter Policy. Reason: ")
    assert reason in excinfo.value.message


def test_check_policy_takes_a_single_statement_object_and_the_not_elements():
    check_policy(json.dumps({"Statement": ALLOW_ALL}))
    check_policy(json.dumps({"Version": "2012-10-17", "Statement": []}))
    # Removing the last labelled statement removes the policy itself, as SQS does.
    assert (
        remove_permission(json.dumps(policy_of({**ALLOW_ALL, "Sid": "only"})), label="only") == ""
    )
    check_policy(
        json.dumps(policy_of({"Effect": "Deny", "NotPrincipal": {"AWS": ALICE}, "NotAction": "x"}))
    )


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
        ("ok", ["abc"], ["SendMessage"]),  # not a twelve-digit account id
        ("ok", [PARTNER, "12345678901"], ["SendMessage"]),
    ],
)
def test_add_permission_refuses(label, accounts, actions):
    existing = add_permission(
        None, queue_arn=ARN, label="taken", accounts=[PARTNER], actions=["SendMessage"]
    )
    with pytest.raises(SqsError) as excinfo:
        add_permission(existing, queue_arn=ARN, label=label, accounts=accounts, actions=actions)
    assert excinfo.value.code == "InvalidParameterValue"


@pytest.mark.parametrize(
    ("existing", "accounts", "actions", "quota"),
    [
        (0, [PARTNER] * 51, ["SendMessage"], "at most 50 principals"),
        (1, [PARTNER] * 50, ["SendMessage"], "at most 50 principals"),
        (0, [PARTNER], ["SendMessage"] * 8, "at most 7 actions"),
        (20, [PARTNER], ["SendMessage"], "at most 20 statements"),
    ],
)
def test_add_permission_past_a_quota_is_over_limit(existing, accounts, actions, quota):
    policy = None
    for n in range(existing):
        policy = add_permission(
            policy, queue_arn=ARN, label=f"p{n}", accounts=[PARTNER], actions=["SendMessage"]
        )
    with pytest.raises(SqsError) as excinfo:
        add_permission(policy, queue_arn=ARN, label="one-more", accounts=accounts, actions=actions)
    assert (excinfo.value.code, excinfo.value.status) == ("OverLimit", 403)
    assert quota in excinfo.value.message


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
SERVICES = ["sns.amazonaws.com", "events.amazonaws.com"]
principal_values = st.one_of(
    st.just("*"),
    st.fixed_dictionaries(
        {
            "AWS": st.one_of(
                st.sampled_from([*PRINCIPALS, OWNER, PARTNER, "*"]),
                st.lists(st.sampled_from([*PRINCIPALS, OWNER, PARTNER]), max_size=3),
            )
        },
        optional={
            "Service": st.one_of(
                st.sampled_from(SERVICES), st.lists(st.sampled_from(SERVICES), max_size=2)
            )
        },
    ),
    st.fixed_dictionaries(
        {
            "Service": st.one_of(
                st.sampled_from(SERVICES), st.lists(st.sampled_from(SERVICES), max_size=2)
            )
        }
    ),
)
plain_statements = st.fixed_dictionaries(
    {
        "Effect": st.sampled_from(["Allow", "Deny"]),
        "Principal": principal_values,
        "Action": st.one_of(action_globs, st.lists(action_globs, max_size=3)),
        "Resource": st.sampled_from([ARN, OTHER_ARN, "*", f"arn:aws:sqs:*:{OWNER}:*"]),
    },
    optional={"Condition": st.just({"Bool": {"aws:SecureTransport": "true"}})},
)


@st.composite
def statements(draw: st.DrawFn) -> dict[str, Any]:
    """A statement, sometimes with NotPrincipal / NotAction / NotResource for its element."""
    statement = dict(draw(plain_statements))
    for element in ("Principal", "Action", "Resource"):
        if draw(st.integers(0, 3)) == 0:
            statement[f"Not{element}"] = statement.pop(element)
    return statement


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def reference(
    policy: list[dict[str, Any]],
    principal: str,
    action: str,
    resource: str,
    secure: bool = True,
    service: str | None = None,
) -> Decision:
    """IAM's order in a dozen lines: explicit Deny, then Allow, then same-account default.

    The one generated condition, ``Bool aws:SecureTransport true``, holds over HTTPS. A
    ``service`` caller is named by "*" and its Service entries, and needs an explicit Allow.
    """
    account = principal.split(":")[4]

    def principal_matches(spec: Any) -> bool:
        if spec == "*" or "*" in _listed(spec.get("AWS", [])):
            return True
        if service is not None:
            return service in _listed(spec.get("Service", []))
        return any(
            entry in (principal, account, f"arn:aws:iam::{account}:root")
            for entry in _listed(spec.get("AWS", []))
        )

    def glob(patterns: Any, value: str) -> bool:
        return any(fnmatch.fnmatchcase(value.lower(), p.lower()) for p in _listed(patterns))

    def applies(s: dict[str, Any], element: str, matches: Any) -> bool:
        # Not<element> applies to everything its list does not name.
        if f"Not{element}" in s:
            return not matches(s[f"Not{element}"])
        return bool(matches(s[element]))

    iam_action = action.removesuffix("Batch")  # SendMessageBatch needs sqs:SendMessage
    allowed = False
    for s in policy:
        if not applies(s, "Principal", principal_matches):
            continue
        if not applies(s, "Action", lambda p: glob(p, f"sqs:{iam_action}")):
            continue
        if not applies(s, "Resource", lambda p: glob(p, resource)):
            continue
        if "Condition" in s and not secure:
            continue
        if s["Effect"] == "Deny":
            return Decision.DENY
        allowed = True
    if allowed or (service is None and account == OWNER):
        return Decision.ALLOW
    return Decision.DENY


@given(
    policy=st.lists(statements(), max_size=5),
    principal=st.sampled_from(PRINCIPALS),
    action=st.sampled_from(ACTIONS),
    secure=st.booleans(),
)
def test_evaluate_agrees_with_the_reference(policy, principal, action, secure):
    expected = reference(policy, principal, action, ARN, secure)
    context = over(secure=secure, principal=principal)
    assert decide(policy_of(*policy), principal, action, context=context) is expected


@given(
    policy=st.lists(statements(), max_size=5),
    service=st.sampled_from(SERVICES),
    action=st.sampled_from(ACTIONS),
)
def test_a_service_caller_agrees_with_the_reference(policy, service, action):
    expected = reference(policy, ALICE, action, ARN, service=service)
    decision = evaluate(
        json.dumps(policy_of(*policy)),
        principal_arn=ALICE,  # ignored: the request is the service's
        principal_account=OWNER,
        owner_account=OWNER,
        action=action,
        resource=ARN,
        context=over(),
        calling_service=service,
    )
    assert decision is expected


@given(
    policy=st.lists(plain_statements, max_size=5),
    principal=st.sampled_from(PRINCIPALS),
    action=st.sampled_from(ACTIONS),
)
def test_an_anonymous_caller_is_denied_exactly_by_star_denies(policy, principal, action):
    starred = [s for s in policy if s["Principal"] == "*" or s["Principal"].get("AWS") == "*"]
    # For a caller of the owner account the reference refuses only on an explicit Deny.
    denies = [
        s
        for s in starred
        if s["Effect"] == "Deny" and reference([s], ALICE, action, ARN) is Decision.DENY
    ]
    decision = decide(policy_of(*policy), principal, action, context=over(), anonymous=True)
    assert (decision is Decision.DENY) == bool(denies)


@given(
    policy=st.lists(statements(), max_size=4),
    principal=st.sampled_from(PRINCIPALS),
    action=st.sampled_from(ACTIONS),
    extra=statements(),
)
def test_a_deny_statement_never_grants(policy, principal, action, extra):
    extra = {**extra, "Effect": "Deny"}
    before = decide(policy_of(*policy), principal, action)
    after = decide(policy_of(*policy, extra), principal, action)
    assert not (before is Decision.DENY and after is Decision.ALLOW)


@given(
    policy=st.lists(statements(), max_size=4),
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
        assert decide(added, principal, action, context=over(principal=principal)) is reference(
            [*policy, {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": ARN}],
            principal,
            action,
            ARN,
        )
    removed = remove_permission(added, label="hypothesis")
    assert decide(removed, principal, action) is decide(original, principal, action)
