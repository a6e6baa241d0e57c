"""Who is calling: the credentials file, SigV4 checks against botocore's signer, anonymity.

End-to-end checks with boto3 against a broker that verifies signatures are in
tests/compat/test_sqs_boto3.py; here the Authenticator meets requests signed by botocore.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import botocore.auth
import botocore.credentials
import pytest
from botocore.awsrequest import AWSRequest

from broker.auth import Authenticator, load_credentials, sender_id_of
from broker.config import AuthSettings, BrokerConfig
from monitoring.configfile import ConfigError, decode
from monitoring.httpserver import Request
from proto.aws.sigv4 import SigV4Error

ACCOUNT = "000000000000"
KEY = "AKIAWHARFEXAMPLE0001"
SECRET = "an-example-secret-access-key"
OTHER_KEY = "AKIAWHARFEXAMPLE0002"
OTHER_SECRET = "another-example-secret-key"
OTHER_PRINCIPAL = "arn:aws:iam::111122223333:role/consumer"
URL = "http://127.0.0.1:9324/"
BODY = b"Action=ListQueues&Version=2012-11-05"


def credentials_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(text)
    return path


@pytest.fixture
def authenticator(tmp_path: Path) -> Authenticator:
    path = credentials_file(
        tmp_path,
        f"""
[[keys]]
access_key_id = "{KEY}"
secret_access_key = "{SECRET}"

[[keys]]
access_key_id = "{OTHER_KEY}"
secret_access_key = "{OTHER_SECRET}"
principal = "{OTHER_PRINCIPAL}"
""",
    )
    settings = AuthSettings(anonymous=False, credentials_file=str(path))
    return Authenticator(settings, load_credentials(path), account_id=ACCOUNT)


def signed(
    key: str = KEY,
    secret: str = SECRET,
    *,
    ago: datetime.timedelta = datetime.timedelta(0),
    region: str = "us-east-1",
    presign_expires: int | None = None,
    body: bytes = BODY,
) -> Request:
    """A request as botocore signs it (``ago`` in the past), as the HTTP server hands it on."""
    credentials = botocore.credentials.Credentials(key, secret)
    aws_request = AWSRequest(
        method="POST",
        url=URL,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    when = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - ago
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        if presign_expires is None:
            botocore.auth.SigV4Auth(credentials, "sqs", region).add_auth(aws_request)
        else:
            aws_request.method = "GET"
            aws_request.data = b""
            botocore.auth.SigV4QueryAuth(
                credentials, "sqs", region, expires=presign_expires
            ).add_auth(aws_request)
    prepared = aws_request.prepare()
    parts = urlsplit(prepared.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = [(k.lower().encode(), v.encode()) for k, v in prepared.headers.items()]
    if not any(name == b"host" for name, _ in headers):
        headers.append((b"host", parts.netloc.encode()))
    payload = prepared.body or b""
    return Request(
        method=prepared.method.encode(),
        target=target.encode(),
        headers=headers,
        body=payload if isinstance(payload, bytes) else payload.encode(),
        client=("127.0.0.1", 1),
    )


# ---------------------------------------------------------------------- the credentials file


def test_credentials_file_is_read(tmp_path: Path):
    path = credentials_file(
        tmp_path,
        f'[[keys]]\naccess_key_id = "{KEY}"\nsecret_access_key = "{SECRET}"\n'
        f'principal = "{OTHER_PRINCIPAL}"\n',
    )
    (credential,) = load_credentials(path).values()
    assert (credential.access_key_id, credential.principal) == (KEY, OTHER_PRINCIPAL)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f'[[keys]]\naccess_key_id = "{KEY}"\nsecret_access_key = "short"\n', "length"),
        (f'[[keys]]\naccess_key_id = "lower-case"\nsecret_access_key = "{SECRET}"\n', "match"),
        (
            f'[[keys]]\naccess_key_id = "{KEY}"\nsecret_access_key = "{SECRET}"\n'
            f'principal = "bob"\n',
            "principal",
        ),
        (
            f'[[keys]]\naccess_key_id = "{KEY}"\nsecret_access_key = "{SECRET}"\n' * 2,
            "listed twice",
        ),
        (f'[[keys]]\naccess_key_id = "{KEY}"\nsecret = "{SECRET}"\n', "unknown field"),
        ("[[keys]\n", "syntax"),
    ],
)
def test_bad_credentials_files_are_refused(tmp_path: Path, text, reason):
    path = credentials_file(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_credentials(path)
    assert str(path) in str(excinfo.value)
    assert reason.lower() in str(excinfo.value).lower()


def test_a_missing_credentials_file_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError):
        load_credentials(tmp_path / "absent.toml")


# ---------------------------------------------------------------------- signatures


def test_a_botocore_signature_identifies_the_caller(authenticator: Authenticator):
    caller = authenticator.authenticate(signed(), region="us-east-1")
    assert not caller.anonymous
    assert caller.principal_arn == f"arn:aws:iam::{ACCOUNT}:root"
    assert caller.account == ACCOUNT
    assert caller.sender_id == ACCOUNT  # the root user's SenderId is its account id
    assert caller.service == "sqs"


def test_a_principal_from_the_file_names_its_account(authenticator: Authenticator):
    caller = authenticator.authenticate(signed(OTHER_KEY, OTHER_SECRET))
    assert caller.principal_arn == OTHER_PRINCIPAL
    assert caller.account == "111122223333"


def test_sender_ids_have_sqs_shapes_and_never_show_the_access_key():
    user = "arn:aws:iam::111122223333:user/team/orders"
    user_id = sender_id_of(user, "111122223333")
    assert re.fullmatch(r"AIDA[A-Z2-7]{17}", user_id)
    assert sender_id_of(user, "111122223333") == user_id  # stable
    assert sender_id_of("arn:aws:iam::111122223333:user/team/billing", "111122223333") != user_id
    role = sender_id_of("arn:aws:iam::111122223333:role/worker", "111122223333")
    assert re.fullmatch(r"AROA[A-Z2-7]{17}", role)
    session = "arn:aws:sts::111122223333:assumed-role/worker/i-0abc"
    assert sender_id_of(session, "111122223333") == f"{role}:i-0abc"
    assert sender_id_of("arn:aws:iam::111122223333:root", "111122223333") == "111122223333"


def test_a_keys_sender_id_is_its_principals(authenticator: Authenticator):
    caller = authenticator.authenticate(signed(OTHER_KEY, OTHER_SECRET))
    assert caller.sender_id == sender_id_of(OTHER_PRINCIPAL, "111122223333")
    assert OTHER_KEY not in caller.sender_id


@pytest.mark.parametrize(
    ("request_factory", "code"),
    [
        (lambda: signed(KEY, "the-wrong-secret-entirely"), "SignatureDoesNotMatch"),
        (lambda: signed("AKIAWHARFUNKNOWN0000", SECRET), "InvalidClientTokenId"),
        (lambda: signed(ago=datetime.timedelta(minutes=16)), "SignatureDoesNotMatch"),
        (lambda: signed(ago=-datetime.timedelta(minutes=16)), "SignatureDoesNotMatch"),
        (lambda: signed(region="eu-west-1"), "SignatureDoesNotMatch"),
        (lambda: signed(presign_expires=60, ago=datetime.timedelta(seconds=61)), "RequestExpired"),
    ],
)
def test_bad_signatures_are_refused(authenticator: Authenticator, request_factory, code):
    with pytest.raises(SigV4Error) as excinfo:
        authenticator.authenticate(request_factory(), region="us-east-1")
    assert excinfo.value.code == code
    assert excinfo.value.status_hint in (400, 403)


def test_a_tampered_body_is_refused(authenticator: Authenticator):
    request = signed()
    request.body = BODY.replace(b"ListQueues", b"ListQueueTags")
    with pytest.raises(SigV4Error) as excinfo:
        authenticator.authenticate(request)
    assert excinfo.value.code == "SignatureDoesNotMatch"


def test_within_the_allowed_skew_and_presigned(authenticator: Authenticator):
    authenticator.authenticate(signed(ago=datetime.timedelta(minutes=14)))
    caller = authenticator.authenticate(
        signed(presign_expires=60, ago=datetime.timedelta(seconds=30))
    )
    assert caller.sender_id == ACCOUNT


def test_an_unsigned_request_is_refused(authenticator: Authenticator):
    request = Request(b"POST", b"/", [(b"host", b"x")], BODY, ("127.0.0.1", 1))
    with pytest.raises(SigV4Error) as excinfo:
        authenticator.authenticate(request)
    assert excinfo.value.code == "MissingAuthenticationToken"


def test_anonymous_mode_accepts_anything_and_says_so():
    authenticator = Authenticator(AuthSettings(), {}, account_id=ACCOUNT)
    for request in (
        Request(b"POST", b"/", [(b"host", b"x")], BODY, ("127.0.0.1", 1)),
        signed("AKIAWHARFUNKNOWN0000", "whatever-secret-it-is", region="eu-west-1"),
    ):
        caller = authenticator.authenticate(request, region="us-east-1")
        assert caller.anonymous
        assert caller.account == ACCOUNT


# ---------------------------------------------------------------------- the config rule


def test_anonymous_access_needs_loopback_or_explicit_consent(tmp_path: Path):
    with pytest.raises(ConfigError) as excinfo:
        decode(b'[api]\nhost = "0.0.0.0"\n', BrokerConfig)
    assert "allow_anonymous_on_network" in str(excinfo.value)
    with pytest.raises(ConfigError):
        decode(b'[api]\nhost = "::"\n', BrokerConfig)
    for host in ("127.0.0.1", "::1", "localhost", "127.8.9.10"):
        decode(f'[api]\nhost = "{host}"\n'.encode(), BrokerConfig)
    decode(b'[api]\nhost = "0.0.0.0"\n[auth]\nallow_anonymous_on_network = true\n', BrokerConfig)
    path = credentials_file(
        tmp_path, f'[[keys]]\naccess_key_id = "{KEY}"\nsecret_access_key = "{SECRET}"\n'
    )
    text = f'[api]\nhost = "0.0.0.0"\n[auth]\nanonymous = false\ncredentials_file = "{path}"\n'
    config = decode(text.encode(), BrokerConfig)
    assert not config.auth.anonymous


@pytest.mark.parametrize(
    "authorization",
    [
        b"AWS4-HMAC-SHA256 Credential=garbage",
        b"AWS4-HMAC-SHA1 Credential=AKIAWHARFEXAMPLE0001/20240101/us-east-1/sqs/aws4_request",
        b"AWS4-HMAC-SHA256 Credential=AKIAWHARFEXAMPLE0001/20240101/us-east-1/sqs/aws4_request",
    ],
)
def test_a_malformed_authorization_header_is_refused(authenticator: Authenticator, authorization):
    request = Request(
        b"POST", b"/", [(b"host", b"x"), (b"authorization", authorization)], BODY, ("h", 1)
    )
    with pytest.raises(SigV4Error) as excinfo:
        authenticator.authenticate(request)
    assert excinfo.value.code == "IncompleteSignature"
