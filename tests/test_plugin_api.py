"""`ferrum_core.plugin` is the whole backend-author surface, and the in-tree plugins keep to it."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import ferrum_core.plugin as api
from ferrum_core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_PACKAGES = [
    ROOT / "plugins" / "ferrum_cuda" / "ferrum_cuda",
    ROOT / "plugins" / "ferrum_cpu" / "ferrum_cpu",
    ROOT / "plugins" / "ferrum_mlx" / "ferrum_mlx",
    ROOT / "examples" / "ferrum-example-backend" / "ferrum_example_backend",
]
ALLOWED = {"ferrum_core.plugin", "ferrum_core.errors"}
GUIDE = ROOT / "examples" / "ferrum-example-backend" / "README.md"


def core_imports(path: Path) -> list[tuple[int, str]]:
    """Every ``ferrum_core`` module a file imports, at any depth (functions, TYPE_CHECKING)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if a.name.split(".")[0] == "ferrum_core"]
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and node.module.split(".")[0] == "ferrum_core"):
            found.append((node.lineno, node.module))
    return found


def test_walker_sees_nested_and_plain_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import ferrum_core.llm\nfrom ferrum_core.plugin import hookimpl\n"
        "def f():\n    from ferrum_core.models import load_model\n"
        "if True:\n    from ferrum_core import types\n"
    )
    assert [m for _, m in core_imports(source)] == [
        "ferrum_core.llm", "ferrum_core.plugin", "ferrum_core.models", "ferrum_core",
    ]


@pytest.mark.parametrize("package", PLUGIN_PACKAGES, ids=lambda p: p.name)
def test_plugins_import_the_core_only_through_the_public_module(package: Path) -> None:
    files = sorted(package.rglob("*.py"))
    assert files, f"no sources under {package}"
    offenders = [f"{path.relative_to(ROOT)}:{line}: {module}"
                 for path in files for line, module in core_imports(path)
                 if module not in ALLOWED]
    assert not offenders, "imports outside ferrum_core.plugin / errors:\n" + "\n".join(offenders)


def test_every_exported_name_resolves_and_is_documented() -> None:
    assert len(set(api.__all__)) == len(api.__all__), "duplicate names in __all__"
    undocumented = []
    for name in api.__all__:
        value = getattr(api, name)
        if (inspect.isclass(value) or inspect.isfunction(value)) and not inspect.getdoc(value):
            undocumented.append(name)
    assert not undocumented, f"exported without a docstring: {undocumented}"
    assert sorted(dir(api)) == sorted(api.__all__)
    with pytest.raises(AttributeError):
        _ = api.not_a_name  # type: ignore[attr-defined]


def test_internal_paths_stay_importable_and_identical() -> None:
    from ferrum_core.backends import ProbeResult
    from ferrum_core.llm import LlmExecutor
    from ferrum_core.models import load_model
    from ferrum_core.protocol.capabilities import ExecutorCapabilities

    assert api.LlmExecutor is LlmExecutor and api.load_model is load_model
    assert api.ProbeResult is ProbeResult and api.ExecutorCapabilities is ExecutorCapabilities


def test_core_api_version_is_not_the_plugin_declaration() -> None:
    assert api.CORE_API_VERSION == hookspecs.API_VERSION
    assert "FERRUM_API_VERSION" not in api.__all__
    text = GUIDE.read_text(encoding="utf-8")
    assert "FERRUM_API_VERSION = 1" in text
    assert "FERRUM_API_VERSION = CORE_API_VERSION" not in text


def test_guide_teaches_only_the_public_module() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    modules = {".".join(m.split(".")[:2]) for m in _words(text)}
    assert modules <= ALLOWED, f"the guide sends authors to internals: {sorted(modules - ALLOWED)}"
    for topic in ("force_full_logits", "executor_options", "kv_blocks_total",
                  "memory_requirements", "attention_mechanisms=()", "max_sequence_length",
                  "supported_model_types", "StoredTensor"):
        assert topic in text, f"the guide does not explain {topic}"


def _words(text: str) -> set[str]:
    import re

    return set(re.findall(r"ferrum_core(?:\.[A-Za-z_]+)+", text))


def test_importing_the_module_stays_light() -> None:
    code = (
        "import sys, ferrum_core.plugin as p; from ferrum_core.plugin import hookimpl, ProbeResult;"
        "heavy = [m for m in ('torch', 'tokenizers', 'jinja2', 'ferrum_core.models',"
        " 'ferrum_core.llm') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
