"""The package's shape, read from its source: layers, import cycles, module size.

docs/architecture.md draws the layers. These tests parse every module under
``src/roomcast`` (every ``import`` statement, at module level, in functions and
under ``if TYPE_CHECKING:``), so a wrong import fails here before it is ever
executed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import roomcast

SRC = Path(roomcast.__file__).resolve().parent

IO_LIBRARIES = frozenset(
    {"starlette", "uvicorn", "websockets", "redis", "httpx", "h11", "httptools", "anyio"}
)
"""Libraries that do network I/O or serve it: the core imports none of them."""

# Which layers each layer may import (besides itself). The compatibility
# modules (old import paths) and the package root re-export, so they may import
# anything; nothing imports them.
PURE = frozenset(
    {"roomcast.protocol", "roomcast.errors", "roomcast.supervisor", "roomcast._version"}
)
ALLOWED: dict[str, frozenset[str]] = {
    "pure": frozenset({"pure"}),
    "roomcast.brokers": frozenset({"pure"}),
    "roomcast.core": frozenset({"pure", "roomcast.brokers"}),
    "roomcast.frontends": frozenset({"pure", "roomcast.core"}),
    "roomcast.app": frozenset({"pure", "roomcast.core", "roomcast.frontends", "roomcast.settings"}),
    "roomcast.settings": frozenset({"pure", "roomcast.core"}),
    "roomcast.integrations": frozenset({"pure", "roomcast.core"}),
    "roomcast.client": frozenset({"pure"}),
    "roomcast.server": frozenset(
        {
            "pure",
            "roomcast.core",
            "roomcast.brokers",
            "roomcast.frontends",
            "roomcast.app",
            "roomcast.settings",
            "roomcast.integrations",
        }
    ),
}
COMPAT = frozenset(
    {
        "roomcast",
        "roomcast.__main__",
        "roomcast.hub",
        "roomcast.connection",
        "roomcast.config",
        "roomcast.asgi",
        "roomcast.native",
        "roomcast.cli",
        "roomcast.logs",
        "roomcast.wsguard",
        "roomcast.httpguard",
        "roomcast.registry",
        "roomcast.recovery",
        "roomcast.auth",
        "roomcast.limits",
        "roomcast.brokers.redis_users",
    }
)

LONG_MODULE = 500
"""Lines above which a module's docstring must say why it stays whole."""


@dataclass(frozen=True)
class Import:
    """One imported module name, where it is imported, and whether only for types."""

    target: str
    line: int
    type_only: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(name: str) -> list[Import]:
    """Every module ``name`` imports, resolved to a module of roomcast where it is one."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def resolve(base: str, member: str) -> str:
        full = f"{base}.{member}" if base else member
        return full if full in MODULES else base

    def visit(node: ast.AST, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            guarded = type_only or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, guarded) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.extend(
                    Import(resolve(base, a.name), child.lineno, guarded) for a in child.names
                )
            visit(child, guarded)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def layer_of(name: str) -> str:
    if name in PURE:
        return "pure"
    for layer in ALLOWED:
        if name == layer or name.startswith(layer + "."):
            return layer
    raise AssertionError(f"{name} belongs to no layer: add it to tests/test_layout.py")


def internal(imports: list[Import]) -> Iterator[Import]:
    return (i for i in imports if i.target == "roomcast" or i.target.startswith("roomcast."))


def test_the_source_was_found() -> None:
    # A wrong SRC would make every other test here pass vacuously.
    assert {"roomcast.core.engine", "roomcast.app", "roomcast.frontends.native"} <= set(MODULES)
    assert any(i.target == "roomcast.core.engine" for i in imports_of("roomcast.app"))


@pytest.mark.parametrize("name", sorted(set(MODULES) - COMPAT))
def test_each_layer_imports_only_the_layers_below(name: str) -> None:
    layer = layer_of(name)
    for imp in internal(imports_of(name)):
        if imp.target in COMPAT:
            pytest.fail(f"{name}:{imp.line} imports the compatibility path {imp.target}")
        target = layer_of(imp.target)
        assert target == layer or target in ALLOWED[layer], (
            f"{name}:{imp.line} ({layer}) imports {imp.target} ({target})"
        )


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("roomcast.core")))
def test_the_core_imports_no_io_library(name: str) -> None:
    for imp in imports_of(name):
        top = imp.target.partition(".")[0]
        assert top not in IO_LIBRARIES, f"{name}:{imp.line} imports {imp.target}"


def test_no_import_cycle() -> None:
    # Imports that run (not those only for type checkers) between roomcast's modules.
    graph = {
        name: {
            i.target
            for i in internal(imports_of(name))
            if not i.type_only and i.target != name and i.target in MODULES
        }
        for name in MODULES
    }
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            walk(nxt, [*path, node])
        done.add(node)

    for name in sorted(graph):
        walk(name, [])


def test_importing_the_core_loads_no_io_library() -> None:
    # The same rule at run time, in a fresh interpreter: what `import roomcast`
    # and the whole core pull in.
    core = sorted(n for n in MODULES if n.startswith("roomcast.core"))
    code = (
        "import sys\n"
        + "".join(f"import {n}\n" for n in core)
        + f"loaded = sorted({{m.partition('.')[0] for m in sys.modules}} & {set(IO_LIBRARIES)!r})\n"
        + "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("name", sorted(MODULES))
def test_long_modules_say_why(name: str) -> None:
    path = MODULES[name]
    lines = path.read_text(encoding="utf-8").count("\n")
    if lines <= LONG_MODULE:
        return
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert "Long on purpose:" in doc, (
        f"{name} has {lines} lines: split it, or say why it stays whole in a "
        "'Long on purpose: ...' line of its docstring"
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_has_a_docstring(name: str) -> None:
    assert ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8"))), name
