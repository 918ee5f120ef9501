"""The package root: a small `__all__`, and the engine loaded only on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ferrum_core


def test_import_is_light_and_exports_resolve() -> None:
    code = (
        "import sys, ferrum_core\n"
        "assert 'ferrum_core.engine' not in sys.modules\n"
        "from ferrum_core import (LLM, SamplingParams, RequestOutput,\n"
        "                         CompletionOutput, LoRARequest)\n"
        "assert LLM.__module__ == 'ferrum_core.engine.llm'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_all_names_exist_and_unknown_names_fail() -> None:
    for name in ferrum_core.__all__:
        assert getattr(ferrum_core, name) is not None
    with pytest.raises(AttributeError, match="Nope"):
        ferrum_core.Nope  # noqa: B018
