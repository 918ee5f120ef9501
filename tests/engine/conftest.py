"""Fixtures for the engine's integration tests: tiny random models on the `torch` backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_models import build_tiny_model, require_torch_backend


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny llama and a smaller draft with the same tokenizer (built once per session)."""
    pytest.importorskip("transformers")
    require_torch_backend()
    root = tmp_path_factory.mktemp("engine-models")
    return {
        "target": build_tiny_model(root, "llama", seed=0),
        "draft": build_tiny_model(root, "llama", seed=7, num_hidden_layers=1),
    }


@pytest.fixture
def make_llm(tiny_dirs: dict[str, Path]) -> Callable[..., Any]:
    from ferrum_core.engine import LLM

    made: list[Any] = []

    def make(**config: Any) -> Any:
        config.setdefault("block_size", 4)
        llm = LLM(str(tiny_dirs["target"]), "torch", **config)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.close()
