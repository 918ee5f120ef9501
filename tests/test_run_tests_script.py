"""The README's test command: exit code 5 (nothing collected) must never pass."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "run_tests.py"


def _load():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("run_tests", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (1, 1), (2, 2), (5, 1)])
def test_pytest_outcome(code: int, expected: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert _load().pytest_outcome(code) == expected
    assert ("no tests" in capsys.readouterr().err) is (code == 5)


def test_ci_runs_the_readme_test_command() -> None:
    root = SCRIPT.parent.parent
    assert "make test" in (root / "README.md").read_text()
    assert "make test" in (root / ".ci" / "run").read_text()
    assert "scripts/run_tests.py" in (root / "Makefile").read_text()
