"""Queue policies through boto3 against a real broker that checks signatures.

Three keys: the broker's own account (the owner), a partner in another account, and a user of
the owner's account. Cross-account CreateQueue/ListQueues/GetQueueUrl, explicit Deny for the
owner, conditions (aws:SecureTransport over HTTPS and plain HTTP, aws:SourceArn,
aws:PrincipalArn, aws:SourceIp), and what an anonymous broker applies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest
import trustme

from broker.config import ApiSettings, BrokerConfig, TlsSettings
from tests.support.broker import (
    ACCESS_KEY_ID,
    ACCOUNT_ID,
    REGION,
    SECRET_ACCESS_KEY,
    BrokerThread,
    botocore_session,
    broker_config,
    write_credentials,
)

PARTNER_ACCOUNT = "111122223333"
PARTNER_KEY = ("AKIAWHARFPARTNER0002", "partner-secret-access-key-0002")
PARTNER_ARN = f"arn:aws:iam::{PARTNER_ACCOUNT}:user/partner"
LOCAL_KEY = ("AKIAWHARFLOCALUSER02", "local-user-secret-access-key-02")
LOCAL_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/local"
SESSION_KEY = ("AKIAWHARFSESSION0003", "session-secret-access-key-0003")
SESSION_ARN = f"arn:aws:sts::{PARTNER_ACCOUNT}:assumed-role/Worker/job-7"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:orders"
KEYS = [
    (ACCESS_KEY_ID, SECRET_ACCESS_KEY, ""),
    (*PARTNER_KEY, PARTNER_ARN),
    (*LOCAL_KEY, LOCAL_ARN),
    (*SESSION_KEY, SESSION_ARN),
]
DENY_PLAIN_HTTP = {
    "Sid": "https-only",
    "Effect": "Deny",
    "Principal": "*",
    "Action": "sqs:*",
    "Resource": "*",
    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
}


def code_of(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def refused(call: Any, *args: Any, **kwargs: Any) -> str:
    """The error code of a call that must fail."""
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        call(*args, **kwargs)
    return code_of(excinfo)


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def unique(stem: str) -> str:
    return f"{stem}-{time.monotonic_ns()}"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerThread]:
    directory = tmp_path_factory.mktemp("policies")
    auth = write_credentials(directory, KEYS)
    with BrokerThread(broker_config(directory / "data", auth=auth)) as broker:
        yield broker


@pytest.fixture
def owner(secured: BrokerThread, protocol) -> Any:
    return secured.client(protocol)


@pytest.fixture
def partner(secured: BrokerThread, protocol) -> Any:
    return secured.client(protocol, access_key_id=PARTNER_KEY[0], secret_access_key=PARTNER_KEY[1])


@pytest.fixture
def local(secured: BrokerThread, protocol) -> Any:
    return secured.client(protocol, access_key_id=LOCAL_KEY[0], secret_access_key=LOCAL_KEY[1])


@pytest.fixture
def session(secured: BrokerThread, protocol) -> Any:
    return secured.client(protocol, access_key_id=SESSION_KEY[0], secret_access_key=SESSION_KEY[1])


def arn_of(client: Any, url: str) -> str:
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


# ---------------------------------------------------------------------- other accounts


def test_another_account_cannot_create_queues_here(owner, partner):
    name = unique("foreign-create")
    assert refused(partner.create_queue, QueueName=name) == "AccessDenied"
    assert refused(owner.get_queue_url, QueueName=name) == "AWS.SimpleQueueService.NonExistentQueue"
    # Not even a queue that exists and whose policy grants the partner everything.
    url = owner.create_queue(QueueName=name)["QueueUrl"]
    everything = {"Effect": "Allow", "Principal": {"AWS": PARTNER_ACCOUNT}, "Action": "sqs:*"}
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(everything)})
    assert refused(partner.create_queue, QueueName=name) == "AccessDenied"
    owner.delete_queue(QueueUrl=url)


def test_another_account_lists_none_of_this_accounts_queues(owner, partner):
    name = unique("foreign-list")
    url = owner.create_queue(QueueName=name)["QueueUrl"]
    owner.add_permission(QueueUrl=url, Label="all", AWSAccountIds=[PARTNER_ACCOUNT], Actions=["*"])
    assert owner.list_queues(QueueNamePrefix=name)["QueueUrls"] == [url]
    assert "QueueUrls" not in partner.list_queues(QueueNamePrefix=name)
    assert "QueueUrls" not in partner.list_queues()
    owner.delete_queue(QueueUrl=url)


def test_what_only_the_queue_owner_may_do_no_policy_grants_another_account(owner, partner):
    # SQS Developer Guide, "Limitations of Amazon SQS custom policies": cross-account
    # permissions don't apply to these actions, so AddPermission's "*" leaves them the owner's.
    url = owner.create_queue(QueueName=unique("owner-only"))["QueueUrl"]
    owner.add_permission(QueueUrl=url, Label="all", AWSAccountIds=[PARTNER_ACCOUNT], Actions=["*"])
    dead_letters = owner.create_queue(QueueName=unique("owner-only-dlq"))["QueueUrl"]
    owner.add_permission(
        QueueUrl=dead_letters, Label="all", AWSAccountIds=[PARTNER_ACCOUNT], Actions=["*"]
    )
    redrive = json.dumps({"deadLetterTargetArn": arn_of(owner, dead_letters), "maxReceiveCount": 1})
    owner.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": redrive})
    before = owner.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    owner_only = [
        (partner.set_queue_attributes, {"QueueUrl": url, "Attributes": {"Policy": ""}}),
        (partner.set_queue_attributes, {"QueueUrl": url, "Attributes": {"DelaySeconds": "9"}}),
        (
            partner.add_permission,
            {
                "QueueUrl": url,
                "Label": "more",
                "AWSAccountIds": [PARTNER_ACCOUNT],
                "Actions": ["*"],
            },
        ),
        (partner.remove_permission, {"QueueUrl": url, "Label": "all"}),
        (partner.tag_queue, {"QueueUrl": url, "Tags": {"team": "partner"}}),
        (partner.untag_queue, {"QueueUrl": url, "TagKeys": ["team"]}),
        (partner.list_queue_tags, {"QueueUrl": url}),
        (partner.start_message_move_task, {"SourceArn": arn_of(owner, dead_letters)}),
        (partner.list_message_move_tasks, {"SourceArn": arn_of(owner, dead_letters)}),
        (partner.delete_queue, {"QueueUrl": url}),
    ]
    for call, arguments in owner_only:
        assert refused(call, **arguments) == "AccessDenied", call
    assert owner.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"] == before
    assert "Tags" not in owner.list_queue_tags(QueueUrl=url)
    # What the policy may grant, it still does.
    partner.send_message(QueueUrl=url, MessageBody="granted")
    partner.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    owner.delete_queue(QueueUrl=url)
    owner.delete_queue(QueueUrl=dead_letters)


def test_get_queue_url_across_accounts_follows_the_queue_policy(owner, partner):
    name = unique("foreign-url")
    url = owner.create_queue(QueueName=name)["QueueUrl"]
    # Without QueueOwnerAWSAccountId the partner asks about its own account.
    missing = "AWS.SimpleQueueService.NonExistentQueue"
    assert refused(partner.get_queue_url, QueueName=name) == missing
    # Denied, it answers as a queue that is not there: names cannot be probed.
    assert (
        refused(partner.get_queue_url, QueueName=name, QueueOwnerAWSAccountId=ACCOUNT_ID) == missing
    )
    owner.add_permission(
        QueueUrl=url, Label="url", AWSAccountIds=[PARTNER_ACCOUNT], Actions=["GetQueueUrl"]
    )
    found = partner.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=ACCOUNT_ID)
    assert found["QueueUrl"] == url
    assert refused(partner.send_message, QueueUrl=url, MessageBody="x") == "AccessDenied"
    owner.delete_queue(QueueUrl=url)


def test_an_explicit_deny_of_get_queue_url_applies_to_the_owner(owner, local):
    name = unique("deny-url")
    url = owner.create_queue(QueueName=name)["QueueUrl"]
    deny = {"Effect": "Deny", "Principal": "*", "Action": "sqs:GetQueueUrl", "Resource": "*"}
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(deny)})
    missing = "AWS.SimpleQueueService.NonExistentQueue"
    for client in (owner, local):
        assert refused(client.get_queue_url, QueueName=name) == missing
        assert (
            refused(client.get_queue_url, QueueName=name, QueueOwnerAWSAccountId=ACCOUNT_ID)
            == missing
        )
    owner.send_message(QueueUrl=url, MessageBody="other actions still work")
    owner.delete_queue(QueueUrl=url)


def test_dead_letter_sources_are_listed_only_when_the_caller_may_see_them(owner, partner):
    dlq = owner.create_queue(QueueName=unique("dlq"))["QueueUrl"]
    redrive = json.dumps({"deadLetterTargetArn": arn_of(owner, dlq), "maxReceiveCount": "3"})
    shown, hidden = (
        owner.create_queue(QueueName=unique(stem), Attributes={"RedrivePolicy": redrive})[
            "QueueUrl"
        ]
        for stem in ("src-shown", "src-hidden")
    )
    owner.add_permission(
        QueueUrl=dlq,
        Label="sources",
        AWSAccountIds=[PARTNER_ACCOUNT],
        Actions=["ListDeadLetterSourceQueues"],
    )
    owner.add_permission(
        QueueUrl=shown, Label="url", AWSAccountIds=[PARTNER_ACCOUNT], Actions=["GetQueueUrl"]
    )
    assert sorted(owner.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"]) == sorted(
        [shown, hidden]
    )
    assert partner.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"] == [shown]
    # The owner too is refused what a Deny hides.
    deny = {"Effect": "Deny", "Principal": "*", "Action": "sqs:GetQueueUrl", "Resource": "*"}
    owner.set_queue_attributes(QueueUrl=hidden, Attributes={"Policy": policy(deny)})
    assert owner.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"] == [shown]
    for url in (shown, hidden, dlq):
        owner.delete_queue(QueueUrl=url)


# ---------------------------------------------------------------------- conditions


def test_a_source_arn_allow_grants_nothing_to_a_direct_call(owner, partner):
    url = owner.create_queue(QueueName=unique("source-arn"))["QueueUrl"]
    arn = arn_of(owner, url)
    sns_style = {
        "Effect": "Allow",
        "Principal": {"AWS": PARTNER_ARN},
        "Action": "sqs:SendMessage",
        "Resource": arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": TOPIC_ARN}},
    }
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(sns_style)})
    # A direct call carries no aws:SourceArn, so the condition is false.
    assert refused(partner.send_message, QueueUrl=url, MessageBody="x") == "AccessDenied"
    by_arn = {
        **sns_style,
        "Principal": "*",
        "Condition": {
            "ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{PARTNER_ACCOUNT}:user/*"},
            "IpAddress": {"aws:SourceIp": "127.0.0.0/8"},
        },
    }
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(sns_style, by_arn)})
    partner.send_message(QueueUrl=url, MessageBody="granted by a condition")
    elsewhere = {**by_arn, "Condition": {"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}}}
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(elsewhere)})
    assert refused(partner.send_message, QueueUrl=url, MessageBody="x") == "AccessDenied"
    owner.delete_queue(QueueUrl=url)


def test_a_role_arn_names_the_sessions_of_that_role(owner, session):
    # A Lambda function or an ECS task calls with its role's session credentials; the queue
    # policy names the role, and IAM lets its sessions in.
    url = owner.create_queue(QueueName=unique("role-session"))["QueueUrl"]
    arn = arn_of(owner, url)
    for role in (
        f"arn:aws:iam::{PARTNER_ACCOUNT}:role/Worker",
        f"arn:aws:iam::{PARTNER_ACCOUNT}:role/team/Worker",
    ):
        grant = {
            "Effect": "Allow",
            "Principal": {"AWS": role},
            "Action": "sqs:SendMessage",
            "Resource": arn,
        }
        owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(grant)})
        session.send_message(QueueUrl=url, MessageBody="from a role session")
    other_role = {**grant, "Principal": {"AWS": f"arn:aws:iam::{PARTNER_ACCOUNT}:role/Other"}}
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(other_role)})
    assert refused(session.send_message, QueueUrl=url, MessageBody="x") == "AccessDenied"
    # aws:PrincipalArn of a session is its role's ARN.
    by_condition = {
        **grant,
        "Principal": "*",
        "Condition": {
            "ArnEquals": {"aws:PrincipalArn": f"arn:aws:iam::{PARTNER_ACCOUNT}:role/Worker"}
        },
    }
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(by_condition)})
    session.send_message(QueueUrl=url, MessageBody="granted by aws:PrincipalArn")
    deny_role = {
        **grant,
        "Effect": "Deny",
        "Principal": {"AWS": f"arn:aws:iam::{PARTNER_ACCOUNT}:role/Worker"},
    }
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(by_condition, deny_role)})
    assert refused(session.send_message, QueueUrl=url, MessageBody="x") == "AccessDenied"
    owner.delete_queue(QueueUrl=url)


@pytest.mark.parametrize(
    "condition",
    [
        {"StringSoundsLike": {"aws:username": "x"}},
        {"NumericLessThan": {"aws:EpochTime": "later"}},
        {"Bool": {"aws:SecureTransport": "perhaps"}},
    ],
)
def test_a_policy_with_an_unreadable_condition_is_refused(owner, condition):
    statement = {"Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Condition": condition}
    assert_policy_refused(owner, policy(statement))


def assert_policy_refused(owner, document: str) -> None:
    """CreateQueue and SetQueueAttributes both refuse ``document`` and store no Policy."""
    name = unique("bad-policy")
    attributes = {"Policy": document}
    assert (
        refused(owner.create_queue, QueueName=name, Attributes=attributes)
        == "InvalidAttributeValue"
    )
    url = owner.create_queue(QueueName=name)["QueueUrl"]
    assert (
        refused(owner.set_queue_attributes, QueueUrl=url, Attributes=attributes)
        == "InvalidAttributeValue"
    )
    assert "Policy" not in owner.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]).get(
        "Attributes", {}
    )
    owner.delete_queue(QueueUrl=url)


@pytest.mark.parametrize(
    "document",
    [
        {"Version": "2012-10-17"},
        {"Statement": [{"Effect": "Allow", "Action": "sqs:*"}]},
        {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["sqs:A"] * 8}]},
        {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "sqs:*"}] * 21},
    ],
)
def test_a_policy_that_is_not_a_valid_queue_policy_is_refused(owner, document):
    assert_policy_refused(owner, json.dumps(document))


def test_add_permission_past_the_principal_quota_is_over_limit(owner):
    url = owner.create_queue(QueueName=unique("permission-quota"))["QueueUrl"]
    accounts = [f"{n:012d}" for n in range(51)]
    assert (
        refused(
            owner.add_permission,
            QueueUrl=url,
            Label="many",
            AWSAccountIds=accounts,
            Actions=["SendMessage"],
        )
        == "OverLimit"
    )
    owner.add_permission(
        QueueUrl=url, Label="fifty", AWSAccountIds=accounts[:50], Actions=["SendMessage"]
    )
    owner.delete_queue(QueueUrl=url)


def test_a_secure_transport_deny_refuses_plain_http_even_to_the_owner(owner):
    url = owner.create_queue(QueueName=unique("https-only-plain"))["QueueUrl"]
    owner.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(DENY_PLAIN_HTTP)})
    assert refused(owner.send_message, QueueUrl=url, MessageBody="x") == "AccessDenied"
    assert refused(owner.get_queue_attributes, QueueUrl=url) == "AccessDenied"
    # Even the change that would lift it: the account's root must do that over HTTPS.
    assert refused(owner.delete_queue, QueueUrl=url) == "AccessDenied"


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerThread, str]]:
    directory: Path = tmp_path_factory.mktemp("policies-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = (directory / n for n in ("cert.pem", "key.pem", "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    plain = broker_config(directory / "data", auth=write_credentials(directory, KEYS))
    config = BrokerConfig(
        api=ApiSettings(port=0, tls=TlsSettings(cert_file=str(cert_file), key_file=str(key_file))),
        admin=plain.admin,
        storage=plain.storage,
        auth=plain.auth,
    )
    with BrokerThread(config) as broker:
        yield broker, str(ca_file)


def test_a_secure_transport_deny_lets_https_callers_in(tls_broker):
    broker, ca_file = tls_broker
    host, port = broker.api
    session = boto3.Session(botocore_session=botocore_session("json"))
    client = session.client(
        "sqs",
        endpoint_url=f"https://{host}:{port}",
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        verify=ca_file,
        config=botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=5),
    )
    url = client.create_queue(QueueName=unique("https-only"))["QueueUrl"]
    client.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(DENY_PLAIN_HTTP)})
    client.send_message(QueueUrl=url, MessageBody="over https")
    messages = client.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
    assert [m["Body"] for m in messages] == ["over https"]
    assert client.get_queue_url(QueueName=url.rsplit("/", 1)[1])["QueueUrl"] == url
    client.delete_queue(QueueUrl=url)


# ---------------------------------------------------------------------- anonymous mode


def test_an_anonymous_caller_is_refused_by_a_deny_for_everyone(sqs, queues):
    url = queues()
    arn = arn_of(sqs, url)
    for_the_account = {
        "Effect": "Deny",
        "Principal": {"AWS": ACCOUNT_ID},
        "Action": "sqs:SendMessage",
        "Resource": arn,
    }
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(for_the_account)})
    sqs.send_message(QueueUrl=url, MessageBody="a principal's Deny does not name anonymous")
    for_everyone = {**for_the_account, "Principal": "*"}
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(for_everyone)})
    assert refused(sqs.send_message, QueueUrl=url, MessageBody="x") == "AccessDenied"
    deny_url = {**for_everyone, "Action": "sqs:GetQueueUrl"}
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy(deny_url)})
    assert (
        refused(sqs.get_queue_url, QueueName=url.rsplit("/", 1)[1])
        == "AWS.SimpleQueueService.NonExistentQueue"
    )
    sqs.send_message(QueueUrl=url, MessageBody="sends are allowed again")


def test_another_account_cannot_tell_a_denied_queue_from_a_missing_one(owner, partner):
    name = unique("hidden")
    owner.create_queue(QueueName=name)
    answers = []
    for asked in (name, unique("never-created")):
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            partner.get_queue_url(QueueName=asked, QueueOwnerAWSAccountId=ACCOUNT_ID)
        error = excinfo.value.response["Error"]
        status = excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]
        answers.append((error["Code"], error["Message"], status))
    assert (
        answers[0]
        == answers[1]
        == (
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist or you do not have access to it.",
            400,
        )
    )
