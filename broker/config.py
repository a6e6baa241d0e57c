"""The schema of broker.toml. Decoded by :mod:`monitoring.configfile`; strict and frozen."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from msgspec import Meta, field

from broker.model.errors import SqsError
from broker.model.names import validate_queue_name
from broker.model.settings import check_dead_letter_target, parse_create
from broker.model.state import MAX_IN_FLIGHT_MESSAGES
from broker.model.tags import MAX_TAGS, tag_problem
from monitoring.settings import (
    AdminSettings,
    FilePath,
    HttpLimits,
    LifecycleSettings,
    LoggingSettings,
    Port,
    Seconds,
    Section,
    check_host,
    listen_overlap,
)
from proto.aws.arn import queue_arn
from proto.http1 import is_valid_host

ACCOUNT_ID = re.compile(r"\d{12}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
# Region prefixes of AWS's other partitions (aws-cn, aws-us-gov, aws-iso*, aws-eusc).
_OTHER_PARTITIONS = ("cn-", "us-gov-", "us-iso", "eu-isoe-", "eusc-")
# The largest SendMessage(Batch) carries 1 MiB of message. On the wire each byte of it can
# take 3: percent-encoding in query forms (%XX per UTF-8 byte), \u00XX JSON escapes of 2-byte
# characters (botocore escapes all non-ASCII). 3 MiB for that plus 1 MiB for the envelope
# (URLs, parameter names, base64 of binary attributes) admits every valid request.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Request bodies all API connections may hold at once (being received, or received and not
# yet answered). Legitimate load holds far less: a request's body is held for the moment it
# takes to arrive and be handled, and most are a few KiB (SendMessage, ReceiveMessage,
# DeleteMessage). 1 GiB is 256 bodies of the largest size (4 MiB), or a thousand 1 MiB batches
# arriving at once over slow links; the per-request limit times api.limits.max_connections
# (40 GiB by default) is what it replaces.
DEFAULT_MAX_BUFFERED_REQUEST_BYTES = 1 << 30
DEFAULT_MIN_FREE_BYTES = 128 << 20  # room for the deletes that make room, and the WAL


class TlsSettings(Section, frozen=True, kw_only=True):
    """HTTPS on the API listener: both files set, or neither (plain HTTP)."""

    cert_file: Annotated[
        FilePath,
        Meta(description="PEM certificate chain, server certificate first. Empty: plain HTTP."),
    ] = ""
    key_file: Annotated[FilePath, Meta(description="PEM private key of the certificate.")] = ""
    handshake_timeout_seconds: Annotated[
        Seconds, Meta(description="Longest a client may take to complete the TLS handshake.")
    ] = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("api.tls needs both cert_file and key_file, or neither")


class ApiSettings(Section, frozen=True, kw_only=True):
    """The SQS and SNS API listener (one listener serves both services)."""

    host: str = "127.0.0.1"
    port: Port = 9324
    public_url: Annotated[
        str,
        Meta(
            description="Base of queue URLs and SNS links, e.g. https://sqs.internal:443. "
            "Empty: taken from each request's Host header, as AWS clients expect."
        ),
    ] = ""
    max_request_bytes: Annotated[
        int, Meta(ge=65536, le=64 << 20, description="Largest request body accepted.")
    ] = DEFAULT_MAX_REQUEST_BYTES
    max_buffered_request_bytes: Annotated[
        int,
        Meta(
            ge=65536,
            le=1 << 40,
            description="Request bodies all API connections may hold at once, received and "
            "not yet answered; a request whose declared body does not fit in what is left, or "
            "whose bytes stop fitting as they arrive, gets 503 ServiceUnavailable. At least "
            "max_request_bytes. Applied on reload.",
        ),
    ] = DEFAULT_MAX_BUFFERED_REQUEST_BYTES
    limits: HttpLimits = HttpLimits()
    tls: TlsSettings = TlsSettings()

    def __post_init__(self) -> None:
        check_host(self.host)
        if self.max_buffered_request_bytes < self.max_request_bytes:
            raise ValueError(
                f"max_buffered_request_bytes ({self.max_buffered_request_bytes}) is less than "
                f"max_request_bytes ({self.max_request_bytes}): a request of the largest "
                "accepted size could never be received"
            )
        if self.public_url and not is_origin_url(self.public_url):
            raise ValueError(
                f"public_url must be scheme://host[:port] without a path, got "
                f"{self.public_url!r}{origin_url_hint(self.public_url)}"
            )


class AwsIdentity(Section, frozen=True, kw_only=True):
    """The account and region the broker presents in ARNs and queue URLs."""

    region: str = "us-east-1"
    account_id: str = "000000000000"

    def __post_init__(self) -> None:
        if not REGION.fullmatch(self.region):
            raise ValueError(f"region {self.region!r} is not an AWS-style region name")
        if self.region.startswith(_OTHER_PARTITIONS):
            # Every ARN the broker makes or accepts is in the aws partition (arn:aws:...):
            # a China, GovCloud, ISO or sovereign-cloud region would need arn:aws-cn: and
            # the like, which clients would send and the broker would refuse.
            raise ValueError(
                f"region {self.region!r} is outside the aws partition (its ARNs are not "
                "arn:aws:...); Wharf makes and accepts aws-partition ARNs only: choose a "
                "region such as us-east-1 or eu-west-1"
            )
        if not ACCOUNT_ID.fullmatch(self.account_id):
            raise ValueError("account_id must be 12 digits")


class AuthSettings(Section, frozen=True, kw_only=True):
    """Who may call the API."""

    anonymous: Annotated[
        bool,
        Meta(
            description="Accept requests without checking their SigV4 signature. Allowed on "
            "loopback addresses only, unless allow_anonymous_on_network is also true."
        ),
    ] = True
    allow_anonymous_on_network: bool = False
    credentials_file: Annotated[
        FilePath,
        Meta(description="TOML file of [[keys]] access_key_id/secret_access_key/principal."),
    ] = ""

    def anonymous_on_network(self, host: str) -> bool:
        """Whether these settings would serve unsigned requests on the address ``host``
        without the operator having said so (allow_anonymous_on_network)."""
        return self.anonymous and not self.allow_anonymous_on_network and not _is_loopback(host)


class StorageSettings(Section, frozen=True, kw_only=True):
    """Where acknowledged messages live."""

    backend: Literal["sqlite"] = "sqlite"
    data_dir: Annotated[
        FilePath,
        Meta(
            description="Directory of the SQLite file and the signing key. Empty: "
            "$STATE_DIRECTORY under systemd, else ./wharf-data."
        ),
    ] = ""
    key_file: Annotated[
        FilePath,
        Meta(
            description="TOML file of the keys that encrypt messages at rest (queues with "
            "SqsManagedSseEnabled or KmsMasterKeyId). Empty: such messages are stored in clear."
        ),
    ] = ""
    min_free_bytes: Annotated[
        int,
        Meta(
            ge=0,
            description="Below this much free space on the data directory's filesystem, "
            "sends and publishes are refused with 503 ServiceUnavailable (receives and "
            "deletes go on), so the disk never fills up. 0: never refuse.",
        ),
    ] = DEFAULT_MIN_FREE_BYTES


class SqsSettings(Section, frozen=True, kw_only=True):
    """SQS quotas that AWS raises on request."""

    max_in_flight_messages: Annotated[
        int,
        Meta(
            ge=1,
            le=100_000_000,
            description="In-flight messages per queue (AWS's quota: 120,000). Beyond it a "
            "standard queue answers short polls with OverLimit; long polls and FIFO queues get "
            "no messages.",
        ),
    ] = MAX_IN_FLIGHT_MESSAGES


class SnsSettings(Section, frozen=True, kw_only=True):
    """SNS: the envelope signing key and the outbound HTTP/S delivery worker."""

    signing_key_file: Annotated[
        FilePath,
        Meta(
            description="PEM RSA private key that signs SNS envelopes. Empty: a key and a "
            "self-signed certificate are generated into the data directory on first start."
        ),
    ] = ""
    signing_cert_file: Annotated[
        FilePath, Meta(description="PEM certificate of signing_key_file, served at SigningCertURL.")
    ] = ""
    signing_cert_path: Annotated[
        str,
        Meta(
            description="Path on the API listener that serves the current signing "
            "certificate. SigningCertURL names SimpleNotificationService-<fingerprint>.pem in "
            "the same directory, where every certificate that has signed stays served."
        ),
    ] = "/SimpleNotificationService-wharf.pem"
    signing_cert_url_base: Annotated[
        str,
        Meta(
            description="scheme://host[:port] of SigningCertURL. Empty: api.public_url, else "
            "the Host header of the request that published."
        ),
    ] = ""
    signature_version: Annotated[
        Literal["1", "2"],
        Meta(description="SignatureVersion of topics that do not set one (AWS's default: 1)."),
    ] = "1"
    delivery_concurrency: Annotated[
        int,
        Meta(
            ge=1,
            le=10_000,
            description="Lead slots (each subscription's first HTTP/S attempt in flight; "
            "failing endpoints' probes hold at most half), and as many shared slots for "
            "healthy subscriptions' further attempts: sockets and memory stay under twice it.",
        ),
    ] = 256
    endpoint_concurrency: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000,
            description="HTTP/S delivery attempts in flight per subscription whose last attempt "
            "succeeded; a new or failing one has one attempt (a probe) in flight.",
        ),
    ] = 8
    connect_timeout_seconds: Annotated[
        Seconds, Meta(description="Bound on TCP connect plus TLS handshake to an endpoint.")
    ] = 5.0
    response_timeout_seconds: Annotated[
        Seconds, Meta(description="Bound on sending a delivery and reading the response (AWS: 15).")
    ] = 15.0
    ca_file: Annotated[
        FilePath,
        Meta(description="PEM CA bundle for https endpoints. Empty: the system trust store."),
    ] = ""
    max_filter_policies_per_topic: Annotated[
        int, Meta(ge=1, le=1_000_000, description="Filter policies per topic (AWS default: 200).")
    ] = 200
    signing_processes: Annotated[
        int | Literal["auto"],
        Meta(
            description="Processes that sign envelopes on other cores, started at the first "
            'signature (0: sign on the event loop). "auto": one per CPU the broker may run on '
            "beyond the first, at most 4.",
        ),
    ] = "auto"

    def __post_init__(self) -> None:
        if bool(self.signing_key_file) != bool(self.signing_cert_file):
            raise ValueError("sns needs both signing_key_file and signing_cert_file, or neither")
        if not re.fullmatch(r"/[A-Za-z0-9._~/-]*\.pem", self.signing_cert_path):
            raise ValueError(
                f"signing_cert_path must be an absolute path ending in .pem, "
                f"got {self.signing_cert_path!r}"
            )
        processes = self.signing_processes
        if processes != "auto" and not 0 <= processes <= 64:
            raise ValueError(f'signing_processes must be "auto" or 0 to 64, got {processes}')
        base = self.signing_cert_url_base
        if base and not is_origin_url(base):
            raise ValueError(
                f"signing_cert_url_base must be scheme://host[:port] without a path, got "
                f"{base!r}{origin_url_hint(base)}"
            )


class DeclaredQueue(Section, frozen=True, kw_only=True):
    """A queue created (or updated) at start and at reload. Removing it here never deletes
    the queue."""

    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def fifo(self) -> bool:
        return self.attributes.get("FifoQueue", "").lower() == "true"

    def __post_init__(self) -> None:
        # Values are checked here, not first at start, so that check-config and a reload
        # refuse them with the file and the key, before anything changes.
        try:
            validate_queue_name(self.name, fifo=self.fifo)
        except SqsError as error:
            raise ValueError(f"name {self.name!r}: {error.message}") from None
        fifo = {"FifoQueue": self.attributes["FifoQueue"]} if self.fifo else {}
        for key, value in self.attributes.items():
            try:
                parse_create({**fifo, key: value})
            except SqsError as error:
                raise ValueError(
                    f"queue {self.name!r}: attributes.{key}: {error.code}: {error.message}"
                ) from None
        try:  # what only the whole set can break (SSE-SQS with a KMS key, say)
            parse_create(self.attributes)
        except SqsError as error:
            raise ValueError(
                f"queue {self.name!r}: attributes: {error.code}: {error.message}"
            ) from None
        # TagQueue's rules: accepted here, a queue would hold tags the API refuses, and one
        # past the quota would refuse every later TagQueue.
        if len(self.tags) > MAX_TAGS:
            raise ValueError(
                f"queue {self.name!r}: tags: {len(self.tags)} tags, a queue can have at most "
                f"{MAX_TAGS}"
            )
        for key, value in self.tags.items():
            problem = tag_problem(key, value)
            if problem is not None:
                raise ValueError(f"queue {self.name!r}: tags.{key}: {problem}")

    def dead_letter_target(self) -> str | None:
        """The ARN its RedrivePolicy names, if it has one (the value is already valid)."""
        policy = parse_create(self.attributes).redrive_policy
        return None if policy is None else policy.dead_letter_target_arn


class BrokerConfig(Section, frozen=True, kw_only=True):
    """Everything wharf-broker reads from its configuration file."""

    api: ApiSettings = ApiSettings()
    aws: AwsIdentity = AwsIdentity()
    auth: AuthSettings = AuthSettings()
    storage: StorageSettings = StorageSettings()
    queues: list[DeclaredQueue] = field(default_factory=list)
    sqs: SqsSettings = SqsSettings()
    sns: SnsSettings = SnsSettings()
    admin: AdminSettings = AdminSettings()
    logging: LoggingSettings = LoggingSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()

    def __post_init__(self) -> None:
        if self.auth.anonymous_on_network(self.api.host):
            raise ValueError(
                f"auth.anonymous on the non-loopback address {self.api.host!r} lets anyone "
                "read and write every queue; set auth.credentials_file and anonymous = "
                "false, or allow_anonymous_on_network = true if that is really meant"
            )
        if not self.auth.anonymous and not self.auth.credentials_file:
            raise ValueError("auth.anonymous = false needs auth.credentials_file")
        port = self.api.port
        if port != 0 and port == self.admin.port and listen_overlap(self.api.host, self.admin.host):
            # Else check-config passes and the start fails with "Address already in use",
            # naming neither key.
            raise ValueError(
                f"api.port and admin.port are both {port} on the same address (api.host "
                f"{self.api.host!r}, admin.host {self.admin.host!r}): the second listener "
                "could not bind; give them different ports"
            )
        names = [q.name for q in self.queues]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"queues declared twice: {', '.join(duplicates)}")
        self.declaration_order()  # refuses a cycle of dead-letter targets
        self._check_declared_dead_letter_targets()

    def _check_declared_dead_letter_targets(self) -> None:
        """Refuse a RedrivePolicy naming a declared queue that the start would refuse as its
        target: of the other type, or denying it in the RedriveAllowPolicy the file gives it
        (the file's attributes win over the queue's). An undeclared target is the start's to
        check, against the queues the store holds."""
        arn_of = {
            q.name: queue_arn(self.aws.region, self.aws.account_id, q.name) for q in self.queues
        }
        by_arn = {arn_of[q.name]: q for q in self.queues}
        for index, queue in enumerate(self.queues):
            settings = parse_create(queue.attributes)
            policy = settings.redrive_policy
            target = None if policy is None else by_arn.get(policy.dead_letter_target_arn)
            if target is None:
                continue
            try:
                check_dead_letter_target(
                    settings, arn_of[queue.name], parse_create(target.attributes)
                )
            except SqsError as error:
                raise ValueError(
                    f"queues[{index}].attributes.RedrivePolicy (queue {queue.name!r}): "
                    f"{error.code}: {error.message}"
                ) from None

    def declaration_order(self) -> list[tuple[int, DeclaredQueue]]:
        """The declared queues (with their index in ``queues``), dead-letter targets first.

        A RedrivePolicy may name a queue declared further down; creating it first is the only
        order that works. Otherwise the file's order is kept.

        Raises:
            ValueError: the declared dead-letter targets form a cycle, which no order can
                create (each queue's target must exist before it).
        """
        by_arn = {
            queue_arn(self.aws.region, self.aws.account_id, q.name): i
            for i, q in enumerate(self.queues)
        }
        order: list[tuple[int, DeclaredQueue]] = []
        done: set[int] = set()
        for start in range(len(self.queues)):
            path: list[int] = []
            at: int | None = start
            # Follow the chain of targets (each queue has at most one) to its first queue
            # already placed or undeclared, then place the chain from its far end.
            while at is not None and at not in done:
                if at in path:
                    cycle = [*path[path.index(at) :], at]
                    names = " -> ".join(f"queues[{i}] {self.queues[i].name!r}" for i in cycle)
                    raise ValueError(
                        f"queues[{at}].attributes.RedrivePolicy: the declared dead-letter "
                        f"targets form a cycle ({names}); no order can create them"
                    )
                path.append(at)
                target = self.queues[at].dead_letter_target()
                at = None if target is None else by_arn.get(target)
            for i in reversed(path):
                done.add(i)
                order.append((i, self.queues[i]))
        return order


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_url_hint(url: str) -> str:
    """What is likely wrong with an IPv6 host in a URL :func:`is_origin_url` refused, as
    ``": ..."``; empty when nothing points at it."""
    authority = url.partition("://")[2].partition("/")[0]
    if authority.count(":") > 1 and "[" not in authority:
        return ": an IPv6 address goes in brackets (http://[::1]:9324)"
    if "[" in authority and "%" in authority and "%25" not in authority:
        return ": a zone id is written %25 in a URL (RFC 6874: http://[fe80::1%25eth0]:9324)"
    return ""


def is_origin_url(url: str) -> bool:
    """Whether ``url`` is ``http(s)://host[:port]`` with nothing after it, its host a valid
    authority (an IPv6 address in brackets, RFC 3986 3.2.2; a port up to 65535): URLs are
    built by appending to it, and must parse."""
    scheme, _, authority = url.partition("://")
    return (
        scheme in ("http", "https")
        and authority != ""
        and "@" not in authority
        and is_valid_host(authority.encode("latin-1"))
        and not authority.startswith(":")
    )
