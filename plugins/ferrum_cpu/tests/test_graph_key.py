"""The built-model cache key covers the graph builder's code, not only GRAPH_VERSION."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from ferrum_cpu import graph

PACKAGE = Path(graph.__file__).parent


def _imported_siblings(module: str, seen: set[str]) -> set[str]:
    seen.add(module)
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        module_name = node.module if isinstance(node, ast.ImportFrom) else None
        if module_name and module_name.startswith("ferrum_cpu."):
            name = module_name.split(".")[1]
            if name not in seen:
                _imported_siblings(name, seen)
    return seen


def test_every_builder_module_is_hashed_into_the_key() -> None:
    builder = _imported_siblings("graph", set())
    assert builder <= set(graph._BUILDER_MODULES), sorted(builder - set(graph._BUILDER_MODULES))
    digest = hashlib.sha256(
        b"".join((PACKAGE / f"{name}.py").read_bytes() for name in graph._BUILDER_MODULES)
    ).hexdigest()[:16]
    key = graph.GraphOptions().key()
    assert key["builder"] == digest and key["graph_version"] == graph.GRAPH_VERSION


def test_fp32_key_ignores_the_quantisation_options() -> None:
    """An fp32 graph does not depend on accuracy_level or block_size, so asking for
    them does not build (and store) a second copy; a quantised graph does."""
    fp32 = graph.GraphOptions(mode="fp32").key()
    assert graph.GraphOptions(mode="fp32", accuracy_level=4, block_size=64).key() == fp32
    int4 = graph.GraphOptions(mode="int4").key()
    assert graph.GraphOptions(mode="int4", accuracy_level=4).key() != int4
    assert graph.GraphOptions(mode="int4", block_size=64).key() != int4
