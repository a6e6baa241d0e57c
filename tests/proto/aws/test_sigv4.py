"""SigV4 verification: botocore signs, we verify; any tampering is rejected."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from unittest import mock
from urllib.parse import quote, urlsplit

import botocore.auth
import botocore.credentials
import pytest
from botocore.awsrequest import AWSRequest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proto.aws import sigv4
from proto.aws.sigv4 import SigV4Error

CANONICAL: dict[int, str] = {}
AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SECRETS = {AKID: SECRET}


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    botocore_canonical: str = ""

    def verify(self, now: float, **kwargs) -> sigv4.Identity:
        kwargs.setdefault("secrets", SECRETS)
        return sigv4.verify(
            method=self.method,
            path=self.path,
            query=self.query,
            headers=self.headers,
            body=self.body,
            now=now,
            **kwargs,
        )

    def header(self, name: str) -> str:
        return next(v for k, v in self.headers if k.lower() == name)

    def with_header(self, name: str, value: str) -> Req:
        kept = tuple((k, v) for k, v in self.headers if k.lower() != name.lower())
        return replace(self, headers=(*kept, (name, value)))


def epoch(when: datetime) -> float:
    return when.replace(tzinfo=UTC).timestamp()


def botocore_sign(
    method: str,
    url: str,
    *,
    when: datetime,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    params: dict[str, str] | None = None,
    region: str = "us-east-1",
    service: str = "sqs",
    token: str | None = None,
    expires: int | None = None,
    leave_unsigned: Iterable[str] = (),
) -> Req:
    """Sign with botocore's SigV4Auth (or SigV4QueryAuth when ``expires`` is given) and return
    the request as it would reach the server.

    ``leave_unsigned`` names headers (lowercase) botocore's signer is made to leave out of
    SignedHeaders, as a hand-written signer might; they are sent all the same.
    """
    credentials = botocore.credentials.Credentials(AKID, SECRET, token)
    request = AWSRequest(method=method, url=url, headers=headers or {}, data=body, params=params)
    if expires is None:
        signer = botocore.auth.SigV4Auth(credentials, service, region)
    else:
        signer = botocore.auth.SigV4QueryAuth(credentials, service, region, expires=expires)
    original = signer.canonical_request
    original_headers_to_sign = signer.headers_to_sign
    unsigned = tuple(leave_unsigned)

    def capture(request):
        text = original(request)
        CANONICAL[id(request)] = text
        return text

    def headers_to_sign(request):
        chosen = original_headers_to_sign(request)
        for name in unsigned:
            del chosen[name]
        return chosen

    with (
        mock.patch("botocore.auth.get_current_datetime", return_value=when),
        mock.patch.object(signer, "canonical_request", capture),
        mock.patch.object(signer, "headers_to_sign", headers_to_sign),
    ):
        signer.add_auth(request)
    canonical = CANONICAL.pop(id(request))
    prepared = request.prepare()
    split = urlsplit(prepared.url)
    body_bytes = prepared.body or b""
    if isinstance(body_bytes, str):
        body_bytes = body_bytes.encode()
    # What the HTTP client adds: botocore signs the host it derives from the URL.
    sent = (*((k, v) for k, v in prepared.headers.items()), ("Host", split.netloc))
    return Req(prepared.method, split.path, split.query, sent, body_bytes, canonical)


WHEN = datetime(2024, 5, 1, 12, 0, 0)
NOW = epoch(WHEN)

# -- strategies ------------------------------------------------------------------------------

_UNSIGNABLE = set(botocore.auth.SIGNED_HEADERS_BLACKLIST) | {
    "authorization",
    "host",
    "x-amz-date",
    "date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "content-length",
}
_TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789-_"
header_names = st.text(_TOKEN, min_size=1, max_size=12).filter(lambda n: n not in _UNSIGNABLE)
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=20
).map(lambda v: v.strip() or "v")
path_segments = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="/"), min_size=1, max_size=8
)
query_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)


@st.composite
def signed_requests(draw: st.DrawFn) -> tuple[Req, datetime]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    path = "/" + "/".join(quote(s, safe="") for s in draw(st.lists(path_segments, max_size=4)))
    pairs = draw(st.lists(st.tuples(query_text, query_text), max_size=4))
    # Either botocore builds the query from params, or the URL already carries it, encoded the
    # way botocore encodes (percent_encode_sequence).
    as_params = draw(st.booleans())
    url = "http://wharf.test:9324" + path
    params = None
    if pairs and as_params:
        params = dict(pairs)
    elif pairs:
        url += "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)
    names = draw(st.lists(header_names, unique=True, max_size=4))
    headers = {draw(st.sampled_from([n, n.upper(), n.title()])): draw(header_values) for n in names}
    when = draw(st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 1, 1)))
    when = when.replace(microsecond=0)
    req = botocore_sign(
        method,
        url,
        when=when,
        headers=headers,
        body=draw(st.binary(max_size=64)),
        params=params,
        region=draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=14)),
        service=draw(st.sampled_from(["sqs", "sns", "iam"])),
        token=draw(st.none() | st.text(_TOKEN, min_size=1, max_size=20)),
    )
    return req, when


# -- a published vector ----------------------------------------------------------------------


def test_aws_documentation_example():
    # "Examples of the complete Signature Version 4 signing process" (AWS General Reference):
    # IAM ListUsers, 20150830T123600Z, the documented key, hash and signature.
    headers = (
        ("Host", "iam.amazonaws.com"),
        ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
        ("X-Amz-Date", "20150830T123600Z"),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date, "
            "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        ),
    )
    canonical = sigv4.canonical_request(
        "GET",
        "/",
        "Action=ListUsers&Version=2010-05-08",
        headers,
        ["content-type", "host", "x-amz-date"],
        hashlib.sha256(b"").hexdigest(),
    )
    assert hashlib.sha256(canonical.encode()).hexdigest() == (
        "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
    )
    assert sigv4.signing_key(SECRET, "20150830", "us-east-1", "iam").hex() == (
        "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
    )
    identity = Req("GET", "/", "Action=ListUsers&Version=2010-05-08", headers, b"").verify(
        epoch(datetime(2015, 8, 30, 12, 36))
    )
    assert (identity.access_key_id, identity.region, identity.service) == (AKID, "us-east-1", "iam")
    assert not identity.presigned


# -- botocore signs, we verify ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(signed=signed_requests(), skew=st.integers(-900, 900))
def test_accepts_what_botocore_signs(signed, skew):
    req, when = signed
    identity = req.verify(epoch(when) + skew)
    assert identity.access_key_id == AKID
    assert identity.signed_at == epoch(when)
    token = next((v for k, v in req.headers if k.lower() == "x-amz-security-token"), None)
    assert identity.security_token == token
    assert req.header("authorization").split("/")[2:4] == [identity.region, identity.service]


@settings(max_examples=100, deadline=None)
@given(signed=signed_requests())
def test_canonical_request_is_botocores(signed):
    # The canonical request we rebuild from what reached the server is the one botocore signed.
    req, _ = signed
    auth = req.header("authorization")
    signed_headers = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    ours = sigv4.canonical_request(
        req.method,
        req.path,
        req.query,
        req.headers,
        signed_headers,
        hashlib.sha256(req.body).hexdigest(),
    )
    assert ours == req.botocore_canonical


@settings(max_examples=300, deadline=None)
@given(signed=signed_requests(), data=st.data())
def test_rejects_any_tampering(signed, data):
    req, when = signed
    now = epoch(when)
    auth = req.header("authorization")
    signed_headers = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    how = data.draw(
        st.sampled_from(
            ["method", "path", "query", "header", "body", "date", "secret", "signature", "scope"]
        )
    )
    if how == "method":
        tampered = replace(req, method={"GET": "POST"}.get(req.method, "GET"))
    elif how == "path":
        tampered = replace(req, path=req.path.rstrip("/") + "/x")
    elif how == "query":
        tampered = replace(req, query=req.query + ("&" if req.query else "") + "injected=1")
    elif how == "header":
        name = data.draw(st.sampled_from([n for n in signed_headers if n != "x-amz-date"]))
        old = req.header(name)
        tampered = req.with_header(name, old + "x")
    elif how == "body":
        tampered = replace(req, body=req.body + b"\x00")
    elif how == "date":
        stamp = datetime.strptime(req.header("x-amz-date"), "%Y%m%dT%H%M%SZ")
        moved = stamp + timedelta(seconds=data.draw(st.sampled_from([-1, 1])))
        assume(moved.date() == stamp.date())  # a new day is a scope mismatch, tested below
        tampered = req.with_header("X-Amz-Date", moved.strftime("%Y%m%dT%H%M%SZ"))
    elif how == "secret":
        with pytest.raises(SigV4Error) as caught:
            req.verify(now, secrets={AKID: SECRET + "x"})
        assert caught.value.code == "SignatureDoesNotMatch"
        return
    elif how == "signature":
        signature = auth[-64:]
        flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
        tampered = req.with_header("Authorization", auth[:-64] + flipped)
    else:
        region = auth.split("/")[2]
        tampered = req.with_header("Authorization", auth.replace(f"/{region}/", f"/{region}x/", 1))
    with pytest.raises(SigV4Error) as caught:
        tampered.verify(now)
    assert caught.value.code == "SignatureDoesNotMatch"
    assert caught.value.status_hint == 403


@settings(max_examples=50, deadline=None)
@given(signed=signed_requests(), extra=header_values)
def test_unsigned_headers_may_change(signed, extra):
    req, when = signed
    # Proxies add headers (X-Forwarded-For, Via); only the signed ones are protected.
    req.with_header("X-Forwarded-For", extra).with_header("User-Agent", extra).verify(epoch(when))


def test_mismatch_carries_what_we_computed():
    req = botocore_sign("POST", "http://wharf.test/", when=WHEN, body=b"{}")
    with pytest.raises(SigV4Error) as caught:
        replace(req, body=b"{ }").verify(NOW)
    assert caught.value.canonical_request is not None
    assert caught.value.canonical_request.endswith(hashlib.sha256(b"{ }").hexdigest())
    assert caught.value.string_to_sign is not None
    assert caught.value.string_to_sign.startswith("AWS4-HMAC-SHA256\n20240501T120000Z\n")


# -- clock -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "ok"), [(900, True), (901, False), (-900, True), (-901, False)])
def test_fifteen_minutes_of_skew(offset, ok):
    req = botocore_sign("POST", "http://wharf.test/", when=WHEN, body=b"x")
    if ok:
        req.verify(NOW + offset)
        return
    with pytest.raises(SigV4Error) as caught:
        req.verify(NOW + offset)
    assert (caught.value.code, caught.value.status_hint) == ("SignatureDoesNotMatch", 403)
    word = "expired" if offset > 0 else "not yet current"
    assert f"Signature {word}: 20240501T120000Z" in caught.value.message


def test_date_header_instead_of_x_amz_date():
    # botocore signs with the Date header when the request has one (SigV4Auth
    # _set_necessary_date_headers), and sends no X-Amz-Date then.
    req = botocore_sign("POST", "http://wharf.test/", when=WHEN, headers={"Date": "x"}, body=b"b")
    assert not any(k.lower() == "x-amz-date" for k, _ in req.headers)
    assert req.verify(NOW).signed_at == NOW


def test_credential_date_must_match_the_timestamp():
    req = botocore_sign("POST", "http://wharf.test/", when=WHEN)
    auth = req.header("authorization").replace("/20240501/", "/20240502/")
    with pytest.raises(SigV4Error) as caught:
        req.with_header("Authorization", auth).verify(NOW)
    assert caught.value.code == "SignatureDoesNotMatch"
    assert "Date in Credential scope does not match" in caught.value.message


# -- presigned URLs --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    params=st.dictionaries(
        query_text.filter(lambda k: not k.startswith("X-Amz")), query_text, max_size=4
    ),
    expires=st.integers(1, sigv4.MAX_PRESIGN_EXPIRES_SECONDS),
    data=st.data(),
    token=st.none() | st.just("session-token"),
)
def test_accepts_botocore_presigned_urls(params, expires, data, token):
    req = botocore_sign(
        "GET",
        "http://wharf.test:9324/000000000000/q",
        when=WHEN,
        params=params,
        expires=expires,
        token=token,
        region="eu-west-1",
    )
    assert not any(k.lower() == "authorization" for k, _ in req.headers)
    identity = req.verify(NOW + data.draw(st.integers(-900, expires)))
    assert identity.presigned
    assert (identity.region, identity.security_token) == ("eu-west-1", token)
    with pytest.raises(SigV4Error) as caught:
        req.verify(NOW + expires + 1)
    assert (caught.value.code, caught.value.status_hint) == ("RequestExpired", 400)
    with pytest.raises(SigV4Error) as caught:
        replace(req, query=req.query.replace("X-Amz-Expires=", "X-Amz-Expires=1")).verify(NOW)
    assert caught.value.code in ("SignatureDoesNotMatch", "IncompleteSignature")


@pytest.mark.parametrize("scope", ["us%FF/sqs", "us-east-1/sq%C3s", "us%ED%B3%BF/sqs"])
def test_a_credential_scope_that_is_no_utf_8_is_a_mismatch(scope):
    # Percent-escapes that decode to no UTF-8 (a lone byte, a surrogate's encoding) in the
    # region or service: the signing key took them to str.encode, which raised (500).
    req = botocore_sign("GET", "http://wharf.test/", when=WHEN, expires=60)
    query = req.query.replace("%2Fus-east-1%2Fsqs%2F", "%2F" + scope.replace("/", "%2F") + "%2F")
    assert query != req.query
    with pytest.raises(SigV4Error) as caught:
        replace(req, query=query).verify(NOW)
    assert caught.value.code == "SignatureDoesNotMatch"


def test_leading_zeros_in_expires_are_a_number_like_any_other():
    req = botocore_sign("GET", "http://wharf.test/", when=WHEN, expires=60)
    padded = replace(req, query=req.query.replace("X-Amz-Expires=60", "X-Amz-Expires=0060"))
    with pytest.raises(SigV4Error) as caught:
        padded.verify(NOW + 30)
    # Read as 60 (the signature covers the text, so it no longer matches), not refused.
    assert caught.value.message.startswith("The request signature we calculated")
    long = replace(req, query=req.query.replace("X-Amz-Expires=60", "X-Amz-Expires=" + "0" * 5000))
    with pytest.raises(SigV4Error) as caught:
        long.verify(NOW + 30)
    assert caught.value.code == "RequestExpired"


def test_presigned_url_from_the_future_is_rejected():
    req = botocore_sign("GET", "http://wharf.test/", when=WHEN, expires=3600)
    with pytest.raises(SigV4Error) as caught:
        req.verify(NOW - 901)
    assert caught.value.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda q: q.replace("X-Amz-Expires=60", "X-Amz-Expires=604801"), "IncompleteSignature"),
        (lambda q: q.replace("X-Amz-Expires=60", "X-Amz-Expires=-1"), "IncompleteSignature"),
        # Longer than int() reads (4,300 digits): it raised ValueError, answered 500.
        (
            lambda q: q.replace("X-Amz-Expires=60", "X-Amz-Expires=" + "9" * 5000),
            "IncompleteSignature",
        ),
        (
            lambda q: q.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-X"),
            "IncompleteSignature",
        ),
        (lambda q: q.replace("&X-Amz-SignedHeaders=host", ""), "IncompleteSignature"),
        (lambda q: q + "&X-Amz-Date=20240501T120000Z", "IncompleteSignature"),
        (
            lambda q: q.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=x-foo"),
            "IncompleteSignature",
        ),
    ],
)
def test_malformed_presigned_urls(change, code):
    req = botocore_sign("GET", "http://wharf.test/", when=WHEN, expires=60)
    with pytest.raises(SigV4Error) as caught:
        replace(req, query=change(req.query)).verify(NOW)
    assert caught.value.code == code


# -- payload hash header ---------------------------------------------------------------------


def test_content_sha256_header_must_match_the_body():
    body = b'{"QueueUrl": "q"}'
    digest = hashlib.sha256(body).hexdigest()
    req = botocore_sign(
        "POST", "http://wharf.test/", when=WHEN, headers={"X-Amz-Content-SHA256": digest}, body=body
    )
    assert req.verify(NOW).access_key_id == AKID
    assert req.verify(NOW, body_sha256=digest.upper()).access_key_id == AKID
    with pytest.raises(SigV4Error) as caught:
        replace(req, body=b'{"QueueUrl": "other"}').verify(NOW)
    assert caught.value.code == "SignatureDoesNotMatch"
    assert "x-amz-content-sha256" in caught.value.message


def test_unsigned_payload_only_when_allowed():
    req = botocore_sign(
        "POST",
        "https://wharf.test/",
        when=WHEN,
        headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
        body=b"anything",
    )
    with pytest.raises(SigV4Error) as caught:
        req.verify(NOW)
    assert caught.value.code == "IncompleteSignature"
    assert replace(req, body=b"changed").verify(NOW, allow_unsigned_payload=True)


def test_streaming_payload_is_refused():
    req = botocore_sign(
        "PUT",
        "https://wharf.test/",
        when=WHEN,
        headers={"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"},
    )
    with pytest.raises(SigV4Error) as caught:
        req.verify(NOW)
    assert caught.value.code == "IncompleteSignature"


# -- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("secrets", [{}, {"OTHER": "x"}, lambda key: None])
def test_unknown_access_key(secrets):
    req = botocore_sign("POST", "http://wharf.test/", when=WHEN)
    with pytest.raises(SigV4Error) as caught:
        req.verify(NOW, secrets=secrets)
    assert (caught.value.code, caught.value.status_hint) == ("InvalidClientTokenId", 403)
    assert caught.value.message == "The security token included in the request is invalid."


def test_secret_lookup_function():
    req = botocore_sign("POST", "http://wharf.test/", when=WHEN)
    assert req.verify(NOW, secrets=SECRETS.get).access_key_id == AKID


# -- malformed requests ----------------------------------------------------------------------


def test_no_signature_at_all():
    with pytest.raises(SigV4Error) as caught:
        Req("GET", "/", "Action=ListQueues", (("Host", "h"),), b"").verify(NOW)
    assert (caught.value.code, caught.value.status_hint) == ("MissingAuthenticationToken", 403)
    assert caught.value.shape == "MissingAuthenticationToken"


GOOD = (
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240501/us-east-1/sqs/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
)


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        ("AWS AKIDEXAMPLE:abc", "Unsupported AWS 'algorithm'"),
        ("AWS4-HMAC-SHA256", "requires 'Credential' parameter"),
        (GOOD.replace(", Signature=" + "0" * 64, ""), "requires 'Signature' parameter"),
        (GOOD.replace("SignedHeaders=host;x-amz-date, ", ""), "requires 'SignedHeaders'"),
        (GOOD.replace("/aws4_request", "/aws5_request"), "valid terminator"),
        (GOOD.replace("/us-east-1/", "/"), "Credential must have the form"),
        (GOOD.replace("/20240501/", "/2024-05-01/"), "YYYYMMDD"),
        (GOOD.replace("host;x-amz-date", "x-amz-date"), "'Host' must be a 'SignedHeader'"),
        (GOOD.replace("host;x-amz-date", "host;Host"), "distinct lowercase"),
        (GOOD.replace("host;x-amz-date", "host;;x-amz-date"), "distinct lowercase"),
        (GOOD + ", Signature=1", "Malformed Authorization header component"),
        (GOOD.replace(", SignedHeaders", " SignedHeaders"), "requires 'SignedHeaders'"),
        (GOOD + ", Expires=60", "'Expires' is not one of"),
        (GOOD.replace("Credential=", "credential=") + ", Credential=a", "'credential' is not"),
    ],
)
def test_malformed_authorization_header(authorization, expected):
    headers = (("Host", "h"), ("X-Amz-Date", "20240501T120000Z"), ("Authorization", authorization))
    with pytest.raises(SigV4Error) as caught:
        Req("POST", "/", "", headers, b"").verify(NOW)
    assert (caught.value.code, caught.value.status_hint) == ("IncompleteSignature", 400)
    assert expected in caught.value.message


@pytest.mark.parametrize(
    "headers",
    [
        (("Host", "h"), ("Authorization", GOOD)),
        (("Host", "h"), ("Authorization", GOOD), ("X-Amz-Date", "2024-05-01T12:00:00Z")),
        (("Host", "h"), ("Authorization", GOOD), ("X-Amz-Date", "20241301T120000Z")),
        (("Host", "h"), ("Authorization", GOOD), ("Date", "not a date")),
        # In UTC past the year 9999, which datetime cannot hold (it answered 500).
        (("Host", "h"), ("Authorization", GOOD), ("Date", "Fri, 31 Dec 9999 23:59:59 -1400")),
        # Before the year 1000: no ISO 8601 basic-format timestamp.
        (("Host", "h"), ("Authorization", GOOD), ("Date", "Mon, 01 Jan 0100 00:00:00 GMT")),
        (
            ("Host", "h"),
            ("Authorization", GOOD),
            ("Authorization", GOOD),
            ("X-Amz-Date", "20240501T120000Z"),
        ),
    ],
)
def test_malformed_dates_and_duplicates(headers):
    with pytest.raises(SigV4Error) as caught:
        Req("POST", "/", "", headers, b"").verify(NOW)
    assert caught.value.code == "IncompleteSignature"


def test_both_mechanisms_at_once():
    req = botocore_sign("GET", "http://wharf.test/", when=WHEN, expires=60)
    with pytest.raises(SigV4Error) as caught:
        req.with_header("Authorization", GOOD).verify(NOW)
    assert "Only one auth mechanism" in caught.value.message


def test_missing_signed_header():
    req = botocore_sign("POST", "http://wharf.test/", when=WHEN, headers={"X-Custom": "1"})
    stripped = replace(req, headers=tuple((k, v) for k, v in req.headers if k != "X-Custom"))
    with pytest.raises(SigV4Error) as caught:
        stripped.verify(NOW)
    assert caught.value.code == "SignatureDoesNotMatch"
    assert "x-custom" in caught.value.message


def test_bytes_headers_and_path_as_h11_delivers_them():
    req = botocore_sign(
        "POST", "http://wharf.test/000000000000/q%20x", when=WHEN, headers={"X-Meta": "caf\xe9"}
    )
    # botocore signs the str and sends it UTF-8 encoded (Endpoint._encode_headers).
    as_bytes = tuple((k.encode("latin-1"), v.encode("utf-8")) for k, v in req.headers)
    identity = sigv4.verify(
        method=req.method,
        path=req.path.encode(),
        query=req.query.encode(),
        headers=as_bytes,
        body=req.body,
        now=NOW,
        secrets=SECRETS,
    )
    assert identity.access_key_id == AKID


def test_header_characters_node_sends_as_latin_1():
    # The JS SDKs sign the characters, UTF-8 in the canonical request, as botocore does; but
    # Node.js writes header values as latin-1 bytes ("caf\xe9", not "caf\xc3\xa9").
    req = botocore_sign("POST", "http://wharf.test/", when=WHEN, headers={"X-Meta": "caf\xe9"})
    as_bytes = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in req.headers)
    identity = sigv4.verify(
        method=req.method, path=b"/", query=b"", headers=as_bytes, now=NOW, secrets=SECRETS
    )
    assert identity.access_key_id == AKID


def test_dot_segments_are_removed_before_signing():
    req = botocore_sign("GET", "http://wharf.test/a/./b/../c//d/", when=WHEN)
    # botocore signs the normalized path; a server sees whatever the client sent.
    for path in ("/a/./b/../c//d/", "/a/c/d/"):
        replace(req, path=path).verify(NOW)


_AUTH_TEXT = st.text(
    st.sampled_from(list("AWS4-HMAC-SHA256 Credential=/,;SignedHeaders=Signature=0aZ_ ")),
    max_size=80,
)


@given(
    authorization=st.one_of(_AUTH_TEXT, st.just(GOOD)),
    date=st.text(max_size=20) | st.just("20240501T120000Z"),
    query=st.text(max_size=60) | st.just("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a/b"),
    body=st.binary(max_size=20),
    now=st.floats(0, 4e9),
)
def test_verify_is_total(authorization, date, query, body, now):
    headers = (("Host", "h"), ("X-Amz-Date", date), ("Authorization", authorization))
    try:
        sigv4.verify(
            method="POST",
            path="/",
            query=query,
            headers=headers,
            body=body,
            now=now,
            secrets=SECRETS,
        )
    except SigV4Error:
        pass


# -- peeking ---------------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(signed=signed_requests())
def test_peek_scope_reads_botocores_scope(signed):
    req, when = signed
    scope = sigv4.peek_scope(headers=req.headers, query=req.query)
    assert scope is not None
    assert f"Credential={scope.access_key_id}/{scope}" in req.header("authorization")
    assert scope.date == when.strftime("%Y%m%d")


def test_peek_scope_on_presigned_and_anonymous_requests():
    req = botocore_sign(
        "GET", "http://wharf.test/", when=WHEN, expires=60, service="sns", region="ap-south-1"
    )
    scope = sigv4.peek_scope(headers=req.headers, query=req.query)
    assert scope == sigv4.CredentialScope(AKID, "20240501", "ap-south-1", "sns")
    assert sigv4.peek_scope(headers=[("Host", "h")], query="Action=ListQueues") is None
    with pytest.raises(SigV4Error):
        sigv4.peek_scope(headers=[("Authorization", "Basic dXNlcjpwYXNz")], query="")
    with pytest.raises(SigV4Error):
        sigv4.peek_scope(headers=[], query="X-Amz-Credential=AKID%2F2024%2Fr%2Fs")


# -- headers that must be signed -------------------------------------------------------------

JSON_URL = "http://wharf.test:9324/"
SEND_BODY = b'{"QueueUrl":"http://wharf.test:9324/000000000000/orders","MessageBody":"hi"}'
JSON_HEADERS = {
    "X-Amz-Target": "AmazonSQS.SendMessage",
    "Content-Type": "application/x-amz-json-1.0",
}
TARGETS = st.sampled_from(
    ["AmazonSQS.DeleteQueue", "AmazonSQS.PurgeQueue", "AmazonSQS.ListQueues", "AmazonSNS.Publish"]
)


def refusal(req: Req, now: float = NOW) -> SigV4Error:
    with pytest.raises(SigV4Error) as caught:
        req.verify(now)
    return caught.value


@settings(max_examples=50, deadline=None)
@given(target=TARGETS)
def test_the_target_must_be_signed(target):
    # The finding: botocore signs X-Amz-Target, but a signer that leaves it out produced a
    # request whose target anyone could swap (a SendMessage replayed as a DeleteQueue of the
    # same {"QueueUrl": ...}) and that still verified.
    unsigned = botocore_sign(
        "POST",
        JSON_URL,
        when=WHEN,
        headers=JSON_HEADERS,
        body=SEND_BODY,
        leave_unsigned=["x-amz-target"],
    )
    assert "x-amz-target" not in unsigned.header("authorization")
    for sent in (unsigned, unsigned.with_header("X-Amz-Target", target)):
        error = refusal(sent)
        assert (error.code, error.status_hint, error.shape) == (
            "IncompleteSignature",
            400,
            "IncompleteSignature",
        )
        assert "not signed: x-amz-target." in error.message
    # Signed, as every SDK signs it, the target is held by the signature.
    signed = botocore_sign("POST", JSON_URL, when=WHEN, headers=JSON_HEADERS, body=SEND_BODY)
    assert "x-amz-target" in signed.header("authorization")
    assert signed.verify(NOW).access_key_id == AKID
    error = refusal(signed.with_header("X-Amz-Target", target))
    assert (error.code, error.status_hint) == ("SignatureDoesNotMatch", 403)


_AMZ_SUFFIXES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
_OTHER_NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10).filter(
    lambda name: not name.startswith("x-amz") and name not in _UNSIGNABLE and name != "date"
)


@st.composite
def partly_signed(draw: st.DrawFn) -> tuple[Req, set[str]]:
    """A request botocore signed with some of its headers left out of SignedHeaders, and the
    x-amz- ones among those left out that must have been signed."""
    amz = draw(st.sets(_AMZ_SUFFIXES.map(lambda s: "x-amz-" + s), max_size=3))
    amz -= {"x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "x-amz-target"}
    others = draw(st.sets(_OTHER_NAMES, max_size=3))
    headers = {name: draw(header_values) for name in amz | others}
    headers["X-Amz-Target"] = draw(TARGETS)
    token = draw(st.none() | st.just("session-token"))
    presigned = draw(st.booleans())
    candidates = sorted(amz | others | {"x-amz-target"})
    if token is not None and not presigned:
        candidates.append("x-amz-security-token")  # presigned: the token is in the query
    if not presigned:
        candidates.append("x-amz-date")
    left_out = draw(st.sets(st.sampled_from(candidates)))
    req = botocore_sign(
        "GET" if presigned else "POST",
        JSON_URL,
        when=WHEN,
        headers=headers,
        body=b"" if presigned else SEND_BODY,
        token=token,
        expires=60 if presigned else None,
        leave_unsigned=left_out,
    )
    must_sign = {name for name in left_out if name.startswith("x-amz-")}
    return req, must_sign - {"x-amz-security-token"}


@settings(max_examples=200, deadline=None)
@given(signed=partly_signed())
def test_every_x_amz_header_sent_but_the_token_must_be_signed(signed):
    # Headers the signer left out may still be sent: any but an X-Amz-* one (X-Amz-Security-
    # Token aside, which AWS lets a client add after signing), in both kinds of signature.
    req, must_sign = signed
    if not must_sign:
        assert req.verify(NOW).access_key_id == AKID
        return
    error = refusal(req)
    assert error.code == "IncompleteSignature"
    assert f"not signed: {', '.join(sorted(must_sign))}." in error.message
    # The same request without them is a valid one: their presence alone is refused (but
    # X-Amz-Date's, which the request needs).
    kept = tuple((k, v) for k, v in req.headers if k.lower() not in must_sign - {"x-amz-date"})
    if "x-amz-date" in must_sign:
        assert "not signed: x-amz-date." in refusal(replace(req, headers=kept)).message
    else:
        assert replace(req, headers=kept).verify(NOW).access_key_id == AKID


def test_the_date_header_that_dates_the_request_must_be_signed():
    # botocore signs with Date when the request has one; a signer that left it out had its
    # timestamp from a header nobody signed (AWS: a date header used must be signed).
    req = botocore_sign(
        "POST", JSON_URL, when=WHEN, headers={"Date": "x"}, body=b"b", leave_unsigned=["date"]
    )
    error = refusal(req)
    assert error.code == "IncompleteSignature"
    assert "not signed: date." in error.message
    # A Date beside a signed X-Amz-Date dates nothing, and may stay unsigned.
    plain = botocore_sign("POST", JSON_URL, when=WHEN, body=b"b")
    assert plain.with_header("Date", "Wed, 01 May 2024 12:00:00 GMT").verify(NOW)


def test_a_presigned_url_carries_no_unsigned_target():
    # A presigned query URL signs what its X-Amz-SignedHeaders lists (host here); whoever uses
    # it adds headers of its own, but an X-Amz-Target would make it a JSON request.
    req = botocore_sign(
        "GET",
        JSON_URL,
        when=WHEN,
        params={"Action": "ListQueues", "QueueNamePrefix": "o"},
        expires=300,
    )
    browser = (("User-Agent", "curl/8"), ("Accept", "*/*"), ("Content-Type", "text/plain"))
    assert replace(req, headers=req.headers + browser).verify(NOW).presigned
    error = refusal(req.with_header("X-Amz-Target", "AmazonSQS.PurgeQueue"))
    assert (error.code, error.status_hint) == ("IncompleteSignature", 400)
    assert "not signed: x-amz-target." in error.message
    signed = botocore_sign("GET", JSON_URL, when=WHEN, headers=JSON_HEADERS, expires=300)
    assert "x-amz-target" in signed.query
    assert signed.verify(NOW).presigned


def test_an_uppercase_signature_is_refused():
    # SigV4's signature is lowercase hex, and AWS compares it as a string.
    req = botocore_sign("POST", JSON_URL, when=WHEN, body=b"b")
    auth = req.header("authorization")
    upper = auth[:-64] + auth[-64:].upper()
    assert upper != auth
    error = refusal(req.with_header("Authorization", upper))
    assert (error.code, error.status_hint) == ("SignatureDoesNotMatch", 403)
    presigned = botocore_sign("GET", JSON_URL, when=WHEN, expires=60)
    signature = presigned.query.split("X-Amz-Signature=")[1][:64]
    assert signature != signature.upper()
    error = refusal(replace(presigned, query=presigned.query.replace(signature, signature.upper())))
    assert error.code == "SignatureDoesNotMatch"
