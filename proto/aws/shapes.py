"""The shape vocabulary shared by the AWS codecs, and the walks both protocols need.

A *shape* says how one value travels: a scalar, a structure of named members, a list or a
map. It is the part of a botocore service model the codecs use, written as small frozen
records so that ``proto`` needs no botocore at run time (``sqs_shapes`` and ``sns_shapes``
hold the tables; their tests check them against botocore's models).

Names on the wire. In the JSON protocol a member travels under its own name. In the query
protocol and in XML responses it travels under :attr:`Member.wire` when that is set (botocore's
``locationName``). For a *flattened* list or map, ``wire`` is the name repeated once per item
(``AttributeName.1``, ``<Message>...</Message><Message>...``); for a wrapped one it names the
wrapper, and each item sits in ``member`` (lists) or ``entry`` (maps) inside it.

Values. Decoders produce, and encoders accept, plain Python values: ``str``, ``int``,
``bool``, ``bytes`` (blobs), ``list``, and ``dict`` for structures and maps. The same nested
dict comes out of both protocols, so one handler serves both.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

from proto.aws.errors import AwsError, common_error

__all__ = [
    "BLOB",
    "BOOLEAN",
    "INTEGER",
    "LONG",
    "STRING",
    "DecodedRequest",
    "EncodedResponse",
    "Item",
    "ListOf",
    "MapOf",
    "Member",
    "MissingPath",
    "Operation",
    "Scalar",
    "ScalarType",
    "Service",
    "Shape",
    "Structure",
    "check_required",
    "from_json",
    "member",
    "normalize_output",
]

ScalarType = Literal["string", "integer", "long", "boolean", "blob"]


@dataclass(frozen=True, slots=True)
class _CompiledShape:
    """What every shape carries: the walks compiled when it is made ("compiled walks" below),
    not compared, not shown. ``_required`` is None when nothing inside the shape is required.
    """

    _from_json: Callable[[Any], Any] = field(init=False, repr=False, compare=False)
    _output: Callable[[Any], Any] = field(init=False, repr=False, compare=False)
    _required: Callable[[Any], None] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _compile(self)  # type: ignore[arg-type]  # only the concrete shapes are made


@dataclass(frozen=True, slots=True)
class Scalar(_CompiledShape):
    """A leaf value. ``integer`` and ``long`` are both Python ``int``; ``blob`` is ``bytes``."""

    type: ScalarType


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a structure: its shape, its query/XML name and whether it is required."""

    shape: Shape
    wire: str = ""
    required: bool = False


@dataclass(frozen=True, slots=True)
class Structure(_CompiledShape):
    """Named members, in the order the model lists them (the order XML responses use)."""

    members: Mapping[str, Member]


@dataclass(frozen=True, slots=True)
class ListOf(_CompiledShape):
    """A list. Wrapped lists put each item in a ``member_wire`` element (``member``)."""

    member: Shape
    flattened: bool = False
    member_wire: str = "member"


@dataclass(frozen=True, slots=True)
class MapOf(_CompiledShape):
    """A map from strings to ``value``. Wrapped maps put each pair in an ``entry`` element."""

    value: Shape
    flattened: bool = False
    key_wire: str = "key"
    value_wire: str = "value"


Shape = Scalar | Structure | ListOf | MapOf


def member(shape: Shape, wire: str = "", *, required: bool = False) -> Member:
    """Shorthand for :class:`Member`, so the shape tables read as one line per member."""
    return Member(shape, wire, required)


@dataclass(frozen=True, slots=True)
class Operation:
    """An action: its input structure and its output structure (None when it returns nothing).

    A query-protocol response wraps the output in ``<{name}Result>``; an action without an
    output has no Result element at all (the SQS and SNS API references' sample responses).
    """

    name: str
    input: Structure
    output: Structure | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """What the codecs need to know about one service.

    Attributes:
        name: the signing name, also the SigV4 credential-scope service (``sqs``).
        api_version: the query protocol's ``Version`` (``2012-11-05``).
        xml_namespace: the ``xmlns`` of XML responses.
        operations: every action, by name.
        target_prefix: the awsJson ``X-Amz-Target`` prefix, or None if the service has no
            JSON protocol (SNS).
        json_namespace: the prefix of ``__type`` in JSON errors (``com.amazonaws.sqs``).
        query_compatible: whether JSON errors carry the ``x-amzn-query-error`` header.
        xml_error_detail: whether XML errors carry an empty ``<Detail/>`` (SQS does).
        missing_parameter: builds the error for the missing required parameters (their paths,
            in model order; never empty).
        invalid_parameter: builds the error for a value of the wrong form (path, value).
    """

    name: str
    api_version: str
    xml_namespace: str
    operations: Mapping[str, Operation]
    target_prefix: str | None = None
    json_namespace: str | None = None
    query_compatible: bool = False
    xml_error_detail: bool = False
    missing_parameter: Callable[[Sequence[MissingPath]], AwsError]
    invalid_parameter: Callable[[str, str], AwsError]


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    """An action and its parameters, as either protocol decoded them."""

    action: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    """An HTTP response for the shell to send: status, headers, body."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def _json_type_error(path: str, expected: str, value: object) -> AwsError:
    # awsJson servers answer a value of the wrong JSON type with SerializationException
    # (Smithy awsJson1_0 spec, "Operation error serialization"; coral's name for a body it
    # cannot map onto the input shape).
    got = "null" if value is None else type(value).__name__
    return common_error("SerializationException", f"Expected {expected} for {path}, got {got}.")


def from_json(shape: Shape, value: object, path: str) -> Any:
    """Check a JSON-decoded input value against ``shape`` and convert it to our value types.

    Blobs arrive base64-encoded and leave as ``bytes``. Unknown structure members are dropped
    (AWS ignores members it does not model) and so are ``null`` members (absent, for AWS).

    Args:
        shape: the shape the value should have.
        value: what ``msgspec.json.decode`` produced.
        path: where the value sits, for error messages (``Entries[0].Id``).

    Returns:
        The converted value.

    Raises:
        AwsError: ``SerializationException`` when the value has the wrong JSON type or a blob is
            not valid base64.
    """
    try:
        return shape._from_json(value)
    except Exception:  # the walk below names the problem (or finds none)
        return _from_json_walk(shape, value, path)


def _from_json_walk(shape: Shape, value: object, path: str) -> Any:
    # The reference walk: builds every path, so errors can name where they are.
    if isinstance(shape, Scalar):
        return _scalar_from_json(shape, value, path)
    if isinstance(shape, Structure):
        if not isinstance(value, dict):
            raise _json_type_error(path, "an object", value)
        out: dict[str, Any] = {}
        for name, spec in shape.members.items():
            item = value.get(name)
            if item is not None:
                out[name] = _from_json_walk(spec.shape, item, f"{path}.{name}" if path else name)
        return out
    if isinstance(shape, ListOf):
        if not isinstance(value, list):
            raise _json_type_error(path, "an array", value)
        return [_from_json_walk(shape.member, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        raise _json_type_error(path, "an object", value)
    # JSON object keys are always strings, so only the values need checking.
    return {key: _from_json_walk(shape.value, item, f"{path}.{key}") for key, item in value.items()}


def _scalar_from_json(shape: Scalar, value: object, path: str) -> Any:
    kind = shape.type
    if kind == "string":
        if isinstance(value, str):
            return value
        raise _json_type_error(path, "a string", value)
    if kind in ("integer", "long"):
        # bool is an int subclass in Python; JSON true is not a number.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _json_type_error(path, "an integer", value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        raise _json_type_error(path, "a boolean", value)
    if not isinstance(value, str):
        raise _json_type_error(path, "a base64 string", value)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise common_error(
            "SerializationException", f"Value for {path} is not valid base64."
        ) from None


class Item(NamedTuple):
    """A step into a list element (its 1-based index) or a map value (its key)."""

    key: str


# Where a required member is missing: member names and the items on the way to it.
MissingPath = tuple[str | Item, ...]


def check_required(service: Service, shape: Structure, params: Mapping[str, Any]) -> None:
    """Raise the service's missing-parameter error if a required member is absent.

    Decoders do not call this: old SQS SDKs send ``QueueUrl`` as the request path, not as a
    parameter, so the shell fills it in first and then checks.

    Args:
        service: whose error to raise.
        shape: the operation's input structure.
        params: decoded parameters.

    Raises:
        AwsError: ``service.missing_parameter(paths)`` with every missing member, in model
            order (each service words it its own way: SQS names the first).
    """
    check = shape._required
    if check is None:
        return
    try:
        check(params)
    except Exception:  # the walk below finds what is missing, with the paths
        missing: list[MissingPath] = []
        _find_missing(shape, params, (), missing)
        if missing:
            raise service.missing_parameter(missing) from None


def _find_missing(shape: Shape, value: Any, path: MissingPath, missing: list[MissingPath]) -> None:
    if isinstance(shape, Structure):
        for name, spec in shape.members.items():
            if name not in value:
                if spec.required:
                    missing.append((*path, name))
                continue
            _find_missing(spec.shape, value[name], (*path, name), missing)
    elif isinstance(shape, ListOf):
        for i, item in enumerate(value, 1):
            _find_missing(shape.member, item, (*path, Item(str(i))), missing)
    elif isinstance(shape, MapOf):
        for key, item in value.items():
            _find_missing(shape.value, item, (*path, Item(str(key))), missing)


_PYTHON_TYPES: Final[Mapping[ScalarType, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "long": (int,),
    "boolean": (bool,),
    "blob": (bytes, bytearray, memoryview),
}


def _bad_output(path: str, problem: str) -> AwsError:
    # A result that does not fit the model is a bug in a handler, not the client's fault.
    return common_error("InternalFailure", f"Malformed result at {path or '$'}: {problem}")


def normalize_output(shape: Shape, value: Any, path: str = "") -> Any:
    """Check a handler's result against the output shape; return it without ``None`` members.

    Structures come back as dicts in model order, which is the order XML responses use.

    Args:
        shape: the output shape.
        value: the handler's result.
        path: where the value sits, for error messages.

    Returns:
        The checked value, with ``None``-valued members dropped and blobs as ``bytes``.

    Raises:
        AwsError: ``InternalFailure`` (500) naming the first member that does not fit: an
            unknown member, or a value of the wrong type.
    """
    try:
        return shape._output(value)
    except Exception:  # the walk below names the member that does not fit
        return _normalize_walk(shape, value, path)


def _normalize_walk(shape: Shape, value: Any, path: str) -> Any:
    # The reference walk, with paths for the error message.
    if isinstance(shape, Scalar):
        types = _PYTHON_TYPES[shape.type]
        if not isinstance(value, types) or (shape.type != "boolean" and isinstance(value, bool)):
            raise _bad_output(path, f"expected {shape.type}, got {type(value).__name__}")
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        return value
    if isinstance(shape, Structure):
        if not isinstance(value, Mapping):
            raise _bad_output(path, "expected a mapping")
        unknown = [key for key in value if key not in shape.members]
        if unknown:
            raise _bad_output(path, f"unknown member {unknown[0]!r}")
        return {
            name: _normalize_walk(spec.shape, value[name], f"{path}.{name}" if path else name)
            for name, spec in shape.members.items()
            if value.get(name) is not None
        }
    if isinstance(shape, ListOf):
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            raise _bad_output(path, "expected a list")
        return [_normalize_walk(shape.member, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise _bad_output(path, "expected a mapping with string keys")
    return {key: _normalize_walk(shape.value, item, f"{path}.{key}") for key, item in value.items()}


# ---------------------------------------------------------------------- compiled walks
#
# The walks above build a path string for every member they visit, so that an error can say
# where it is; on the hot path nothing is wrong, and those strings were most of the cost of a
# request's shapes. So each public walk first runs a function compiled once per shape, which
# only checks and converts, and raises anything at all when the value does not fit; the
# reference walk then runs on the same value and raises the error it always raised (or, were
# the two ever to disagree, returns its own result). Compiled functions are cached by shape
# identity, with the shape kept alive beside its function so the id cannot be reused.

_Compiled = Callable[[Any], Any]


class _Mismatch(Exception):
    """A value does not fit its shape (compiled walks only; never leaves this module)."""


def _compile(shape: Shape) -> None:
    """Attach the compiled walks to a new shape (its members' are already attached)."""
    object.__setattr__(shape, "_from_json", _compile_from_json(shape))
    object.__setattr__(shape, "_output", _compile_output(shape))
    object.__setattr__(shape, "_required", _compile_required(shape))


def _is_string(shape: Shape) -> bool:
    return isinstance(shape, Scalar) and shape.type == "string"


def _compile_from_json(shape: Shape) -> _Compiled:
    if isinstance(shape, Scalar):
        kind = shape.type
        if kind == "string":

            def string(value: Any) -> Any:
                if type(value) is not str and not isinstance(value, str):
                    raise _Mismatch
                return value

            return string
        if kind in ("integer", "long"):

            def integer(value: Any) -> Any:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise _Mismatch
                return value

            return integer
        if kind == "boolean":

            def boolean(value: Any) -> Any:
                if not isinstance(value, bool):
                    raise _Mismatch
                return value

            return boolean

        def blob(value: Any) -> Any:
            if not isinstance(value, str):
                raise _Mismatch
            return base64.b64decode(value, validate=True)

        return blob
    if isinstance(shape, Structure):
        members = [
            (name, spec.shape._from_json, _is_string(spec.shape))
            for name, spec in shape.members.items()
        ]
        # name -> (position, convert, string): for a value that gives few of many members
        by_name = {
            name: (position, convert, string)
            for position, (name, convert, string) in enumerate(members)
        }

        def structure(value: Any) -> Any:
            if not isinstance(value, dict):
                raise _Mismatch
            out: dict[str, Any] = {}
            if len(value) * 2 < len(members):
                # Few members given (a batch entry: 2 of 7): walk the value's items rather
                # than look every member up, and keep model order as the member walk does.
                last = -1
                ordered = True
                for name, item in value.items():
                    known = by_name.get(name)
                    if known is None or item is None:
                        continue
                    position, convert, string = known
                    if position < last:
                        ordered = False
                    last = position
                    out[name] = item if string and type(item) is str else convert(item)
                if ordered:
                    return out
                return {name: out[name] for name, _, _ in members if name in out}
            get = value.get
            for name, convert, string in members:
                item = get(name)
                if item is not None:
                    # A str member that is a str needs no call (most members are strings).
                    out[name] = item if string and type(item) is str else convert(item)
            return out

        return structure
    if isinstance(shape, ListOf):
        item_of = shape.member._from_json

        def list_of(value: Any) -> Any:
            if not isinstance(value, list):
                raise _Mismatch
            return [item_of(item) for item in value]

        return list_of
    value_of = shape.value._from_json

    def map_of(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Mismatch
        return {key: value_of(item) for key, item in value.items()}

    return map_of


def _compile_output(shape: Shape) -> _Compiled:
    if isinstance(shape, Scalar):
        types = _PYTHON_TYPES[shape.type]
        exact = types[0]
        not_boolean = shape.type != "boolean"

        def scalar(value: Any) -> Any:
            if type(value) is exact and exact is not bytes:
                return value  # str, int (not a bool: its type is bool) or bool
            if not isinstance(value, types) or (not_boolean and isinstance(value, bool)):
                raise _Mismatch
            if isinstance(value, (bytearray, memoryview)):
                return bytes(value)
            return value

        return scalar
    if isinstance(shape, Structure):
        members = [
            (name, spec.shape._output, _is_string(spec.shape))
            for name, spec in shape.members.items()
        ]
        known = frozenset(shape.members)

        def structure(value: Any) -> Any:
            if type(value) is not dict and not isinstance(value, Mapping):
                raise _Mismatch
            if not known.issuperset(value):
                raise _Mismatch
            out: dict[str, Any] = {}
            get = value.get
            for name, convert, string in members:
                item = get(name)
                if item is not None:
                    out[name] = item if string and type(item) is str else convert(item)
            return out

        return structure
    if isinstance(shape, ListOf):
        item_of = shape.member._output

        def list_of(value: Any) -> Any:
            if type(value) is not list and (
                not isinstance(value, Sequence) or isinstance(value, (str, bytes))
            ):
                raise _Mismatch
            return [item_of(item) for item in value]

        return list_of
    value_of = shape.value._output

    def map_of(value: Any) -> Any:
        if type(value) is not dict and not isinstance(value, Mapping):
            raise _Mismatch
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Mismatch
            out[key] = value_of(item)
        return out

    return map_of


def _compile_required(shape: Shape) -> _Compiled | None:
    """A checker that raises when a required member is missing, or None: nothing to check."""
    if isinstance(shape, Scalar):
        return None
    if isinstance(shape, Structure):
        required = [name for name, spec in shape.members.items() if spec.required]
        nested = [
            (name, check)
            for name, spec in shape.members.items()
            if (check := spec.shape._required) is not None
        ]
        if not required and not nested:
            return None

        def structure(value: Any) -> None:
            for name in required:
                if name not in value:
                    raise _Mismatch
            for name, check in nested:
                if name in value:
                    check(value[name])

        return structure
    if isinstance(shape, ListOf):
        item_check = shape.member._required
        if item_check is None:
            return None

        def list_of(value: Any) -> None:
            for item in value:
                item_check(item)

        return list_of
    value_check = shape.value._required
    if value_check is None:
        return None

    def map_of(value: Any) -> None:
        for item in value.values():
            value_check(item)

    return map_of


STRING: Final = Scalar("string")
INTEGER: Final = Scalar("integer")
LONG: Final = Scalar("long")
BOOLEAN: Final = Scalar("boolean")
BLOB: Final = Scalar("blob")
