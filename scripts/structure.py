"""Structure checks that tools enforce instead of memory.

1. Mirrored tests: every module ``pkg/sub/name.py`` has ``tests/pkg/sub/test_name.py``.
2. Import direction: broker, balancer -> monitoring -> proto; broker and balancer never import
   each other; proto and the pure cores import no I/O or clock modules.
3. Properties: the tests of every proto module and pure core use hypothesis (``@given``).

Run as ``python scripts/structure.py``; exits 1 with one line per problem.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("proto", "monitoring", "broker", "balancer")

# What each top-level package may import from the project.
ALLOWED = {
    "proto": {"proto"},
    "monitoring": {"monitoring", "proto"},
    "broker": {"broker", "monitoring", "proto"},
    "balancer": {"balancer", "monitoring", "proto"},
}
# Modules that must stay sans-I/O: no sockets, no event loop, no clock, no logging.
IMPURE = {"trio", "socket", "asyncio", "time", "logging", "threading", "selectors", "ssl"}
PURE_PREFIXES = (
    "proto/",
    "broker/model/",
    "balancer/rules.py",
    "balancer/selection.py",
    "balancer/health.py",
    "balancer/stickiness.py",
)
# Pure modules whose tests must include hypothesis properties.
PROPERTY_PREFIXES = (
    "proto/",
    "broker/model/",
    "balancer/rules.py",
    "balancer/selection.py",
    "balancer/health.py",
    "balancer/stickiness.py",
)
NO_PROPERTY_NEEDED = {"__init__.py", "errors.py"}


def modules() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ".venv" not in path.parts:
                yield path


def imported_roots(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def test_path(path: Path) -> Path:
    relative = path.relative_to(ROOT)
    return ROOT / "tests" / relative.parent / f"test_{relative.name}"


def problems() -> Iterator[str]:
    for path in modules():
        relative = path.relative_to(ROOT).as_posix()
        package = relative.split("/")[0]
        if path.name != "__init__.py":
            mirror = test_path(path)
            if not mirror.exists():
                yield f"{relative}: no mirrored test file {mirror.relative_to(ROOT)}"
            elif (
                relative.startswith(PROPERTY_PREFIXES)
                and path.name not in NO_PROPERTY_NEEDED
                and "@given" not in mirror.read_text()
            ):
                yield f"{relative}: {mirror.relative_to(ROOT)} has no hypothesis property"
        pure = relative.startswith(PURE_PREFIXES)
        for lineno, name in imported_roots(path):
            root = name.split(".")[0]
            if root in PACKAGES and root not in ALLOWED[package]:
                yield f"{relative}:{lineno}: {package} must not import {name}"
            if pure and root in IMPURE:
                yield f"{relative}:{lineno}: pure module imports {name}"


def main() -> int:
    found = list(problems())
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
