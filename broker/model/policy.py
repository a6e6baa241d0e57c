"""Queue access policies: the Policy attribute, AddPermission/RemovePermission, evaluation.

The subset of the IAM policy language SQS queue policies use: statements with Effect,
Principal (``*``, ``{"AWS": ...}`` with account ids or ARNs, ``{"Service": ...}`` with AWS
service principals such as ``sns.amazonaws.com``), Action (``sqs:SendMessage``, ``sqs:Send*``,
``sqs:*``, case-insensitive), Resource (queue ARNs with ``*``/``?``).
Condition blocks are evaluated by :mod:`broker.model.conditions` against the request's
context. Evaluation follows IAM's order: an explicit Deny wins, then an explicit Allow;
without either, principals of the queue's own account are allowed (as the account's identity
policies would let them) and other accounts are denied. An anonymous caller (the broker's
anonymous mode) is matched only by ``"*"`` principals and, without a Deny, is let in. A
request an AWS service makes (SNS delivering to a subscribed queue) is matched by ``"*"``
and by ``Service`` entries naming that service, never by ``AWS`` entries other than ``"*"``;
a ``Service`` entry never names an ordinary caller. Such a request belongs to no account: only
an explicit Allow lets it in (:mod:`broker.model.sns_to_sqs_access` adds Wharf's same-account
leniency for SNS).
NotPrincipal, NotAction and NotResource match what their lists do not name, as in IAM. A
Condition that cannot be read (only a policy stored before :func:`check_policy` existed can
hold one) is not understood: as an Allow it never matches, as a Deny it always matches its
principal and action, so it can only deny more.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, NamedTuple

from broker.model import strict_json
from broker.model.conditions import ConditionError, Context, check, holds, role_of_session
from broker.model.errors import (
    INVALID_ATTRIBUTE_VALUE,
    INVALID_PARAMETER_VALUE,
    OVER_LIMIT,
    SqsError,
)
from broker.model.globs import compile_glob

POLICY_VERSION = "2012-10-17"
# The only versions of the policy language IAM knows ("IAM JSON policy elements: Version").
POLICY_VERSIONS: Final = ("2008-10-17", "2012-10-17")
# "Amazon SQS policy quotas" (SQS Developer Guide): bytes, statements and principals per
# policy, actions per statement, conditions per policy.
POLICY_MAX_BYTES = 8192
POLICY_MAX_STATEMENTS = 20
POLICY_MAX_PRINCIPALS = 50
POLICY_MAX_ACTIONS = 7
POLICY_MAX_CONDITIONS = 10


@dataclass(frozen=True)
class PolicyQuotas:
    """The size limits a service puts on one resource policy."""

    max_bytes: int
    max_statements: int
    max_principals: int
    max_actions_per_statement: int | None  # None: the service sets no such limit


SQS_POLICY_QUOTAS: Final = PolicyQuotas(
    POLICY_MAX_BYTES, POLICY_MAX_STATEMENTS, POLICY_MAX_PRINCIPALS, POLICY_MAX_ACTIONS
)
# "Policy quotas" (SNS Developer Guide, API permissions reference): 30 KB, 100 statements,
# 200 principals per topic policy; no per-statement action limit.
SNS_POLICY_QUOTAS: Final = PolicyQuotas(30 * 1024, 100, 200, None)
# The batch actions have no IAM actions of their own: SendMessageBatch needs sqs:SendMessage
# and so on ("Amazon SQS API permissions: Actions and resource reference", SQS Developer Guide;
# AddPermission: "Specifying SendMessage ... also grants permissions for the corresponding batch
# versions of those actions").
IAM_ACTION = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
# What AddPermission accepts as ActionName: "the name of any action or *".
SQS_ACTIONS = frozenset(
    {
        "AddPermission",
        "CancelMessageMoveTask",
        "ChangeMessageVisibility",
        "ChangeMessageVisibilityBatch",
        "CreateQueue",
        "DeleteMessage",
        "DeleteMessageBatch",
        "DeleteQueue",
        "GetQueueAttributes",
        "GetQueueUrl",
        "ListDeadLetterSourceQueues",
        "ListMessageMoveTasks",
        "ListQueueTags",
        "ListQueues",
        "PurgeQueue",
        "ReceiveMessage",
        "RemovePermission",
        "SendMessage",
        "SendMessageBatch",
        "SetQueueAttributes",
        "StartMessageMoveTask",
        "TagQueue",
        "UntagQueue",
    }
)
MAX_LABEL_LENGTH = 80
PERMISSION_LABEL = re.compile(r"[A-Za-z0-9_-]{1,80}")  # AddPermission's Label (SQS and SNS)
ACCOUNT_ID = re.compile(r"\d{12}")  # an AWS account id: twelve digits
# A role's ARN, with its path if it has one: arn:aws:iam::<account>:role/<path/><role name>.
_ROLE_ARN = re.compile(r"arn:aws:iam::(\d{12}):role/(?:.*/)?([^/]+)")
_NO_CONTEXT: Context = {}


class Decision(Enum):
    ALLOW = "allow"
    DENY = "deny"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


class _Caller(NamedTuple):
    """Who makes a request, as Principal elements see it."""

    arn: str | None  # None: anonymous, or an AWS service
    account: str
    service: str | None  # an AWS service principal, e.g. "sns.amazonaws.com"


def _principal_matches(statement: dict[str, Any], caller: _Caller) -> bool:
    """Whether the statement applies to the caller."""
    if "NotPrincipal" in statement:
        return not _names(statement["NotPrincipal"], caller)
    return _names(statement.get("Principal"), caller)


def _names(principal: Any, caller: _Caller) -> bool:
    """Whether a Principal (or NotPrincipal) element names the caller."""
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    for entry in _as_list(principal.get("AWS")):
        if not isinstance(entry, str):
            continue
        if entry == "*":  # IAM: the same as "Principal": "*"
            return True
        if caller.arn is None:
            continue  # only "*" names an anonymous caller or a service
        if entry == caller.arn:
            return True
        # An account id, or the account's root ARN, stands for every principal in it.
        if entry in (caller.account, f"arn:aws:iam::{caller.account}:root"):
            return True
        # A role's ARN stands for its sessions (IAM's role principals); role names are
        # unique in an account whatever their path, which a session's ARN leaves out.
        role = _ROLE_ARN.fullmatch(entry)
        if role is not None and role_of_session(caller.arn) == (role[1], role[2]):
            return True
    if caller.service is not None:
        return caller.service in _as_list(principal.get("Service"))
    return False


def _listed_or_not(statement: dict[str, Any], element: str, value: str) -> bool:
    """Whether ``value`` matches the statement's ``element`` (Action or Resource), or is left
    out by its ``Not<element>``; a statement with neither covers every resource."""
    # Action names match in any case (IAM: "sqs:sendmessage" is sqs:SendMessage); resource
    # ARNs exactly, as queue and topic names are case-sensitive ("Q" is not "q").
    ignore_case = element == "Action"
    excluded = statement.get(f"Not{element}")
    if excluded is not None:
        return not _any_glob(_as_list(excluded), value, ignore_case)
    listed = _as_list(statement.get(element))
    if not listed and element == "Resource":
        return True
    return _any_glob(listed, value, ignore_case)


def _any_glob(globs: Iterable[Any], value: str, ignore_case: bool) -> bool:
    return any(
        isinstance(g, str) and compile_glob(g, ignore_case=ignore_case).fullmatch(value)
        for g in globs
    )


def _statements(policy: str | None) -> list[dict[str, Any]]:
    if not policy:
        return []
    try:
        document = json.loads(policy)
    except (ValueError, RecursionError):
        return []
    if not isinstance(document, dict):
        return []
    return [s for s in _as_list(document.get("Statement")) if isinstance(s, dict)]


def applicable(
    policy: str | None,
    *,
    principal_arn: str | None,
    principal_account: str,
    action: str,
    resource: str,
    service: str = "sqs",
    calling_service: str | None = None,
) -> list[dict[str, Any]]:
    """The statements of ``policy`` whose principal, action and resource cover a request.

    Their conditions are left to :func:`explicit_decision`, so that a caller asking the same
    question often (SNS, once per subscription and topic) parses and filters only once.

    Args:
        policy: the queue's (or topic's) Policy attribute (JSON), or None.
        principal_arn: the caller's ARN; None for an anonymous caller or a service.
        principal_account: the caller's account id (ignored for a service).
        action: the API action; a batch action is checked as the IAM action it needs.
        resource: the queue ARN (or topic ARN).
        service: the IAM service prefix of ``action``: ``sqs`` or ``sns``.
        calling_service: the AWS service principal making the request (``sns.amazonaws.com``),
            or None for an ordinary caller.
    """
    qualified = f"{service}:{IAM_ACTION.get(action, action)}"
    if calling_service is not None:
        caller = _Caller(None, "", calling_service)
    else:
        caller = _Caller(principal_arn, principal_account, None)
    return [
        statement
        for statement in _statements(policy)
        if _principal_matches(statement, caller)
        and _listed_or_not(statement, "Action", qualified)
        and _listed_or_not(statement, "Resource", resource)
    ]


def explicit_decision(
    statements: Iterable[dict[str, Any]], context: Context | None
) -> Decision | None:
    """What :func:`applicable` statements decide for a request with ``context``.

    Returns:
        DENY if a Deny's condition holds, else ALLOW if an Allow's does, else None (nothing
        explicit: the caller's account decides).
    """
    request = _NO_CONTEXT if context is None else context
    allowed = False
    for statement in statements:
        effect = statement.get("Effect")
        if "Condition" in statement:
            try:
                applies = holds(statement["Condition"], request)
            except ConditionError:
                applies = effect == "Deny"  # unreadable: it can only deny more
            if not applies:
                continue
        if effect == "Deny":
            return Decision.DENY
        if effect == "Allow":
            allowed = True
    return Decision.ALLOW if allowed else None


def evaluate(
    policy: str | None,
    *,
    principal_arn: str,
    principal_account: str,
    owner_account: str,
    action: str,
    resource: str,
    service: str = "sqs",
    context: Context | None = None,
    anonymous: bool = False,
    calling_service: str | None = None,
) -> Decision:
    """Decide whether ``principal_arn`` may call ``<service>:<action>`` on ``resource``.

    Args:
        policy: the queue's Policy attribute (JSON), or None.
        principal_arn: the caller's ARN (from the credentials file).
        principal_account: the caller's account id.
        owner_account: the queue's account id.
        action: the SQS API action, e.g. ``SendMessage``; a batch action is checked as the
            IAM action it needs (``SendMessageBatch`` as ``sqs:SendMessage``).
        resource: the queue ARN (or topic ARN).
        service: the IAM service prefix: ``sqs`` for queue policies, ``sns`` for topic
            policies (the same language; :mod:`broker.model.topic_permissions` edits those).
        context: the request's condition keys (:func:`broker.model.conditions.request_context`);
            None is a request that carries none, so every condition on a key is false.
        anonymous: an unsigned caller of a broker in anonymous mode: only ``"*"`` principals
            name it, and it is allowed unless a Deny matches.
        calling_service: the request is an AWS service's (e.g. ``sns.amazonaws.com``), not
            ``principal_arn``'s: only ``"*"`` and that service's ``Service`` entries name it,
            and only an explicit Allow lets it in.

    Returns:
        ALLOW or DENY.
    """
    statements = applicable(
        policy,
        principal_arn=None if anonymous else principal_arn,
        principal_account=principal_account,
        action=action,
        resource=resource,
        service=service,
        calling_service=calling_service,
    )
    explicit = explicit_decision(statements, context)
    if explicit is not None:
        return explicit
    if calling_service is None and (anonymous or principal_account == owner_account):
        return Decision.ALLOW
    return Decision.DENY


def check_policy(policy: str) -> None:
    """Refuse a Policy SQS would not store: not the policy grammar, over a quota, or holding
    a condition that could not be evaluated as IAM would evaluate it.

    SQS validates a policy when it is set and answers ``InvalidAttributeValue`` ("Invalid
    value for the parameter Policy."); a policy that is stored is therefore one whose every
    Condition :func:`broker.model.conditions.holds` can read.

    Raises:
        SqsError: ``InvalidAttributeValue``, the reason appended to AWS's message.
    """
    reason = policy_problem(policy)
    if reason is None and unreadable_condition(policy) is not None:
        reason = "a Condition uses an unknown operator or a value it cannot compare"
    if reason is not None:
        raise SqsError(
            INVALID_ATTRIBUTE_VALUE, f"Invalid value for the parameter Policy. Reason: {reason}."
        )


def policy_problem(policy: str) -> str | None:
    """Why ``policy`` is not a queue policy SQS would store, or None.

    :func:`grammar_problem`, then the SQS policy quotas (``POLICY_MAX_*``).
    """
    reason, _, statements = _grammar(policy)
    if reason is not None:
        return reason
    conditions = 0
    for statement in statements:
        condition = statement.get("Condition")
        if isinstance(condition, dict):
            conditions += sum(len(k) if isinstance(k, dict) else 1 for k in condition.values())
    if conditions > POLICY_MAX_CONDITIONS:
        return f"a policy holds at most {POLICY_MAX_CONDITIONS} conditions"
    return over_quota(policy, statements, SQS_POLICY_QUOTAS)


def topic_policy_problem(policy: str, topic_arn: str) -> str | None:
    """Why ``policy`` is not a policy SNS would store for the topic ``topic_arn``, or None.

    IAM's grammar (the elements every statement needs, Effect, a Principal or NotPrincipal,
    an Action or NotAction, and their types), then the rules of SNS's API permissions
    reference ("Each policy must cover only a single topic", "Each statement in a policy must
    have a unique statement sid", one Resource that "must match the ARN of the policy's
    topic") and IAM's two Versions, then SNS's policy quotas (:data:`SNS_POLICY_QUOTAS`).
    Only new policies are held to this: one an older broker stored is loaded as it is.
    """
    reason, document, statements = _grammar(policy)
    if reason is None:
        reason = _version_problem(document) or _topic_statements_problem(statements, topic_arn)
    return reason if reason is not None else over_quota(policy, statements, SNS_POLICY_QUOTAS)


def _version_problem(document: dict[str, Any]) -> str | None:
    version = document.get("Version")  # IAM: without one, the policy is 2008-10-17
    if version is None or version in POLICY_VERSIONS:
        return None
    return "Version must be {} or {}".format(*POLICY_VERSIONS)


def _topic_statements_problem(statements: list[dict[str, Any]], topic_arn: str) -> str | None:
    sids: set[str] = set()
    for statement in statements:
        sid = statement.get("Sid")
        if sid is not None:
            if not isinstance(sid, str):
                return "a Sid must be a string"
            if sid in sids:
                return f"every statement needs its own Sid: {sid} is repeated"
            sids.add(sid)
        resource = _one_of(statement, "Resource")
        if _as_list(resource) != [topic_arn]:  # also NotResource: it can name only this topic
            return f"every statement's Resource must be this topic's ARN, {topic_arn}, alone"
    return None


def _grammar(policy: str) -> tuple[str | None, dict[str, Any], list[dict[str, Any]]]:
    """Why ``policy`` is not IAM's policy grammar (None if it is), its document and its
    statements (a single statement object as a list of one)."""
    try:
        document = strict_json.loads(policy)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        return "not a JSON document", {}, []
    if not isinstance(document, dict):
        return "not a JSON object", {}, []
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):  # an empty list grants nothing: RemovePermission's
        return "a policy needs a Statement", {}, []
    for statement in statements:
        reason = _statement_problem(statement)
        if reason is not None:
            return reason, {}, []
    return None, document, statements


def _statement_problem(statement: Any) -> str | None:
    if not isinstance(statement, dict):
        return "every statement must be a JSON object"
    if statement.get("Effect") not in ("Allow", "Deny"):
        return "every statement needs an Effect of Allow or Deny"
    principal = _one_of(statement, "Principal")
    if principal is None or _one_of(statement, "Action") is None:
        return "every statement needs one Principal or NotPrincipal and one Action or NotAction"
    if principal != "*" and not (
        isinstance(principal, dict) and all(map(_strings, principal.values()))
    ):
        return 'a Principal is "*" or an object of principal names'
    for element in ("Action", "NotAction", "Resource", "NotResource"):
        if element in statement and not _strings(statement[element]):
            return f"{element} must be a string or a list of strings"
    if "Condition" in statement and not isinstance(statement["Condition"], dict):
        return "a Condition must be a JSON object"
    return None


def _strings(value: Any) -> bool:
    """A string, or a non-empty list of strings (IAM's form for most elements)."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _one_of(statement: dict[str, Any], element: str) -> Any:
    """The statement's ``element`` or ``Not<element>``; None unless exactly one is there."""
    present = [statement[k] for k in (element, f"Not{element}") if k in statement]
    return present[0] if len(present) == 1 and present[0] not in (None, [], {}) else None


def _principal_count(principal: Any) -> int:
    if not isinstance(principal, dict):
        return 1  # "*"
    return sum(len(_as_list(entries)) for entries in principal.values())


def unreadable_condition(policy: str) -> ConditionError | None:
    """The first Condition block of ``policy`` that could not be evaluated, or None.

    Shared by queue policies (:func:`check_policy`) and topic policies, which answer with
    their own service's error.
    """
    for statement in _statements(policy):
        if "Condition" not in statement:
            continue
        try:
            check(statement["Condition"])
        except ConditionError as error:
            return error
    return None


def add_permission(
    policy: str | None,
    *,
    queue_arn: str,
    label: str,
    accounts: Sequence[str],
    actions: Sequence[str],
) -> str:
    """AddPermission: a new Allow statement with Sid ``label``; returns the new Policy JSON.

    Raises:
        SqsError: ``InvalidParameterValue`` for a bad or duplicate label, no accounts or
            actions, or an action name that is not an SQS action.
    """
    if not PERMISSION_LABEL.fullmatch(label):
        raise SqsError(
            INVALID_PARAMETER_VALUE,
            "Value for parameter Label is invalid. Reason: Must be up to 80 alphanumeric "
            "characters, hyphens or underscores.",
        )
    if not accounts or not actions:
        raise SqsError(INVALID_PARAMETER_VALUE, "AddPermission needs AWSAccountIds and Actions.")
    for account in accounts:
        if not ACCOUNT_ID.fullmatch(account):  # a principal AWS could verify: 12 digits
            raise SqsError(
                INVALID_PARAMETER_VALUE,
                f"Value [{account}] for parameter PrincipalId is invalid. "
                "Reason: Unable to verify.",
            )
    for action in actions:
        if action != "*" and action not in SQS_ACTIONS:
            raise SqsError(
                INVALID_PARAMETER_VALUE,
                f"Value {action} for parameter ActionName is invalid. Reason: it is not the "
                "name of an SQS action, nor *.",
            )
    statements = _statements(policy)
    if any(s.get("Sid") == label for s in statements):
        raise SqsError(
            INVALID_PARAMETER_VALUE,
            f"Value {label} for parameter Label is invalid. Reason: Already exists.",
        )
    statements.append(
        {
            "Sid": label,
            "Effect": "Allow",
            "Principal": {"AWS": [f"arn:aws:iam::{a}:root" for a in accounts]},
            "Action": [f"SQS:{a}" if a != "*" else "SQS:*" for a in actions],
            "Resource": queue_arn,
        }
    )
    policy = json.dumps(
        {"Version": POLICY_VERSION, "Id": f"{queue_arn}/SQSDefaultPolicy", "Statement": statements}
    )
    over = over_quota(policy, statements, SQS_POLICY_QUOTAS)
    if over is not None:
        # AddPermission's own error for "the maximum number of permissions for the queue"
        # (SQS API reference, OverLimit), rather than the Policy attribute's.
        raise SqsError(
            OVER_LIMIT, f"AddPermission would pass the queue's policy quota: {over}.", status=403
        )
    return policy


def over_quota(policy: str, statements: list[Any], quotas: PolicyQuotas) -> str | None:
    """Which of ``quotas`` the policy (its JSON text and its statements) passes, or None."""
    if len(policy.encode("utf-8", "surrogatepass")) > quotas.max_bytes:
        return f"a policy holds at most {quotas.max_bytes:,} bytes"
    if len(statements) > quotas.max_statements:
        return f"a policy holds at most {quotas.max_statements} statements"
    most = quotas.max_actions_per_statement
    if most is not None and any(len(_as_list(_one_of(s, "Action"))) > most for s in statements):
        return f"a statement holds at most {most} actions"
    principals = sum(_principal_count(_one_of(s, "Principal")) for s in statements)
    if principals > quotas.max_principals:
        return f"a policy names at most {quotas.max_principals} principals"
    return None


def remove_permission(policy: str | None, *, label: str) -> str:
    """RemovePermission: drop the statement with Sid ``label``; returns the new Policy JSON.

    The last statement's removal returns ``""``, which removes the Policy attribute: SQS
    then lists no Policy for the queue, as before the first AddPermission.

    Raises:
        SqsError: ``InvalidParameterValue`` when no statement has that label.
    """
    statements = _statements(policy)
    kept = [s for s in statements if s.get("Sid") != label]
    if len(kept) == len(statements):
        raise SqsError(
            INVALID_PARAMETER_VALUE,
            f"Value {label} for parameter Label is invalid. Reason: can't find label.",
        )
    if not kept:
        return ""
    document = json.loads(policy) if policy else {"Version": POLICY_VERSION}
    document["Statement"] = kept
    return json.dumps(document)
