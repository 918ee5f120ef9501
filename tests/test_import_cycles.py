"""No import cycles among ferrum_core's modules.

Every ``import`` / ``from ... import`` of a ferrum_core module counts, at module
level or inside a function (a lazy import still ties the two modules together);
imports under ``if TYPE_CHECKING:`` do not (they never run). Importing
``a.b.c`` also imports the packages ``a.b`` on the way, so those count too,
except the importer's own enclosing packages (already being imported).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import ferrum_core

ROOT = Path(ferrum_core.__file__).parent


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for file in ROOT.rglob("*.py"):
        parts = list(file.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = file
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, importer: str, modules: dict[str, Path]) -> Iterator[str]:
    """Names of ferrum_core modules ``tree`` imports (relative imports resolved)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for stmt in node.orelse:
                yield from _imported(ast.Module(body=[stmt], type_ignores=[]), importer, modules)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = importer.split(".")
                if modules[importer].name != "__init__.py":
                    package.pop()
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        yield from _imported(node, importer, modules)


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, file in modules.items():
        for target in _imported(ast.parse(file.read_text(encoding="utf-8")), name, modules):
            if target not in modules or target == name:
                continue
            graph[name].add(target)
            parent = target.rpartition(".")[0]
            while parent in modules and parent != name and not name.startswith(parent + "."):
                graph[name].add(parent)
                parent = parent.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_ferrum_core_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_sees_lazy_imports_and_skips_type_checking() -> None:
    source = """
from typing import TYPE_CHECKING
import ferrum_core.errors
if TYPE_CHECKING:
    from ferrum_core.models import config
else:
    from ferrum_core import version
def lazy():
    from ferrum_core.models.config_rope import parse_rope
"""
    modules = _modules()
    seen = set(_imported(ast.parse(source), "ferrum_core.types", modules))
    assert {"ferrum_core.errors", "ferrum_core.version",
            "ferrum_core.models.config_rope"} <= seen
    assert "ferrum_core.models.config" not in seen
    graph = import_graph()
    assert "ferrum_core.models.config_rope" in graph["ferrum_core.models.config_parse"]
    # importing a submodule runs its package's __init__ first
    assert "ferrum_core.models" in graph["ferrum_core.engine.prompt_ids"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
