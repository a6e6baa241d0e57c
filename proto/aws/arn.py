"""ARNs and SQS queue URLs: parse and build, nothing else.

An ARN is ``arn:partition:service:region:account-id:resource`` (AWS General Reference,
"Amazon Resource Names"). The resource may itself contain colons: an SNS subscription ARN is the
topic ARN followed by ``:<subscription-id>``.

A queue URL is ``http(s)://host[:port]/<account-id>/<queue-name>``; SQS itself serves
``https://sqs.<region>.amazonaws.com/<account-id>/<queue-name>``. Wharf builds URLs on its own
host, so the host is kept as given and never interpreted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from proto.errors import ProtocolError

__all__ = [
    "Arn",
    "ArnError",
    "QueueUrl",
    "build_queue_url",
    "parse_arn",
    "parse_queue_arn",
    "parse_queue_url",
    "parse_subscription_arn",
    "parse_topic_arn",
    "queue_arn",
    "subscription_arn",
    "topic_arn",
]

# "arn:partition:service:region:account-id:resource" (AWS General Reference). Partitions and
# services are lowercase words with dashes (aws, aws-cn, aws-us-gov; sqs, sns).
_PARTITION: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
_SERVICE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_REGION: Final = re.compile(r"[a-z0-9-]{1,63}")
# An AWS account ID is 12 digits (AWS Account Management Reference, "AWS account identifiers").
_ACCOUNT: Final = re.compile(r"\d{12}")
# CreateQueue: "A queue name can have up to 80 characters. Valid values: alphanumeric
# characters, hyphens (-), and underscores (_). A FIFO queue name must end with the .fifo
# suffix." The suffix counts towards the 80.
_QUEUE_NAME: Final = re.compile(r"(?=.{1,80}\Z)[A-Za-z0-9_-]+(\.fifo)?")
# CreateTopic: "Topic names must be made up of only uppercase and lowercase ASCII letters,
# numbers, underscores, and hyphens, and must be between 1 and 256 characters long"; FIFO topic
# names end in .fifo.
_TOPIC_NAME: Final = re.compile(r"(?=.{1,256}\Z)[A-Za-z0-9_-]+(\.fifo)?")
# Subscription IDs are UUIDs; accept any token without separators (LocalStack and moto use
# UUIDs too, but nothing depends on the format).
_SUBSCRIPTION_ID: Final = re.compile(r"[A-Za-z0-9-]{1,128}")


class ArnError(ProtocolError):
    """A string that is not a well-formed ARN or queue URL of the expected kind."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_hint=400, code="InvalidParameterValue")


@dataclass(frozen=True, slots=True)
class Arn:
    """The six fields of an ARN; ``str(arn)`` joins them back."""

    partition: str
    service: str
    region: str
    account: str
    resource: str

    def __str__(self) -> str:
        return f"arn:{self.partition}:{self.service}:{self.region}:{self.account}:{self.resource}"


def parse_arn(text: str) -> Arn:
    """Split an ARN into its fields, checking the generic grammar only.

    Args:
        text: the ARN.

    Returns:
        The fields. ``region`` and ``account`` may be empty (IAM and S3 ARNs leave them out).

    Raises:
        ArnError: not six colon-separated fields starting with ``arn``, a bad partition or
            service, or an empty resource.
    """
    parts = text.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        raise ArnError(
            f"Invalid ARN {text!r}: expected arn:partition:service:region:account:resource."
        )
    _, partition, service, region, account, resource = parts
    if not _PARTITION.fullmatch(partition):
        raise ArnError(f"Invalid ARN {text!r}: bad partition {partition!r}.")
    if not _SERVICE.fullmatch(service):
        raise ArnError(f"Invalid ARN {text!r}: bad service {service!r}.")
    if region and not _REGION.fullmatch(region):
        raise ArnError(f"Invalid ARN {text!r}: bad region {region!r}.")
    if account and not _ACCOUNT.fullmatch(account):
        raise ArnError(f"Invalid ARN {text!r}: bad account {account!r}.")
    if not resource:
        raise ArnError(f"Invalid ARN {text!r}: empty resource.")
    return Arn(partition, service, region, account, resource)


def _parse_regional(text: str, service: str) -> Arn:
    arn = parse_arn(text)
    if arn.service != service:
        raise ArnError(f"Invalid {service} ARN {text!r}: service is {arn.service!r}.")
    if not arn.region or not arn.account:
        raise ArnError(f"Invalid {service} ARN {text!r}: region and account are required.")
    return arn


def queue_arn(region: str, account: str, name: str, *, partition: str = "aws") -> str:
    """Build ``arn:aws:sqs:<region>:<account>:<name>``.

    Raises:
        ArnError: a field is not valid for a queue ARN.
    """
    return str(parse_queue_arn(f"arn:{partition}:sqs:{region}:{account}:{name}"))


def parse_queue_arn(text: str) -> Arn:
    """Parse an SQS queue ARN; ``resource`` is the queue name.

    Raises:
        ArnError: not an ``sqs`` ARN with a region, an account and a valid queue name.
    """
    arn = _parse_regional(text, "sqs")
    if not _QUEUE_NAME.fullmatch(arn.resource):
        raise ArnError(f"Invalid queue ARN {text!r}: bad queue name {arn.resource!r}.")
    return arn


def topic_arn(region: str, account: str, name: str, *, partition: str = "aws") -> str:
    """Build ``arn:aws:sns:<region>:<account>:<name>``.

    Raises:
        ArnError: a field is not valid for a topic ARN.
    """
    return str(parse_topic_arn(f"arn:{partition}:sns:{region}:{account}:{name}"))


def parse_topic_arn(text: str) -> Arn:
    """Parse an SNS topic ARN; ``resource`` is the topic name.

    Raises:
        ArnError: not an ``sns`` ARN with a region, an account and a valid topic name (a
            subscription ARN, which has one more field, is rejected too).
    """
    arn = _parse_regional(text, "sns")
    if not _TOPIC_NAME.fullmatch(arn.resource):
        raise ArnError(f"Invalid topic ARN {text!r}: bad topic name {arn.resource!r}.")
    return arn


def subscription_arn(topic: str, subscription_id: str) -> str:
    """Build a subscription ARN: the topic ARN, a colon, the subscription ID.

    Raises:
        ArnError: ``topic`` is not a topic ARN, or the ID is not a plain token.
    """
    parse_topic_arn(topic)
    if not _SUBSCRIPTION_ID.fullmatch(subscription_id):
        raise ArnError(f"Invalid subscription ID {subscription_id!r}.")
    return f"{topic}:{subscription_id}"


def parse_subscription_arn(text: str) -> tuple[Arn, str]:
    """Parse an SNS subscription ARN into (its topic's ARN, the subscription ID).

    Raises:
        ArnError: not a topic ARN followed by ``:<id>``.
    """
    topic, sep, subscription_id = text.rpartition(":")
    if not sep or not _SUBSCRIPTION_ID.fullmatch(subscription_id):
        raise ArnError(f"Invalid subscription ARN {text!r}.")
    try:
        return parse_topic_arn(topic), subscription_id
    except ArnError:
        raise ArnError(f"Invalid subscription ARN {text!r}.") from None


@dataclass(frozen=True, slots=True)
class QueueUrl:
    """A queue URL: ``base`` is ``scheme://host[:port]`` exactly as given."""

    base: str
    account: str
    name: str

    def __str__(self) -> str:
        return f"{self.base}/{self.account}/{self.name}"


def build_queue_url(base: str, account: str, name: str) -> str:
    """Build ``<base>/<account>/<name>``, e.g. ``http://127.0.0.1:9324/000000000000/jobs``.

    Args:
        base: ``scheme://host[:port]``, without a trailing slash.
        account: the 12-digit account ID.
        name: the queue name.

    Raises:
        ArnError: any part is invalid.
    """
    return str(parse_queue_url(f"{base}/{account}/{name}"))


def parse_queue_url(url: str) -> QueueUrl:
    """Parse ``http(s)://host[:port]/<account-id>/<queue-name>``.

    Args:
        url: the queue URL, as a client sent it in ``QueueUrl``.

    Returns:
        Base, account and name.

    Raises:
        ArnError: not http(s), no host, user info, a query or fragment, or a path that is
            not exactly ``/<12 digits>/<queue name>``.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise ArnError(f"Invalid queue URL {url!r}.") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
    ):
        raise ArnError(f"Invalid queue URL {url!r}.")
    segments = parts.path.split("/")
    if len(segments) != 3 or segments[0] != "":
        raise ArnError(f"Invalid queue URL {url!r}: expected /<account-id>/<queue-name>.")
    account, name = segments[1], segments[2]
    if not _ACCOUNT.fullmatch(account) or not _QUEUE_NAME.fullmatch(name):
        raise ArnError(f"Invalid queue URL {url!r}: bad account or queue name.")
    return QueueUrl(f"{parts.scheme}://{parts.netloc}", account, name)
