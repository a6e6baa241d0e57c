"""The AWS query protocol: form-encoded requests in, XML responses and errors out.

SNS speaks only this protocol; SQS spoke it until 2023 and older SDKs still do. A request is
``Action=<Action>&Version=<date>&...`` in a form-encoded POST body or a GET query string. Nested
input is flattened into dotted keys (Smithy "AWS query protocol", botocore ``serialize.py``
``QuerySerializer``):

- a structure member is ``Parent.Member``;
- a list is ``Name.member.1``, ``Name.member.2`` ... or, when *flattened*, ``Name.1``,
  ``Name.2`` ... (SQS: ``AttributeName.1``, ``SendMessageBatchRequestEntry.1.Id``);
- a map is ``Name.entry.1.key`` / ``Name.entry.1.value`` or, flattened, ``Name.1.Name`` /
  ``Name.1.Value`` (SQS: ``Attribute.1.Name``, ``MessageAttribute.1.Value.StringValue``);
- blobs are base64, booleans ``true``/``false``.

:func:`decode_request` rebuilds the same nested dict the JSON decoder produces, so one handler
serves both. Responses are ``<{Action}Response xmlns=...><{Action}Result>...</{Action}Result>
<ResponseMetadata><RequestId>...</RequestId></ResponseMetadata></{Action}Response>`` and
errors ``<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>``
(SQS and SNS API references, "Sample Response").

Text is escaped as SQS escapes it: besides ``&``, ``<`` and ``>``, a ``"`` becomes ``&quot;``
and a carriage return ``&#xD;`` (LocalStack ``SqsQueryResponseSerializer``, recorded against
AWS). The carriage return matters: XML parsers turn a literal CR LF into LF, which would change
the body and fail the client's MD5 check.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

from proto.aws.errors import AwsError, common_error
from proto.aws.shapes import (
    DecodedRequest,
    EncodedResponse,
    ListOf,
    Scalar,
    Service,
    Shape,
    Structure,
    normalize_output,
)

__all__ = [
    "CONTENT_TYPE",
    "MAX_FIELDS",
    "XML_CONTENT_TYPE",
    "decode_request",
    "encode_error",
    "encode_response",
    "escape_text",
]

CONTENT_TYPE: Final = "application/x-www-form-urlencoded"
XML_CONTENT_TYPE: Final = "text/xml"
# The most form fields one request may carry. The largest legitimate request is a batch of 10
# entries, each with 10 message attributes of 3 fields plus a handful of scalars: well under
# 1000. The bound keeps a hostile body from building a huge parameter tree.
MAX_FIELDS: Final = 5000
# Integers in the SQS and SNS models are 32-bit (``integer``) or 64-bit (``long``); 20 digits
# and a sign hold any of them, and bounding the length keeps int() linear.
_INTEGER: Final = re.compile(r"[+-]?\d{1,20}")
_INDEX: Final = re.compile(r"[1-9]\d{0,5}")
# Form bodies at least this long are split and decoded by :func:`split_form`.
LARGE_FORM_CHARS: Final = 64 * 1024
# The most dotted segments one key may have. The deepest keys of the SQS and SNS models have 8
# (``PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Value.StringValue``); a key
# of a million dots would otherwise build a million tree nodes (a gigabyte) for one field.
MAX_KEY_SEGMENTS: Final = 16


class _Node:
    """One dotted-key prefix: the value set at exactly this key, and the longer keys below."""

    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.value: str | None = None
        self.children: dict[str, _Node] = {}


def _malformed(path: str, why: str) -> AwsError:
    return common_error("InvalidQueryParameter", f"The parameter {path} is malformed: {why}.")


def _fields(source: str | bytes) -> list[tuple[str, str]]:
    text = source.decode("utf-8") if isinstance(source, bytes) else source
    # Form encoding (application/x-www-form-urlencoded): '+' is a space here.
    if len(text) < LARGE_FORM_CHARS:
        return parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    return split_form(text)


def split_form(text: str) -> list[tuple[str, str]]:
    """``parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)``,
    the same pairs and errors, with long percent-encoded values decoded at C speed.

    parse_qsl decodes each ``%XX`` in a Python loop (~0.6 us each): a 1 MiB message of
    non-ASCII text, 3 MiB encoded, held the event loop for a second.
    """
    if text.count("&") + 1 > MAX_FIELDS:
        raise ValueError("Max number of fields exceeded")
    fields = []
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        fields.append((unquote_plus(name), unquote_plus(value)))
    return fields


def unquote_plus(text: str) -> str:
    """``urllib.parse.unquote(text.replace("+", " "), errors="strict")``, faster when long."""
    text = text.replace("+", " ")
    if "%" not in text:
        return text
    if len(text) < 64 or not text.isascii() or "\\" in text:
        return unquote(text, errors="strict")
    try:
        # Every %XX becomes \xXX and unicode_escape turns those into code points 0-255 in C;
        # their latin-1 bytes are then the decoded bytes, read as UTF-8 like unquote does.
        octets = text.replace("%", "\\x").encode("ascii").decode("unicode_escape")
    except UnicodeDecodeError:
        return unquote(text, errors="strict")  # a '%' not followed by two hex digits
    return octets.encode("latin-1").decode("utf-8")


def _tree(body: bytes, query: str | bytes) -> _Node:
    try:
        fields = _fields(query) + _fields(body)
    except UnicodeDecodeError:
        raise common_error(
            "InvalidQueryParameter", "The request parameters are not valid UTF-8."
        ) from None
    except ValueError:
        raise common_error(
            "InvalidQueryParameter", f"The request has more than {MAX_FIELDS} parameters."
        ) from None
    if len(fields) > MAX_FIELDS:
        raise common_error(
            "InvalidQueryParameter", f"The request has more than {MAX_FIELDS} parameters."
        )
    root = _Node()
    for key, value in fields:
        node = root
        segments = key.split(".", MAX_KEY_SEGMENTS)
        if len(segments) > MAX_KEY_SEGMENTS:
            raise _malformed(key[:64] + "...", f"it nests deeper than {MAX_KEY_SEGMENTS} levels")
        for segment in segments:
            node = node.children.setdefault(segment, _Node())
        if node.value is not None:
            raise _malformed(key, "it appears more than once")
        node.value = value
    return root


def decode_request(
    service: Service, *, body: bytes = b"", query: str | bytes = ""
) -> DecodedRequest:
    """Decode a query-protocol request into the action and its parameters.

    Both the query string and the body are read (GET requests carry everything in the query,
    POST requests in the body); a key may appear in only one of them, once. Keys the action's
    input does not model (``Version``, presigned ``X-Amz-*`` parameters, ...) are ignored. A
    member is found under its query name or, as botocore serializes the JSON model, under its
    own name (``Attribute.1.Name`` or ``Attributes.1.Name``), and map entries under the model's
    names or the protocol's defaults (``Name``/``Value`` or ``key``/``value``). The unindexed
    single-item forms boto 2 and kombu send (``AttributeName=All``, ``Attribute.Name=...``) are
    accepted too. Required members are not checked here (see
    :func:`proto.aws.shapes.check_required`).

    Args:
        service: the service the request is for.
        body: the form-encoded body (may be empty).
        query: the raw query string (may be empty).

    Returns:
        The action and its parameters in the shared nested shape.

    Raises:
        AwsError: ``MissingAction`` without ``Action``, ``InvalidAction`` for an unknown one;
            ``InvalidQueryParameter`` for invalid UTF-8, too many fields, a repeated key, a bad
            list index or a map entry without key or value; the service's invalid-parameter
            error for a malformed integer, boolean or base64 value.
    """
    root = _tree(body, query)
    action_node = root.children.get("Action")
    action = action_node.value if action_node is not None else None
    if not action:
        raise common_error("MissingAction", "The request must contain the parameter Action.")
    operation = service.operations.get(action)
    if operation is None:
        raise common_error(
            "InvalidAction", f"The action {action} is not valid for this web service."
        )
    return DecodedRequest(action, _structure(service, operation.input, root, ""))


def _structure(service: Service, shape: Structure, node: _Node, prefix: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, spec in shape.members.items():
        wire = spec.wire or name
        child = node.children.get(wire)
        if child is None and wire != name:
            wire, child = name, node.children.get(name)
        if child is not None:
            result[name] = _value(service, spec.shape, child, prefix + wire)
    return result


def _value(service: Service, shape: Shape, node: _Node, path: str) -> Any:
    if isinstance(shape, Scalar):
        return _scalar(service, shape, node, path)
    if isinstance(shape, Structure):
        return _structure(service, shape, node, path + ".")
    if isinstance(shape, ListOf):
        if (
            shape.flattened
            and isinstance(shape.member, Scalar)
            and node.value
            and not node.children
        ):
            # One value without an index: boto 2 and kombu's hand-built SQS client send
            # "AttributeName=All" (an empty "AttributeName=" is botocore's empty list).
            items = [(path, node)]
        elif shape.flattened:
            items = _items(node, path)
        else:
            wrapper = node.children.get(shape.member_wire)
            items = [] if wrapper is None else _items(wrapper, f"{path}.{shape.member_wire}")
        return [_value(service, shape.member, item, item_path) for item_path, item in items]
    result: dict[str, Any] = {}
    if shape.flattened and shape.key_wire in node.children:
        # One entry without an index: boto 2 and kombu send "Attribute.Name=VisibilityTimeout
        # &Attribute.Value=60" to SetQueueAttributes.
        entries = [(path, node)]
    elif shape.flattened:
        entries = _items(node, path)
    elif "entry" in node.children:
        entries = _items(node.children["entry"], f"{path}.entry")
    else:
        return result
    for entry_path, entry in entries:
        # The protocol's default names are accepted too: botocore's query serializer uses them
        # for today's SQS model, which has lost the "Name"/"Value" locationName traits.
        key = entry.children.get(shape.key_wire) or entry.children.get("key")
        value = entry.children.get(shape.value_wire) or entry.children.get("value")
        if key is None or key.value is None:
            raise _malformed(entry_path, f"no {shape.key_wire}")
        if value is None:
            raise _malformed(entry_path, f"no {shape.value_wire}")
        result[key.value] = _value(service, shape.value, value, f"{entry_path}.{shape.value_wire}")
    return result


def _items(node: _Node, path: str) -> list[tuple[str, _Node]]:
    # An empty list travels as "Name=" (botocore: "The query protocol serializes empty lists").
    indexed = []
    for index, child in node.children.items():
        if not _INDEX.fullmatch(index):
            raise _malformed(f"{path}.{index}", "list and map indexes are 1, 2, 3, ...")
        indexed.append((int(index), f"{path}.{index}", child))
    indexed.sort(key=lambda item: item[0])
    return [(item_path, child) for _, item_path, child in indexed]


def _scalar(service: Service, shape: Scalar, node: _Node, path: str) -> Any:
    text = node.value
    if text is None:
        raise _malformed(path, "expected a value, got nested parameters")
    kind = shape.type
    if kind == "string":
        return text
    if kind in ("integer", "long"):
        if _INTEGER.fullmatch(text):
            return int(text)
        raise service.invalid_parameter(path, text)
    if kind == "boolean":
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise service.invalid_parameter(path, text)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise service.invalid_parameter(path, text) from None


# XML 1.0 §2.2 Char excludes C0 controls other than TAB, LF, CR, the surrogates, U+FFFE and
# U+FFFF; not even a character reference can carry them. SQS refuses such message bodies on
# send (InvalidMessageContents), so they only reach here in messages that echo client input,
# where U+FFFD keeps the document parseable.
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES: Final = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#xD;"}
)


def escape_text(text: str) -> str:
    """Escape text for an XML element the way SQS does.

    Args:
        text: any string.

    Returns:
        The escaped text: ``& < > "`` and CR as entities, characters XML cannot hold as U+FFFD.

    Raises:
        Nothing.
    """
    escaped = text.translate(_ESCAPES)
    return _NOT_XML.sub("\ufffd", escaped) if _NOT_XML.search(escaped) else escaped


def _scalar_text(shape: Scalar, value: Any) -> str:
    if shape.type == "boolean":
        return "true" if value else "false"
    if shape.type == "blob":
        return base64.b64encode(value).decode("ascii")
    if shape.type == "string":
        return escape_text(value)
    return str(int(value))


def _emit(name: str, shape: Shape, value: Any, out: list[str]) -> None:
    if isinstance(shape, Scalar):
        out.append(f"<{name}>{_scalar_text(shape, value)}</{name}>")
    elif isinstance(shape, Structure):
        out.append(f"<{name}>")
        _emit_members(shape, value, out)
        out.append(f"</{name}>")
    elif isinstance(shape, ListOf):
        if shape.flattened:
            for item in value:
                _emit(name, shape.member, item, out)
        else:
            out.append(f"<{name}>")
            for item in value:
                _emit(shape.member_wire, shape.member, item, out)
            out.append(f"</{name}>")
    else:
        entry = name if shape.flattened else "entry"
        if not shape.flattened:
            out.append(f"<{name}>")
        for key, item in value.items():
            out.append(f"<{entry}><{shape.key_wire}>{escape_text(key)}</{shape.key_wire}>")
            _emit(shape.value_wire, shape.value, item, out)
            out.append(f"</{entry}>")
        if not shape.flattened:
            out.append(f"</{name}>")


def _emit_members(shape: Structure, value: Mapping[str, Any], out: list[str]) -> None:
    for name, spec in shape.members.items():
        if name in value:
            _emit(spec.wire or name, spec.shape, value[name], out)


def _headers(request_id: str) -> list[tuple[str, str]]:
    return [("Content-Type", XML_CONTENT_TYPE), ("x-amzn-RequestId", request_id)]


def encode_response(
    service: Service, action: str, result: Mapping[str, Any] | None, *, request_id: str
) -> EncodedResponse:
    """Encode a handler's result as a query-protocol XML response.

    Args:
        service: the service (its namespace goes in ``xmlns``).
        action: the action that produced the result.
        result: the output values in the shared nested shape; ``None`` members are left out.
        request_id: goes in ``<RequestId>`` and ``x-amzn-RequestId``.

    Returns:
        Status 200, headers and the XML body. Actions without an output have no
        ``<{Action}Result>`` element.

    Raises:
        AwsError: ``InternalFailure`` if the action is unknown or the result does not fit its
            output shape (a bug in the handler).
    """
    operation = service.operations.get(action)
    if operation is None:
        raise common_error("InternalFailure", f"No such {service.name} action {action!r}.")
    out = ['<?xml version="1.0"?>', f'<{action}Response xmlns="{service.xml_namespace}">']
    if operation.output is not None:
        out.append(f"<{action}Result>")
        _emit_members(operation.output, normalize_output(operation.output, result or {}), out)
        out.append(f"</{action}Result>")
    elif result:
        raise common_error("InternalFailure", f"{action} has no output, got {list(result)}.")
    out.append(
        f"<ResponseMetadata><RequestId>{escape_text(request_id)}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    )
    return EncodedResponse(200, _headers(request_id), "".join(out).encode("utf-8"))


def encode_error(service: Service, error: AwsError, *, request_id: str) -> EncodedResponse:
    """Encode an :class:`AwsError` as a query-protocol ``ErrorResponse``.

    Args:
        service: the service (namespace; SQS adds the empty ``<Detail/>`` it always sends).
        error: the error; ``error.code`` goes in ``<Code>``.
        request_id: goes in ``<RequestId>`` and ``x-amzn-RequestId``.

    Returns:
        The error's status, headers and XML body.

    Raises:
        Nothing.
    """
    detail = "<Detail/>" if service.xml_error_detail else ""
    body = (
        '<?xml version="1.0"?>'
        f'<ErrorResponse xmlns="{service.xml_namespace}"><Error>'
        f"<Type>{error.fault}</Type>"
        f"<Code>{escape_text(error.code)}</Code>"
        f"<Message>{escape_text(error.message)}</Message>"
        f"{detail}</Error>"
        f"<RequestId>{escape_text(request_id)}</RequestId></ErrorResponse>"
    )
    return EncodedResponse(error.status_hint, _headers(request_id), body.encode("utf-8"))
