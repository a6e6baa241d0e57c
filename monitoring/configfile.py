"""Strict TOML configuration: decode a file straight into frozen ``msgspec.Struct`` schemas.

A bad file is reported as ``<file>: <reason> - at <key path>`` (msgspec's own wording, e.g.
``conf/balancer.toml: Expected `int` <= 65535 - at `$.listeners[0].port```), and a TOML syntax
error names the line and column. Callers never see half-loaded config.

A file must be a regular file holding at least one key: an empty one (or one of comments
alone) is refused rather than read as "every default", since that is what a tool that
truncates a file before writing it leaves for a SIGHUP that lands in between, and the
broker's defaults are anonymous.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from monitoring.safefile import read_regular_file

T = TypeVar("T")

# What Windows editors (Notepad) put in front of UTF-8 text; tomllib would call it a syntax
# error at line 1, column 1, in front of nothing the operator can see.
UTF8_BOM: Final = "\ufeff"
# TOML's whitespace (spec: "tab or space") and newlines; anything else on a line is a key, a
# table header or a syntax error, all of which the decoder reports itself.
_TOML_BLANK: Final = " \t\r"
EMPTY_FILE: Final = "the file is empty (no keys, only whitespace or comments)"


class ConfigError(Exception):
    """A configuration file that cannot be used; ``str()`` is the message to show the operator."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def at(self, key: str) -> ConfigError:
        """This error with the configuration key that named its file (``auth.credentials_file``),
        as decoding errors end; unchanged if its reason names a key already."""
        if " - at `$" in self.reason:
            return self
        return ConfigError(self.path, f"{self.reason} - at `$.{key}`")


def decode(data: bytes | str, schema: type[T], *, path: Path | str = "<config>") -> T:
    """Decode TOML text into ``schema``.

    Raises:
        ConfigError: on a syntax error (with line and column), an unknown key, a wrong type, a
            value out of range, or a cross-field rule broken in a schema's ``__post_init__``.
    """
    text = _text(data, path).removeprefix(UTF8_BOM)
    try:
        return msgspec.toml.decode(text, type=schema)
    except msgspec.ValidationError as exc:
        # ValidationError subclasses DecodeError, so it must be caught first.
        raise ConfigError(path, _explained(schema, str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(path, f"TOML syntax error: {exc}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables by recursion, without a depth limit.
        raise ConfigError(path, "TOML syntax error: arrays or tables nested too deeply") from None
    except ValueError as exc:
        # What tomllib lets through: an integer of more than 4,300 digits (Python's limit on
        # converting text to int). Its advice after the ";" is for programmers.
        reason = str(exc).partition(";")[0]
        raise ConfigError(path, f"TOML syntax error: {reason}") from None


def _explained(schema: type[Any], reason: str) -> str:
    """msgspec's reason, reworded by the schema's ``explain_error(reason) -> str`` if it has
    one (msgspec says ``Invalid value 'x'`` for a tag it does not know, naming no
    alternative: a daemon can say what it takes, or that it has no such feature)."""
    explain = getattr(schema, "explain_error", None)
    return str(explain(reason)) if callable(explain) else reason


def _text(data: bytes | str, path: Path | str) -> str:
    """``data`` as text; bytes that are not UTF-8 are a syntax error at their line and column."""
    if isinstance(data, str):
        return data
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        # Everything before the bad byte decoded, so the column counts characters, as an
        # editor does.
        column = len(data[line_start : exc.start].decode().removeprefix(UTF8_BOM)) + 1
        raise ConfigError(
            path,
            f"TOML syntax error: byte 0x{data[exc.start]:02x} is not UTF-8 (at line {line}, "
            f"column {column}); save the file as UTF-8",
        ) from None


def has_no_keys(text: str) -> bool:
    """Whether a TOML document is nothing but whitespace and comments."""
    return all(
        not line.strip(_TOML_BLANK) or line.lstrip(_TOML_BLANK).startswith("#")
        for line in text.removeprefix(UTF8_BOM).split("\n")
    )


def load(path: Path | str, schema: type[T], *, empty_hint: str = "") -> T:
    """Read and decode one configuration file.

    Args:
        empty_hint: what to add to the refusal of a file with no keys (where the defaults
            the operator may have meant are to be had instead).

    Raises:
        ConfigError: the file cannot be read, is not a regular file, has no keys, or does
            not satisfy ``schema``.
    """
    text = _text(_read_regular_file(path), path)
    if has_no_keys(text):
        raise ConfigError(path, f"{EMPTY_FILE}; {empty_hint}" if empty_hint else EMPTY_FILE)
    return decode(text, schema, path=path)


def _read_regular_file(path: Path | str) -> bytes:
    # Never blocks on a FIFO (see monitoring.safefile); a configuration file has no size
    # limit: its size is the operator's business, and a device is refused before any read.
    try:
        return read_regular_file(path, max_bytes=None)
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror or exc}") from None


def json_schema(schema: type[Any]) -> bytes:
    """The JSON Schema of ``schema`` (for editors: taplo, VS Code Even Better TOML)."""
    return msgspec.json.format(msgspec.json.encode(msgspec.json.schema(schema)), indent=2)
