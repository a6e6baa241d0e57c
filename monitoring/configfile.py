"""Strict TOML configuration: decode a file straight into frozen ``msgspec.Struct`` schemas.

A bad file is reported as ``<file>: <reason> - at <key path>`` (msgspec's own wording, e.g.
``conf/balancer.toml: Expected `int` <= 65535 - at `$.listeners[0].port```), and a TOML syntax
error names the line and column. Callers never see half-loaded config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration file that cannot be used; ``str()`` is the message to show the operator."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def decode(data: bytes | str, schema: type[T], *, path: Path | str = "<config>") -> T:
    """Decode TOML text into ``schema``.

    Raises:
        ConfigError: on a syntax error (with line and column), an unknown key, a wrong type, a
            value out of range, or a cross-field rule broken in a schema's ``__post_init__``.
    """
    try:
        return msgspec.toml.decode(data, type=schema)
    except msgspec.ValidationError as exc:
        # ValidationError subclasses DecodeError, so it must be caught first.
        raise ConfigError(path, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(path, f"TOML syntax error: {exc}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables by recursion, without a depth limit.
        raise ConfigError(path, "TOML syntax error: arrays or tables nested too deeply") from None


def load(path: Path | str, schema: type[T]) -> T:
    """Read and decode one configuration file.

    Raises:
        ConfigError: the file cannot be read or does not satisfy ``schema``.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror or exc}") from None
    return decode(data, schema, path=path)


def json_schema(schema: type[Any]) -> bytes:
    """The JSON Schema of ``schema`` (for editors: taplo, VS Code Even Better TOML)."""
    return msgspec.json.format(msgspec.json.encode(msgspec.json.schema(schema)), indent=2)
