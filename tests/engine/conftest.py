"""Fixtures for the engine's integration tests: tiny random models on the `torch` backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_models import build_tiny_model


def _require_torch_backend() -> None:
    from ferrum_core.backends import get_backend
    from ferrum_core.errors import FerrumError

    try:
        get_backend("torch").factory()
    except (FerrumError, ImportError) as exc:
        pytest.skip(f"the torch backend is not usable here: {exc}")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny llama and a smaller draft with the same tokenizer (built once per session)."""
    pytest.importorskip("transformers")
    _require_torch_backend()
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
