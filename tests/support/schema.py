"""Walk a msgspec config schema: every key path, and every default value."""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Iterator
from typing import Any

import msgspec


def _struct_type(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct inside ``annotation`` (through Annotated, Optional, list[...]), if any."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _struct_type(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    for arg in typing.get_args(annotation):
        found = _struct_type(arg)
        if found is not None:
            return found
    return None


def key_paths(schema: type[msgspec.Struct], prefix: str = "") -> Iterator[str]:
    """Dotted paths of every key of ``schema``, descending into nested sections and lists."""
    hints = typing.get_type_hints(schema, include_extras=True)
    for field in msgspec.structs.fields(schema):
        path = f"{prefix}{field.encode_name}"
        yield path
        nested = _struct_type(hints[field.name])
        if nested is not None:
            yield from key_paths(nested, path + ".")


def lookup(document: dict[str, Any], path: str) -> bool:
    """Whether ``path`` exists in a decoded TOML document (lists: in any element)."""
    nodes: list[Any] = [document]
    for part in path.split("."):
        following: list[Any] = []
        for node in nodes:
            if isinstance(node, list):
                following.extend(n[part] for n in node if isinstance(n, dict) and part in n)
            elif isinstance(node, dict) and part in node:
                following.append(node[part])
        nodes = following
        if not nodes:
            return False
    return True


def missing_key_paths(schema: type[msgspec.Struct], toml_text: str) -> list[str]:
    """The schema's key paths that a shipped, fully commented config file does not show."""
    document = tomllib.loads(toml_text)
    return [path for path in sorted(set(key_paths(schema))) if not lookup(document, path)]


def uncommented_key_lines(toml_text: str) -> list[str]:
    """Lines setting a key without a comment line right above them (``line N: text``)."""
    lines = toml_text.splitlines()
    return [
        f"line {i + 1}: {line!r}"
        for i, line in enumerate(lines)
        if "=" in line and not line.startswith("#") and not lines[i - 1].startswith("#")
    ]
