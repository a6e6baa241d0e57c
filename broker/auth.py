"""Who is calling: SigV4 verification against a credentials file, or anonymous access.

The credentials file is TOML, referenced by path from broker.toml (secrets never live in the
main config)::

    [[keys]]
    access_key_id = "AKIAWHARFEXAMPLE0001"
    secret_access_key = "..."
    principal = "arn:aws:iam::000000000000:user/orders-service"

The principal's account is what queue policies match; without ``principal`` the key stands
for the broker's own account.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from msgspec import Meta, field

from broker.config import AuthSettings
from monitoring.configfile import ConfigError, load
from monitoring.httpserver import Request
from monitoring.settings import Section
from proto.aws import sigv4
from proto.aws.errors import AwsError

_PRINCIPAL = re.compile(r"arn:aws[a-z-]*:(iam|sts)::(\d{12}):\S+")


class Credential(Section, frozen=True, kw_only=True):
    access_key_id: Annotated[str, Meta(pattern=r"^[A-Z0-9]{16,128}$")]
    secret_access_key: Annotated[str, Meta(min_length=16)]
    principal: str = ""

    def __post_init__(self) -> None:
        if self.principal and not _PRINCIPAL.fullmatch(self.principal):
            raise ValueError(f"principal {self.principal!r} is not an IAM user or role ARN")


class CredentialsFile(Section, frozen=True, kw_only=True):
    keys: list[Credential] = field(default_factory=list)


def load_credentials(path: str | Path) -> dict[str, Credential]:
    """Read a credentials file; an access key id listed twice is an error.

    Raises:
        ConfigError: the file cannot be read or is invalid.
    """
    document = load(path, CredentialsFile)
    keys: dict[str, Credential] = {}
    for credential in document.keys:
        if credential.access_key_id in keys:
            raise ConfigError(path, f"access key {credential.access_key_id} is listed twice")
        keys[credential.access_key_id] = credential
    return keys


@functools.lru_cache(maxsize=1024)
def sender_id_of(principal_arn: str, account: str) -> str:
    """A message's SenderId for a caller, in the shape SQS gives it.

    SQS's SenderId is the account id for the root user, the IAM user's unique id
    (``AIDA`` + 17 characters) for a user, and the role's unique id with the session name
    (``AROA...:session``) for an assumed role. Wharf has no IAM to issue unique ids, so they
    are derived from the principal's ARN: stable, the same on every broker, and never the
    caller's access key id, which a consumer in another account has no business seeing.
    """
    if principal_arn.endswith(":root"):
        return account
    resource = principal_arn.split(":", 5)[-1]
    kind, _, rest = resource.partition("/")
    if kind == "assumed-role":
        role, _, session = rest.rpartition("/")
        role_arn = f"arn:aws:iam::{account}:role/{role}"
        return f"AROA{_unique_suffix(role_arn)}:{session}"
    prefix = "AROA" if kind == "role" else "AIDA"
    return prefix + _unique_suffix(principal_arn)


def _unique_suffix(arn: str) -> str:
    """17 characters of IAM's unique-id alphabet (upper-case letters and digits 2-7)."""
    return base64.b32encode(hashlib.sha256(arn.encode()).digest()).decode()[:17]


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated (or anonymous) caller of one request."""

    principal_arn: str
    account: str
    sender_id: str
    service: str | None  # the credential scope's service, when the request carries one
    anonymous: bool

    @classmethod
    def account_root(cls, account: str, *, service: str | None, anonymous: bool) -> Caller:
        """The account itself (``arn:aws:iam::<account>:root``) as the caller."""
        return cls(
            principal_arn=f"arn:aws:iam::{account}:root",
            account=account,
            sender_id=account,
            service=service,
            anonymous=anonymous,
        )


class Authenticator:
    """Checks each request's signature, or lets it through when the config says anonymous."""

    def __init__(
        self, settings: AuthSettings, credentials: Mapping[str, Credential], *, account_id: str
    ) -> None:
        self.settings = settings
        self.credentials = dict(credentials)
        self.account_id = account_id

    def authenticate(
        self, request: Request, *, region: str | None = None, service: str | None = None
    ) -> Caller:
        """Identify the caller.

        Args:
            request: the request.
            region: the broker's region, which a signature's credential scope must name
                (None accepts any; anonymous callers are never checked).
            service: the service the scope must name (``sqs``, ``sns``; None accepts any).

        Raises:
            SigV4Error: a missing, malformed, expired or wrong signature, an unknown key, or a
                signature scoped to another region.
        """
        if self.settings.anonymous:
            self._refuse_what_a_browser_sent(request)
            scope = sigv4.peek_scope(headers=request.headers, query=request.query)
            service = scope.service if scope is not None else None
            return Caller.account_root(self.account_id, service=service, anonymous=True)
        identity = sigv4.verify(
            method=request.method.decode("ascii", "replace"),
            path=request.raw_path,
            query=request.query,
            headers=request.headers,
            body=request.body,
            now=time.time(),
            secrets=self._secret,
        )
        if region is not None and identity.region != region:
            # What AWS answers for a signature scoped to another region.
            raise sigv4.SigV4Error(
                "SignatureDoesNotMatch",
                f"Credential should be scoped to a valid region, not '{identity.region}'.",
            )
        if service is not None and identity.service != service:
            # AWS's words for a signature scoped to another service (quoted in aws-sdk-go
            # #1850 and aws-sdk-ruby #431).
            raise sigv4.SigV4Error(
                "SignatureDoesNotMatch",
                f"Credential should be scoped to correct service: '{service}'.",
            )
        credential = self.credentials[identity.access_key_id]
        principal = credential.principal or f"arn:aws:iam::{self.account_id}:root"
        match = _PRINCIPAL.fullmatch(principal)
        account = match[2] if match else self.account_id
        return Caller(
            principal_arn=principal,
            account=account,
            sender_id=sender_id_of(principal, account),
            service=identity.service,
            anonymous=False,
        )

    def _refuse_what_a_browser_sent(self, request: Request) -> None:
        """Anonymous access is for SDKs and tools, never for a web page.

        Any page a local browser opens can post a form to a loopback port without a CORS
        preflight, and, after rebinding its own name to 127.0.0.1, read the answers. AWS
        needs no such rule (every request is signed). Browsers mark every request they send
        (Fetch Metadata's Sec-Fetch-*, and Origin on every POST); SDKs and the CLI do not.

        Raises:
            AwsError: AccessDenied (403).
        """
        if request.from_a_browser:
            raise AwsError(
                "AccessDenied",
                "Unsigned requests from a web browser (Origin or Sec-Fetch-* headers) are "
                "refused while auth.anonymous is on: sign them, or turn anonymous off.",
                status=403,
            )

    def _secret(self, access_key_id: str) -> str | None:
        credential = self.credentials.get(access_key_id)
        return credential.secret_access_key if credential is not None else None
