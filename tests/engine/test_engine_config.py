"""`LLM(executor_options=...)` reaches the backend's factory; the engine's own keys win."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferrum_core.engine.config import EngineConfig
from ferrum_core.errors import InvalidInputError
from ferrum_core.types import DataType


def test_executor_options_pass_through() -> None:
    config = EngineConfig(executor_options={"cpu_kernels": False, "enable_prefix_caching": False},
                          enable_prefix_caching=True, threads=2)
    options = config.executor_config(None, DataType.FP32).executor_options
    assert options == {"cpu_kernels": False, "enable_prefix_caching": True, "threads": 2}


def test_the_factory_sees_them(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from ferrum_core.engine import LLM
    from tests.tiny_models import build_tiny_model

    model = build_tiny_model(tmp_path, "llama")
    with pytest.raises(InvalidInputError, match="decode_workspace_mb"):
        LLM(str(model), backend="torch", executor_options={"decode_workspace_mb": -1})
