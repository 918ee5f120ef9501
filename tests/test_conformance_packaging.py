"""The conformance suite installs as ``ferrum_core.conformance``; pytest is an extra.

The sources stay in the top-level ``conformance/`` folder and the package
configuration maps them (pyproject.toml), so a user's environment gains no
top-level package called ``conformance``, and ``ferrum conformance`` without
pytest says which extra to install instead of failing on an import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_package_list_names_every_package_and_maps_the_suite() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "ferrum_core").rglob("__init__.py")
    } | {
        "ferrum_core." + ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "conformance").rglob("__init__.py")
    }
    assert listed == on_disk, f"pyproject [tool.setuptools] packages differ: {listed ^ on_disk}"
    assert setuptools["package-dir"] == {"ferrum_core.conformance": "conformance"}
    assert "ferrum_core.conformance" in setuptools["package-data"]
    entry = _pyproject()["project"]["entry-points"]["pytest11"]["ferrum_conformance"]
    assert entry == "ferrum_core.conformance.plugin"


def test_pytest_is_the_conformance_extra_not_a_dependency() -> None:
    project = _pyproject()["project"]
    assert not [d for d in project["dependencies"] if d.startswith("pytest")]
    assert any(d.startswith("pytest") for d in project["optional-dependencies"]["conformance"])


def _top_level_conformance_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                  if n == "conformance" or n.startswith("conformance.")]
    return found


def test_nothing_imports_a_top_level_conformance_package() -> None:
    folders = ["ferrum_core", "conformance", "tests", "plugins", "examples", "bench", "scripts"]
    offenders = [
        hit
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*.py"))
        if ".venv" not in path.parts
        for hit in _top_level_conformance_imports(path)
    ]
    assert offenders == []


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_suite_imports_from_anywhere_and_no_top_level_package_exists(tmp_path: Path) -> None:
    code = (
        "import importlib.util, ferrum_core.conformance as c, ferrum_core.conformance.plugin\n"
        "assert (c.CHECKS_DIR / 'test_numerics.py').is_file()\n"
        "assert any(c.GOLDEN_DIR.iterdir())\n"
        "assert importlib.util.find_spec('conformance') is None\n"
    )
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_ferrum_conformance_without_pytest_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None  # as if the extra were not installed\n"
        "from ferrum_core.cli.main import main\n"
        "sys.argv = ['ferrum', 'conformance', 'example']\n"
        "main()\n"
    )
    proc = _python(code, tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "ferrum-core[conformance]" in lines[0]
    assert "Traceback" not in proc.stderr
