"""AWS Signature Version 4 verification, sans-I/O: request parts and the time in, identity out.

The algorithm ("Create a signed AWS API request", AWS IAM User Guide; botocore ``auth.py``
``SigV4Auth`` is the client side we test against):

1. Canonical request: method, canonical URI, canonical query string, canonical headers (each
   ``name:value`` line, then a blank line), the signed-header list, the payload hash.
2. String to sign: ``AWS4-HMAC-SHA256``, the timestamp, the credential scope
   ``<date>/<region>/<service>/aws4_request``, the hex SHA-256 of the canonical request.
3. Signing key: HMAC-SHA256 chained over ``"AWS4" + secret``, date, region, service,
   ``aws4_request``. Signature: hex HMAC of the string to sign.

Two places carry the signature: the ``Authorization`` header, or the query string of a
presigned URL (``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires``,
``X-Amz-SignedHeaders``, ``X-Amz-Signature``). Only the headers the client lists are signed, so
they must reach us unchanged: a proxy that rewrites ``Host`` breaks every signature.

The canonical URI percent-encodes the already-encoded path once more (every service but S3
does; botocore ``_normalize_url_path``), after removing dot segments and empty segments.

A signature covers only the headers it lists, so a header the broker acts on must be listed
whenever it is sent, or a captured request could be replayed with another value: awsJson takes
its action from ``X-Amz-Target``, so an unsigned target would turn a SendMessage into a
DeleteQueue of the same ``{"QueueUrl": ...}``. :func:`verify` therefore refuses a request that
carries, outside its signed headers, any ``X-Amz-*`` header (as S3 does: "There were headers
present in the request which were not signed") or the ``Date`` header that dates it (the SigV4
docs: a date or x-amz-date header used must be signed). ``X-Amz-Security-Token`` is the one
exception: AWS's SigV4 test suite has it added after signing (post-sts-header-after), and the
broker never reads it. Every SDK signs all of these: botocore leaves out only
``SIGNED_HEADERS_BLACKLIST`` (hop-by-hop headers, ``user-agent``, ``expect``,
``x-amzn-trace-id``, tracing), the JS SDK v3 its ``ALWAYS_UNSIGNABLE_HEADERS`` (the same kind,
plus ``cache-control``, ``from``, ``referer``, ``pragma``), the Go SDKs ``Authorization``,
``User-Agent``, ``X-Amzn-Trace-Id`` and ``Expect``, the Java SDKs ``connection``,
``x-amzn-trace-id``, ``user-agent`` and ``expect``: none an ``x-amz-`` name. ``Content-Type``
need not be signed (the JS SDK v2 never signs it) and is safe unsigned: the broker picks the
protocol from ``X-Amz-Target``, never from the content type, and the payload hash fixes the
body it parses.

Errors are :class:`SigV4Error`, an :class:`~proto.aws.errors.AwsError` the shell renders as
is. Codes and statuses follow AWS's Common Errors page; a bad or expired signature is
``SignatureDoesNotMatch`` (403), which is what SQS answers ("Signature expired: ... is now
earlier than ...", quoted in aws-sdk-js#401 from a live SQS queue).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from proto.aws.errors import COMMON_ERRORS, AwsError

__all__ = [
    "ALGORITHM",
    "MAX_CLOCK_SKEW_SECONDS",
    "MAX_PRESIGN_EXPIRES_SECONDS",
    "CredentialScope",
    "Identity",
    "SecretLookup",
    "SigV4Error",
    "canonical_request",
    "peek_scope",
    "signing_key",
    "string_to_sign",
    "verify",
]

ALGORITHM: Final = "AWS4-HMAC-SHA256"
# Common Errors, RequestExpired: "The request reached the service more than 15 minutes after
# the date stamp on the request ... or the date stamp on the request is more than 15 minutes in
# the future."
MAX_CLOCK_SKEW_SECONDS: Final = 15 * 60
# A presigned URL lives at most seven days (Signature Version 4 query parameters: "The maximum
# expiration time is 604800 seconds (7 days)").
MAX_PRESIGN_EXPIRES_SECONDS: Final = 7 * 24 * 60 * 60
_UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
_TIMESTAMP: Final = re.compile(r"\d{8}T\d{6}Z")
_TIMESTAMP_FORMAT: Final = "%Y%m%dT%H%M%SZ"  # ISO 8601 basic format, as X-Amz-Date carries it
_HEX_SHA256: Final = re.compile(r"[0-9a-fA-F]{64}")  # a declared payload hash, either case
# A signature is "HexEncode(HMAC(...))", lowercase base 16 (SigV4 docs); AWS compares strings,
# so an uppercase one does not match.
_SIGNATURE: Final = re.compile(r"[0-9a-f]{64}")
_SIGNED_HEADER: Final = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")  # RFC 9110 token, lowercase
_PRESIGN_PARAMS: Final = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
)
_AUTHORIZATION_FIELDS: Final = ("Credential", "SignedHeaders", "Signature")
# The one X-Amz-* header a request may carry unsigned (see the module docstring).
_MAY_BE_UNSIGNED: Final = "x-amz-security-token"

Header = tuple[str | bytes, str | bytes]
SecretLookup = Mapping[str, str] | Callable[[str], str | None]


class SigV4Error(AwsError):
    """A request whose signature cannot be accepted.

    ``code`` is one of ``MissingAuthenticationToken``, ``IncompleteSignature``,
    ``InvalidClientTokenId``, ``SignatureDoesNotMatch`` or ``RequestExpired``. For a mismatch,
    ``canonical_request`` and ``string_to_sign`` hold what we computed, for the shell to log
    at debug level (S3 returns them in the error body; we keep them off the wire).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        canonical_request: str | None = None,
        string_to_sign: str | None = None,
    ) -> None:
        shape, status, sender_fault = COMMON_ERRORS[code]
        super().__init__(code, message, status=status, sender_fault=sender_fault, shape=shape)
        self.canonical_request = canonical_request
        self.string_to_sign = string_to_sign


@dataclass(frozen=True, slots=True)
class CredentialScope:
    """``<access key id>/<date>/<region>/<service>/aws4_request``, split."""

    access_key_id: str
    date: str
    region: str
    service: str

    def __str__(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signed a verified request, and where they meant it to go.

    Attributes:
        access_key_id: the key the secret was looked up by.
        region: the credential scope's region, as the client chose it.
        service: the credential scope's service (``sqs`` or ``sns``).
        signed_at: the request timestamp, in POSIX seconds.
        presigned: True for a presigned URL, False for an ``Authorization`` header.
        security_token: ``X-Amz-Security-Token`` if the client sent one (not verified here).
    """

    access_key_id: str
    region: str
    service: str
    signed_at: float
    presigned: bool
    security_token: str | None


@dataclass(frozen=True, slots=True)
class _Auth:
    scope: CredentialScope
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str
    dated_by: str | None  # the header the timestamp came from; None: X-Amz-Date in the query
    expires: int | None
    security_token: str | None
    presigned: bool


def _text(value: str | bytes) -> str:
    # The request target is ASCII (h11 refuses anything else); latin-1 maps any byte to one
    # character, and _canonical_uri encodes it back the same way.
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _header_text(value: str | bytes) -> str:
    # SDKs sign a header's characters (UTF-8 in the canonical request) but put them on the
    # wire in two ways: botocore UTF-8 encoded (Endpoint._encode_headers), Node.js, under the
    # JS SDKs, as latin-1 (the only characters it lets through). Bytes that are not UTF-8 can
    # only be the latter; UTF-8 bytes are read as such, as Go's SDKs also send them.
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _header_map(headers: Iterable[Header]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for name, value in headers:
        result.setdefault(_header_text(name).strip().lower(), []).append(_header_text(value))
    return result


def _is_authorization(name: str | bytes) -> bool:
    """Whether a header name is ``Authorization`` as :func:`_header_map` would key it."""
    if name == b"authorization" or name == "authorization":
        return True
    return len(name) >= 13 and _header_text(name).strip().lower() == "authorization"


def _query_pairs(query: str | bytes) -> list[tuple[str, str]]:
    # Raw (still percent-encoded) pairs; empty segments ("a=1&&b=2") carry nothing.
    raw = _text(query)
    pairs = []
    for segment in raw.split("&"):
        if segment:
            key, _, value = segment.partition("=")
            pairs.append((key, value))
    return pairs


def _decode(component: str) -> str:
    # Query keys and values are percent-encoded UTF-8, and '+' is a space: botocore signs
    # request.params with '%20' but sends them through urlencode(), which writes '+'
    # (awsrequest.py AWSRequestPreparer._prepare_url). Clients encode a real '+' as '%2B'.
    return unquote_to_bytes(component.replace("+", " ")).decode("utf-8", "surrogateescape")


def _encode(component: str) -> str:
    # SigV4: "URI-encode each parameter name and value ... Do not URI-encode any of the
    # unreserved characters that RFC 3986 defines: A-Z, a-z, 0-9, hyphen, underscore, period,
    # and tilde."
    return quote(component.encode("utf-8", "surrogateescape"), safe="-_.~")


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 §5.2.4, plus AWS's removal of empty segments (botocore remove_dot_segments).
    output: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if output:
                output.pop()
        else:
            output.append(segment)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and output else ""
    return first + "/".join(output) + last


def _canonical_uri(path: str | bytes) -> str:
    raw = path.encode("utf-8") if isinstance(path, str) else path
    normalized = _remove_dot_segments(raw.decode("latin-1")) if raw else "/"
    return quote(normalized.encode("latin-1"), safe="/~")


def _canonical_query(pairs: Iterable[tuple[str, str]], *, skip_signature: bool) -> str:
    encoded = []
    for key, value in pairs:
        name = _decode(key)
        if skip_signature and name == "X-Amz-Signature":
            continue
        encoded.append((_encode(name), _encode(_decode(value))))
    # Sorted by encoded name, then encoded value (SigV4 docs; botocore sorts the same tuples).
    return "&".join(f"{key}={value}" for key, value in sorted(encoded))


def canonical_request(
    method: str,
    path: str | bytes,
    query: str | bytes,
    headers: Iterable[Header],
    signed_headers: Iterable[str],
    payload_hash: str,
    *,
    presigned: bool = False,
) -> str:
    """Build the SigV4 canonical request.

    Args:
        method: the HTTP method.
        path: the request path as received, still percent-encoded, without the query.
        query: the raw query string, without the ``?``.
        headers: the request headers, as (name, value) pairs in str or bytes.
        signed_headers: lowercase names of the headers the client signed, in its order.
        payload_hash: the hex SHA-256 of the body, or ``UNSIGNED-PAYLOAD``.
        presigned: leave ``X-Amz-Signature`` out of the canonical query.

    Returns:
        The canonical request text.

    Raises:
        SigV4Error: ``SignatureDoesNotMatch`` if a signed header is missing from ``headers``.
    """
    header_map = _header_map(headers)
    names = list(signed_headers)
    lines = []
    for name in names:
        values = header_map.get(name)
        if values is None:
            raise SigV4Error(
                "SignatureDoesNotMatch", f"Signed header {name!r} is missing from the request."
            )
        # "Lowercase(HeaderName) + ':' + Trimall(HeaderValue)", repeated headers joined by
        # commas; Trimall collapses runs of whitespace, as botocore's _header_value does.
        lines.append(f"{name}:{','.join(' '.join(value.split()) for value in values)}")
    return "\n".join(
        [
            method.upper(),
            _canonical_uri(path),
            _canonical_query(_query_pairs(query), skip_signature=presigned),
            "\n".join(lines) + "\n",
            ";".join(names),
            payload_hash,
        ]
    )


def string_to_sign(timestamp: str, scope: CredentialScope, canonical: str) -> str:
    """Build the SigV4 string to sign from the ``X-Amz-Date`` timestamp, scope and request.

    Raises:
        Nothing; pure string assembly.
    """
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """Derive the SigV4 signing key for one day, region and service.

    Raises:
        Nothing; pure HMAC chain.
    """
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, "aws4_request"):
        # A query's scope may hold bytes that are no UTF-8 (_decode keeps them as lone
        # surrogates): hashed as the bytes they were, as string_to_sign hashes the request.
        key = hmac.new(key, part.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
    return key


def _incomplete(message: str) -> SigV4Error:
    return SigV4Error("IncompleteSignature", message)


@functools.lru_cache(maxsize=256)
def _parse_credential(credential: str) -> CredentialScope:
    # Cached: a client sends the same credential all day (immutable scope; errors are raised
    # afresh, lru_cache keeps no exceptions).
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts):
        raise _incomplete(
            f"Credential must have the form <key>/<date>/<region>/<service>/aws4_request, "
            f"not {credential!r}."
        )
    access_key_id, date, region, service, terminator = parts
    if terminator != "aws4_request":
        raise _incomplete(
            f"Credential should be scoped with a valid terminator: 'aws4_request', not "
            f"{terminator!r}."
        )
    if not (len(date) == 8 and date.isascii() and date.isdigit()):
        raise _incomplete(f"Credential date must be YYYYMMDD, not {date!r}.")
    return CredentialScope(access_key_id, date, region, service)


def _single(values: Mapping[str, list[str]], name: str, where: str) -> str | None:
    found = values.get(name)
    if found is None:
        return None
    if len(found) != 1:
        raise _incomplete(f"{where} {name!r} appears more than once.")
    return found[0]


def _parse_signed_headers(text: str) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if not all(_SIGNED_HEADER.fullmatch(name) for name in names) or len(set(names)) != len(names):
        raise _incomplete(f"SignedHeaders must be distinct lowercase header names, not {text!r}.")
    # "The host header must be included as a signed header" (SigV4 docs, canonical headers).
    if "host" not in names:
        raise _incomplete("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    return names


def _header_timestamp(headers: Mapping[str, list[str]]) -> tuple[str, str]:
    """The request's timestamp, and the header it came from (``x-amz-date`` or ``date``)."""
    # X-Amz-Date wins over Date (SigV4 docs: "the X-Amz-Date header ... takes precedence").
    amz_date = _single(headers, "x-amz-date", "Header")
    if amz_date is not None:
        return amz_date.strip(), "x-amz-date"
    date = _single(headers, "date", "Header")
    if date is None:
        raise _incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    try:
        parsed = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        raise _incomplete(f"Date header {date!r} is not an HTTP date.") from None
    # A naive result means "-0000", i.e. UTC (RFC 5322 §3.3).
    try:
        utc = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # past the year 9999 once in UTC
        raise _incomplete(f"Date header {date!r} is not an HTTP date.") from None
    # %Y does not pad a year before 1000 to four digits: :func:`_epoch` refuses the result.
    return utc.strftime(_TIMESTAMP_FORMAT), "date"


def _parse_header_auth(value: str, headers: Mapping[str, list[str]]) -> _Auth:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(f"Unsupported AWS 'algorithm': {algorithm!r}.")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        if not item.strip():
            continue
        key, sep, item_value = item.strip().partition("=")
        if not sep or key in fields:
            raise _incomplete(f"Malformed Authorization header component {item.strip()!r}.")
        fields[key] = item_value
    missing = [k for k in _AUTHORIZATION_FIELDS if k not in fields]
    if missing:
        raise _incomplete(
            " ".join(f"Authorization header requires '{k}' parameter." for k in missing)
        )
    # The header's documented form has these three components and no other; the signature
    # does not cover the header, so any extra one would make the same request in new bytes.
    unknown = [k for k in fields if k not in _AUTHORIZATION_FIELDS]
    if unknown:
        raise _incomplete(
            f"Authorization header component {unknown[0]!r} is not one of 'Credential', "
            "'SignedHeaders' and 'Signature'."
        )
    timestamp, dated_by = _header_timestamp(headers)
    return _Auth(
        scope=_parse_credential(fields["Credential"]),
        signed_headers=_parse_signed_headers(fields["SignedHeaders"]),
        signature=fields["Signature"],
        timestamp=timestamp,
        dated_by=dated_by,
        expires=None,
        security_token=_single(headers, "x-amz-security-token", "Header"),
        presigned=False,
    )


def _parse_query_auth(params: Mapping[str, list[str]], headers: Mapping[str, list[str]]) -> _Auth:
    values = {name: _single(params, name, "Query parameter") for name in _PRESIGN_PARAMS}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise _incomplete(
            "AWS query-string parameters must include "
            + ", ".join(f"'{name}'" for name in _PRESIGN_PARAMS)
            + ". Re-examine the query-string parameters."
        )
    if values["X-Amz-Algorithm"] != ALGORITHM:
        raise _incomplete(f"Unsupported AWS 'algorithm': {values['X-Amz-Algorithm']!r}.")
    expires_text = _single(params, "X-Amz-Expires", "Query parameter")
    expires = None
    if expires_text is not None:
        if not (expires_text.isascii() and expires_text.isdigit()):
            raise _incomplete("X-Amz-Expires must be a non-negative integer.")
        digits = expires_text.lstrip("0") or "0"
        # int() refuses more than 4,300 digits (ValueError); seven already exceed a week.
        if len(digits) > 7 or int(digits) > MAX_PRESIGN_EXPIRES_SECONDS:
            raise _incomplete("X-Amz-Expires must be less than a week (in seconds) that is 604800.")
        expires = int(digits)
    token = _single(params, "X-Amz-Security-Token", "Query parameter")
    return _Auth(
        scope=_parse_credential(values["X-Amz-Credential"] or ""),
        signed_headers=_parse_signed_headers(values["X-Amz-SignedHeaders"] or ""),
        signature=values["X-Amz-Signature"] or "",
        timestamp=values["X-Amz-Date"] or "",
        dated_by=None,
        expires=expires,
        security_token=token or _single(headers, "x-amz-security-token", "Header"),
        presigned=True,
    )


def _decoded_params(query: str | bytes) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in _query_pairs(query):
        params.setdefault(_decode(key), []).append(_decode(value))
    return params


def _parse_auth(headers: Mapping[str, list[str]], query: str | bytes) -> _Auth:
    params = _decoded_params(query)
    header = _single(headers, "authorization", "Header")
    presigned = any(name in params for name in _PRESIGN_PARAMS)
    if header is not None and presigned:
        raise _incomplete(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or "
            "the Authorization header should be specified."
        )
    if header is not None:
        return _parse_header_auth(header, headers)
    if presigned:
        return _parse_query_auth(params, headers)
    raise SigV4Error("MissingAuthenticationToken", "Request is missing Authentication Token")


def _check_unsigned_headers(auth: _Auth, headers: Mapping[str, list[str]]) -> None:
    """Refuse a request that carries a header the broker acts on outside its signed headers.

    The code is the one non-S3 services answer for a header SignedHeaders must list ("'Host'
    must be a 'SignedHeader' in the AWS Authorization.", IncompleteSignature, 400); the words
    are S3's for a present header left unsigned (there AccessDenied, 403).

    Raises:
        SigV4Error: ``IncompleteSignature`` naming the unsigned headers.
    """
    signed = auth.signed_headers
    unsigned = [
        name
        for name in headers
        if name not in signed
        and (
            (name.startswith("x-amz-") and name != _MAY_BE_UNSIGNED)
            or name == auth.dated_by  # "date": an x-amz-date is an x-amz- header already
        )
    ]
    if unsigned:
        raise _incomplete(
            "There were headers present in the request which were not signed: "
            f"{', '.join(sorted(unsigned))}. Every X-Amz-* header sent (except "
            "X-Amz-Security-Token), and a Date header that dates the request, must be a "
            "'SignedHeader' in the AWS Authorization."
        )


def _epoch(timestamp: str) -> float:
    if not _TIMESTAMP.fullmatch(timestamp):
        raise _incomplete(f"Date must be in ISO-8601 'basic format'. Got {timestamp!r}.")
    try:
        return datetime.strptime(timestamp, _TIMESTAMP_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise _incomplete(f"Date must be in ISO-8601 'basic format'. Got {timestamp!r}.") from None


def _format(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(_TIMESTAMP_FORMAT)


def _check_time(auth: _Auth, signed_at: float, now: float) -> None:
    if signed_at > now + MAX_CLOCK_SKEW_SECONDS:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            f"Signature not yet current: {auth.timestamp} is still later than "
            f"{_format(now + MAX_CLOCK_SKEW_SECONDS)} ({_format(now)} + 15 min.)",
        )
    if auth.expires is not None:
        if now > signed_at + auth.expires:
            raise SigV4Error(
                "RequestExpired",
                f"Request has expired: X-Amz-Date {auth.timestamp} plus X-Amz-Expires "
                f"{auth.expires} is earlier than {_format(now)}.",
            )
    elif signed_at < now - MAX_CLOCK_SKEW_SECONDS:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            f"Signature expired: {auth.timestamp} is now earlier than "
            f"{_format(now - MAX_CLOCK_SKEW_SECONDS)} ({_format(now)} - 15 min.)",
        )


def _payload_hash(
    headers: Mapping[str, list[str]], body: bytes, body_sha256: str | None, allow_unsigned: bool
) -> str:
    actual = body_sha256.lower() if body_sha256 is not None else hashlib.sha256(body).hexdigest()
    declared = _single(headers, "x-amz-content-sha256", "Header")
    if declared is None:
        return actual
    declared = declared.strip()
    if declared == _UNSIGNED_PAYLOAD:
        if allow_unsigned:
            return declared
        raise _incomplete("x-amz-content-sha256: UNSIGNED-PAYLOAD is not accepted here.")
    if not _HEX_SHA256.fullmatch(declared):
        raise _incomplete(f"x-amz-content-sha256 must be a hex SHA-256, not {declared!r}.")
    # The signature covers this header, not the body: without this check a signed request
    # could carry any body (S3 answers XAmzContentSHA256Mismatch here).
    if declared.lower() != actual:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    return declared


def _lookup(secrets: SecretLookup, access_key_id: str) -> str | None:
    if isinstance(secrets, Mapping):
        return secrets.get(access_key_id)
    return secrets(access_key_id)


def verify(
    *,
    method: str,
    path: str | bytes,
    query: str | bytes,
    headers: Iterable[Header],
    body: bytes = b"",
    body_sha256: str | None = None,
    now: float,
    secrets: SecretLookup,
    allow_unsigned_payload: bool = False,
) -> Identity:
    """Verify a SigV4-signed request (``Authorization`` header or presigned query string).

    Args:
        method: the HTTP method.
        path: the request path exactly as received (percent-encoded), without the query.
        query: the raw query string, without the ``?``.
        headers: the request headers as received, (name, value) in str or bytes.
        body: the request body.
        body_sha256: the hex SHA-256 of the body, if the shell hashed it while reading; then
            ``body`` is ignored.
        now: the current time, POSIX seconds.
        secrets: secret access key by access key ID, as a mapping or a function returning
            None for an unknown key.
        allow_unsigned_payload: accept ``x-amz-content-sha256: UNSIGNED-PAYLOAD`` (then the
            body is not authenticated). Off by default: SQS and SNS clients sign their bodies.

    Returns:
        The verified identity.

    Raises:
        SigV4Error: ``MissingAuthenticationToken`` (403, no signature at all),
            ``IncompleteSignature`` (400: malformed, or an ``X-Amz-*`` header other than
            ``X-Amz-Security-Token``, or the ``Date`` that dates the request, sent but not
            signed), ``InvalidClientTokenId`` (403, unknown access key),
            ``SignatureDoesNotMatch`` (403: a wrong signature or one in uppercase hex, a
            signed header missing, a body that does not match ``x-amz-content-sha256``, or a
            timestamp more than 15 minutes away from ``now``) or ``RequestExpired`` (400,
            presigned URL past ``X-Amz-Expires``).
    """
    header_map = _header_map(headers)
    auth = _parse_auth(header_map, query)
    _check_unsigned_headers(auth, header_map)
    signed_at = _epoch(auth.timestamp)
    if auth.scope.date != auth.timestamp[:8]:
        raise SigV4Error(
            "SignatureDoesNotMatch",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: {auth.scope.date!r} != {auth.timestamp[:8]!r}, from {auth.timestamp!r}.",
        )
    _check_time(auth, signed_at, now)
    secret = _lookup(secrets, auth.scope.access_key_id)
    if secret is None:
        raise SigV4Error(
            "InvalidClientTokenId", "The security token included in the request is invalid."
        )
    payload = _payload_hash(header_map, body, body_sha256, allow_unsigned_payload)
    canonical = canonical_request(
        method,
        path,
        query,
        ((name, value) for name, values in header_map.items() for value in values),
        auth.signed_headers,
        payload,
        presigned=auth.presigned,
    )
    to_sign = string_to_sign(auth.timestamp, auth.scope, canonical)
    key = signing_key(secret, auth.scope.date, auth.scope.region, auth.scope.service)
    expected = hmac.new(key, to_sign.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
    # Timing-safe: compare_digest takes the same time wherever the strings differ. Both sides
    # are ASCII hex once the regex has matched.
    if not (_SIGNATURE.fullmatch(auth.signature) and hmac.compare_digest(expected, auth.signature)):
        raise SigV4Error(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.",
            canonical_request=canonical,
            string_to_sign=to_sign,
        )
    return Identity(
        access_key_id=auth.scope.access_key_id,
        region=auth.scope.region,
        service=auth.scope.service,
        signed_at=signed_at,
        presigned=auth.presigned,
        security_token=auth.security_token,
    )


def peek_scope(*, headers: Iterable[Header], query: str | bytes) -> CredentialScope | None:
    """Read the credential scope of a request without verifying anything.

    For routing before authentication (which service, which region), and for requests a
    configuration lets through anonymously. Never trust the result for access control.

    Args:
        headers: the request headers.
        query: the raw query string.

    Returns:
        The scope from the ``Authorization`` header or ``X-Amz-Credential``, or None if the
        request carries neither.

    Raises:
        SigV4Error: ``IncompleteSignature`` if a credential is present but malformed.
    """
    # Only the Authorization header matters here: collect it without mapping every header.
    authorization = [_header_text(value) for name, value in headers if _is_authorization(name)]
    header = _single(
        {"authorization": authorization} if authorization else {}, "authorization", "Header"
    )
    if header is not None:
        algorithm, _, rest = header.strip().partition(" ")
        if algorithm != ALGORITHM:
            raise _incomplete(f"Unsupported AWS 'algorithm': {algorithm!r}.")
        for item in rest.split(","):
            key, sep, value = item.strip().partition("=")
            if sep and key == "Credential":
                return _parse_credential(value)
        raise _incomplete("Authorization header requires 'Credential' parameter.")
    credential = _single(_decoded_params(query), "X-Amz-Credential", "Query parameter")
    return None if credential is None else _parse_credential(credential)
