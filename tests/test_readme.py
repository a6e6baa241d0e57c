"""The README's two commands are the ones CI runs, and its config tables stay true.

A config table is one whose header is ``| key | default | meaning |``. Its first cell names
dotted key paths in backticks (```a.b```, or ```a.b`, `a.c``` for keys that share a row); keys
of list entries go without an index (``listeners.rules.priority``). The schema is the JSON
Schema ``wharf-broker config-schema`` and ``wharf-balancer config-schema`` print, so the
tables are checked against what the daemons decode, not against a list kept here.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balancer.cli import SPEC as BALANCER_SPEC
from broker.cli import SPEC as BROKER_SPEC
from monitoring.configfile import json_schema

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", README, flags=re.DOTALL)


def test_readme_opens_with_the_install_and_test_commands():
    first, second = shell_blocks()[:2]
    assert "pip install -e ." in first
    assert first.endswith("wharf-broker")
    assert "[test" in second
    assert second.endswith("pytest")


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert shell_blocks()[1] in ci_lines
    assert "scripts/check" in ci_lines


# The schemas ------------------------------------------------------------------------------------


class Mark(enum.Enum):
    REQUIRED = "required"  # the key has no default: a file must set it
    EMPTY = "empty"  # a README cell saying "empty": "", [] or {}


@dataclass(frozen=True)
class SchemaKey:
    path: str  # dotted; list entries without an index
    table: str  # the schema definition declaring the key (a struct name)
    default: Any  # JSON value, or Mark.REQUIRED
    leaf: bool  # False for tables and lists of tables: their own keys document them

    @property
    def identity(self) -> tuple[str, str]:
        """The struct field behind the key: one struct may sit at several paths (an action is
        both ``listeners.default_action`` and ``listeners.rules.action``)."""
        return self.table, self.path.rsplit(".", 1)[-1]


def schema_keys(schema_type: type[Any]) -> dict[str, list[SchemaKey]]:
    """Every key path of a daemon's configuration, with one entry per union member declaring
    it (``listeners.name`` is HttpListener's and HttpsListener's)."""
    document = json.loads(json_schema(schema_type))
    definitions = document["$defs"]
    found: dict[str, list[SchemaKey]] = {}

    def tables(node: dict[str, Any]) -> list[str]:
        """The definitions a value may be: through arrays (lists of tables) and unions."""
        if "$ref" in node:
            return [node["$ref"].rsplit("/", 1)[-1]]
        if node.get("type") == "array":
            return tables(node["items"])
        return [name for member in node.get("anyOf", []) for name in tables(member)]

    def walk(table: str, prefix: str, defaults: dict[str, Any] | None) -> None:
        for name, node in definitions[table]["properties"].items():
            # A table's default comes from the table holding it when that one sets it (the
            # balancer's [admin] defaults to port 9326, AdminSettings itself to 9325).
            if defaults is not None and name in defaults:
                default = defaults[name]
            else:
                default = node.get("default", Mark.REQUIRED)
            nested = tables(node)
            key = SchemaKey(prefix + name, table, default, leaf=not nested)
            found.setdefault(key.path, []).append(key)
            inherited = default if "$ref" in node and isinstance(default, dict) else None
            for sub in nested:
                walk(sub, key.path + ".", inherited)

    walk(document["$ref"].rsplit("/", 1)[-1], "", None)
    return found


SCHEMAS = {
    "broker": schema_keys(BROKER_SPEC.schema),
    "balancer": schema_keys(BALANCER_SPEC.schema),
}
# Tables under these README sections document one daemon; elsewhere a key belongs to the
# daemons that have its top-level section ([admin] is both's, [api] the broker's).
SECTION_DAEMONS = {"SNS": {"broker"}, "SQS": {"broker"}, "Balancer": {"balancer"}}


# The README's tables -----------------------------------------------------------------------------

KEY = r"[a-z_]+(?:\.[a-z_]+)*"
# A default cell states a value when it is one literal, maybe followed by an aside in
# parentheses: `4194304` (4 MiB). Anything else is prose the test does not read.
LITERAL = r'`[^`]*`|"[^"]*"|-?\d+(?:\.\d+)?|true|false'


@dataclass(frozen=True)
class Row:
    line: int
    section: str  # the "## " heading the table is under
    keys: tuple[str, ...]
    default: str
    cells: tuple[str, ...]


def config_rows() -> list[Row]:
    rows: list[Row] = []
    section = ""
    header: list[str] | None = None
    for number, line in enumerate(README.splitlines(), 1):
        if line.startswith("## "):
            section = line[3:]
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if header is None:
            header = cells
        elif header[0] == "key" and not set("".join(cells)) <= set("-: "):
            keys = tuple(re.findall(r"`([^`]*)`", cells[0]))
            rows.append(Row(number, section, keys, cells[1], tuple(cells)))
    return rows


def stated_default(cell: str) -> Any:
    """What a default cell says: a literal's text, a Mark, or None for prose."""
    cell = re.sub(r" \([^()]*\)$", "", cell)
    if cell == "required":
        return Mark.REQUIRED
    if cell == "empty" or cell.startswith("empty: "):
        return Mark.EMPTY
    if re.fullmatch(LITERAL, cell):
        return cell[1:-1] if cell.startswith("`") else cell
    return None


def stated_defaults(cell: str, daemons: set[str]) -> dict[str, Any]:
    """The default each daemon gets per the cell (``broker `X`, balancer `Y```, or one for
    all); empty when the cell is prose."""
    per_daemon = re.fullmatch(rf"broker ({LITERAL}), balancer ({LITERAL})", cell)
    if per_daemon:
        return {
            "broker": stated_default(per_daemon[1]),
            "balancer": stated_default(per_daemon[2]),
        }
    value = stated_default(cell)
    return {} if value is None else dict.fromkeys(daemons, value)


def same_default(stated: Any, default: Any) -> bool:
    """Whether a stated literal is the schema's default, read as the default's type."""
    if stated is Mark.REQUIRED or default is Mark.REQUIRED:
        return stated is default
    if stated is Mark.EMPTY:
        return default in ("", [], {})
    if isinstance(default, bool):
        return stated == json.dumps(default)
    if isinstance(default, int | float):
        return re.fullmatch(r"-?\d+(?:\.\d+)?", stated) is not None and float(stated) == default
    return (isinstance(default, str) and stated == default) or stated == json.dumps(default)


def owners(key: str, section: str) -> set[str]:
    """The daemons whose schema must have ``key``."""
    top = key.split(".")[0]
    having_section = {daemon for daemon, keys in SCHEMAS.items() if top in keys}
    return having_section | SECTION_DAEMONS.get(section.split(":")[0], set())


def test_config_table_rows_name_their_keys_in_backticks():
    problems = [
        f"README.md:{row.line}: {row.cells[0]}"
        for row in config_rows()
        if len(row.cells) != 3
        or not row.keys
        or row.cells[0] != ", ".join(f"`{key}`" for key in row.keys)
        or not all(re.fullmatch(KEY, key) for key in row.keys)
    ]
    assert problems == []


def test_config_tables_name_only_keys_their_daemons_have():
    problems = []
    for row in config_rows():
        for key in row.keys:
            daemons = owners(key, row.section)
            if not daemons:
                problems.append(f"README.md:{row.line}: {key}: no daemon has [{key.split('.')[0]}]")
            problems += [
                f"README.md:{row.line}: {key}: not a key of wharf-{daemon}"
                for daemon in sorted(daemons)
                if key not in SCHEMAS[daemon]
            ]
    assert problems == []


def test_config_tables_state_the_schema_defaults():
    problems = []
    for row in config_rows():
        for key in row.keys:
            daemons = owners(key, row.section)
            for daemon, stated in stated_defaults(row.default, daemons).items():
                defaults = [k.default for k in SCHEMAS[daemon].get(key, [])]
                if not all(same_default(stated, default) for default in defaults):
                    problems.append(
                        f"README.md:{row.line}: {key}: README says {row.default!r}, "
                        f"wharf-{daemon}'s default is {defaults[0]!r}"
                    )
                if daemon not in daemons:
                    problems.append(f"README.md:{row.line}: {key}: wharf-{daemon} has no such key")
    assert problems == []


def test_every_config_key_is_in_a_table():
    documented: set[tuple[str, str, str]] = set()
    rows: dict[str, list[int]] = {}
    for row in config_rows():
        for key in row.keys:
            rows.setdefault(key, []).append(row.line)
            for daemon in owners(key, row.section):
                documented |= {(daemon, *k.identity) for k in SCHEMAS[daemon].get(key, [])}
    missing: dict[tuple[str, str, str], str] = {}
    for daemon, keys in SCHEMAS.items():
        for entries in keys.values():
            for key in entries:
                if key.leaf and (daemon, *key.identity) not in documented:
                    missing.setdefault((daemon, *key.identity), f"wharf-{daemon}: {key.path}")
    twice = sorted(
        f"{key}: README.md lines {lines}" for key, lines in rows.items() if len(lines) > 1
    )
    assert sorted(missing.values()) == []
    assert twice == []
