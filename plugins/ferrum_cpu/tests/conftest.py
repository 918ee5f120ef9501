"""Fixtures of the ferrum-cpu tests: tiny models built once per session, a private FERRUM_HOME."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # tests.tiny_models builds the models (the core's test helpers)
    sys.path.append(str(REPO))

_MODELS: dict[tuple[str, tuple[tuple[str, Any], ...]], Path] = {}


@pytest.fixture(scope="session")
def cpu_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ferrum-home")


@pytest.fixture(autouse=True)
def _private_home(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                  cpu_home: Path) -> Iterator[None]:  # fmt: skip
    """Built ONNX models go to a session FERRUM_HOME (slow tests keep the real one: they
    reuse the converted default model)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("FERRUM_HOME", str(cpu_home))
    yield


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny(family, **overrides)`` -> a cached tiny Hugging Face model directory."""
    from tests.tiny_models import build_tiny_model

    def get(family: str, **overrides: Any) -> Path:
        key = (family, tuple(sorted(overrides.items())))
        if key not in _MODELS:
            _MODELS[key] = build_tiny_model(tmp_path_factory.mktemp(family), family, **overrides)
        return _MODELS[key]

    return get
