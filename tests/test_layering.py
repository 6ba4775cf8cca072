"""Import rules that keep the core pure (DESIGN.md §2).

``meshd/core`` is sans-io: it never imports anything that does I/O, reads a
clock, draws randomness or runs threads. It does not depend on the layers
built on top of it (runtime, cli, testing). Only ``meshd/runtime`` (and, lazily,
``meshd/cli``) may import trio; ``meshd/testing`` simulates on virtual time
without it.

The check reads source with :mod:`ast`, so it sees imports anywhere in a file:
at module level, inside functions, under ``if TYPE_CHECKING:`` (a type-only
import of trio would still couple the core to it), relative imports, and
``importlib.import_module("...")`` / ``__import__("...")`` calls with a literal
name. A dynamic import whose name is not a literal cannot be checked, so it is
a violation too.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Collection, Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "meshd"

#: Modules the core must never import (DESIGN.md §2 plus the rest of the
#: I/O, clock, randomness and concurrency family).
CORE_FORBIDDEN = (
    "trio",
    "socket",
    "ssl",
    "time",
    "random",
    "os",
    "zeroconf",
    "asyncio",
    "threading",
    "sqlite3",
    "subprocess",
    "selectors",
    # The same powers under other names.
    "_socket",
    "_ssl",
    "_thread",
    "_random",
    "posix",
    "secrets",
    "signal",
    "multiprocessing",
    "concurrent",
)

#: Layers above the core; the core must not depend on them.
CORE_FORBIDDEN_MESHD = ("meshd.runtime", "meshd.cli", "meshd.testing")

#: Only the runtime does trio; these must not import it at all.
NO_TRIO = ("trio",)


@attrs.frozen
class Violation:
    """One forbidden import: where, and what it named."""

    path: str
    line: int
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported!r} ({self.why})"


def _matches(name: str, forbidden: Collection[str]) -> str | None:
    """The entry of ``forbidden`` that ``name`` is or lies under, if any."""
    for entry in forbidden:
        if name == entry or name.startswith(entry + "."):
            return entry
    return None


def _imported_names(tree: ast.AST, package: str) -> Iterator[tuple[int, str | None]]:
    """Yield ``(line, dotted name)`` for every import in ``tree``.

    ``None`` as the name means "an import this checker cannot resolve" (a
    relative import above the top level, or a dynamic import of a computed
    name).

    Args:
        tree: a parsed module.
        package: the package the module lives in, for relative imports.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            relative = "." * node.level + (node.module or "")
            try:
                base = importlib.util.resolve_name(relative, package) if node.level else relative
            except ImportError:
                yield node.lineno, None
                continue
            yield node.lineno, base
            # `from meshd import runtime` imports meshd.runtime.
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value
            else:
                yield node.lineno, None


def _is_dynamic_import(func: ast.expr) -> bool:
    """True for ``importlib.import_module``, ``import_module`` and ``__import__``."""
    names = {"import_module", "__import__"}
    if isinstance(func, ast.Name):
        return func.id in names
    return isinstance(func, ast.Attribute) and func.attr in names


def check_source(
    source: str,
    *,
    path: str,
    package: str,
    forbidden: Collection[str],
    why: str,
) -> list[Violation]:
    """All imports in ``source`` that name (or lie under) a ``forbidden`` module.

    Args:
        source: Python source text.
        path: file name used in the report.
        package: dotted package the file belongs to (resolves relative imports).
        forbidden: dotted module names that must not be imported.
        why: the rule, quoted in each violation.

    Returns:
        The violations, in line order.
    """
    tree = ast.parse(source, filename=path)
    found = []
    for line, name in _imported_names(tree, package):
        if name is None:
            found.append(Violation(path, line, "<dynamic or unresolvable>", why))
        elif _matches(name, forbidden):
            found.append(Violation(path, line, name, why))
    return sorted(set(found), key=lambda v: (v.line, v.imported))


def _modules(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.py"))


def _package_of(path: Path) -> str:
    """Dotted package of a file under the repository root."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts if path.name == "__init__.py" else parts[:-1]).removesuffix(".__init__")


def check_tree(paths: Collection[Path], forbidden: Collection[str], why: str) -> list[Violation]:
    found: list[Violation] = []
    for path in paths:
        found += check_source(
            path.read_text(encoding="utf-8"),
            path=str(path.relative_to(ROOT)),
            package=_package_of(path),
            forbidden=forbidden,
            why=why,
        )
    return found


def _report(found: list[Violation]) -> str:
    return "forbidden imports:\n" + "\n".join(f"  {v}" for v in found)


# ---------------------------------------------------------------------------
# The rules, applied to the tree.


def test_layering_finds_core_modules() -> None:
    # Guard against a vacuous pass (moved directory, wrong ROOT).
    names = {p.name for p in _modules(PACKAGE / "core")}
    assert {"__init__.py", "types.py"} <= names


def test_layering_core_does_no_io() -> None:
    found = check_tree(
        _modules(PACKAGE / "core"),
        CORE_FORBIDDEN,
        "meshd/core is sans-io: time, randomness and I/O are injected",
    )
    assert not found, _report(found)


def test_layering_core_does_not_depend_on_upper_layers() -> None:
    found = check_tree(
        _modules(PACKAGE / "core"),
        CORE_FORBIDDEN_MESHD,
        "meshd/core must not depend on runtime, cli or testing",
    )
    assert not found, _report(found)


def test_layering_only_runtime_imports_trio() -> None:
    paths = [
        *_modules(PACKAGE / "core"),
        *_modules(PACKAGE / "testing"),
        PACKAGE / "__init__.py",
        PACKAGE / "errors.py",
    ]
    found = check_tree(
        [p for p in paths if p.exists()],
        NO_TRIO,
        "only meshd/runtime imports trio; the simulator runs on virtual time",
    )
    assert not found, _report(found)


# ---------------------------------------------------------------------------
# The checker itself catches what it should.

_BAD_CASES = [
    ("import trio\n", "trio"),
    ("import os.path\n", "os.path"),
    ("from os import path\n", "os"),
    ("from time import monotonic\n", "time"),
    ("import random as r\n", "random"),
    ("def f():\n    import socket\n", "socket"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import trio\n", "trio"),
    ("try:\n    import ssl\nexcept ImportError:\n    pass\n", "ssl"),
    ("import importlib\nimportlib.import_module('threading')\n", "threading"),
    ("from importlib import import_module\nimport_module('sqlite3')\n", "sqlite3"),
    ("__import__('subprocess')\n", "subprocess"),
    ("import importlib\nname = 'ti' + 'me'\nimportlib.import_module(name)\n", None),
    ("from meshd.runtime import node\n", "meshd.runtime"),
    ("from meshd import cli\n", "meshd.cli"),
    ("from ..runtime import node\n", "meshd.runtime"),
    ("from .. import testing\n", "meshd.testing"),
    ("from .... import x\n", None),
]


@pytest.mark.parametrize(("source", "expected"), _BAD_CASES)
def test_check_source_catches_bad_import(source: str, expected: str | None) -> None:
    found = check_source(
        source,
        path="meshd/core/bad.py",
        package="meshd.core",
        forbidden=(*CORE_FORBIDDEN, *CORE_FORBIDDEN_MESHD),
        why="test",
    )
    assert found, f"checker missed a forbidden import in {source!r}"
    imported = {v.imported for v in found}
    if expected is None:
        assert "<dynamic or unresolvable>" in imported
    else:
        assert any(name == expected or name.startswith(expected + ".") for name in imported)
    assert all(str(v).startswith("meshd/core/bad.py:") for v in found)


def test_check_source_reports_file_and_line() -> None:
    source = '"""doc"""\n\nimport attrs\n\n\ndef f():\n    import time\n'
    found = check_source(source, path="x.py", package="meshd.core", forbidden=("time",), why="w")
    assert [str(v) for v in found] == ["x.py:7: imports 'time' (w)"]


@pytest.mark.parametrize(
    "source",
    [
        "import attrs\nimport enum\nfrom collections.abc import Sequence\n",
        "from meshd.core.types import NodeId\nfrom . import types\nfrom .types import Member\n",
        "import timeit_is_not_time\nimport osmosis\n",  # prefixes of names do not match
        "from meshd.errors import BadPacket\n",
    ],
)
def test_check_source_allows_pure_imports(source: str) -> None:
    found = check_source(
        source,
        path="meshd/core/ok.py",
        package="meshd.core",
        forbidden=(*CORE_FORBIDDEN, *CORE_FORBIDDEN_MESHD),
        why="test",
    )
    assert found == []
