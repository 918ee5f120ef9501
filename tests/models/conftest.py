"""Fixtures for the model layer: tiny random models per family and the real
default model (converted once per session into ``$FERRUM_HOME``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_models import build_tiny_model, default_model_dir

# (family, tie_word_embeddings): every family, tied and untied both covered.
FAMILY_CASES = [
    ("llama", False),
    ("llama", True),
    ("llama3", False),
    ("mistral", False),
    ("qwen2", True),
    ("qwen2", False),
    ("qwen3", False),
    ("qwen3", True),
]


@pytest.fixture(scope="session", autouse=True)
def ferrum_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep conversions and locks out of the real ~/.cache unless FERRUM_HOME is set."""
    preset = os.environ.get("FERRUM_HOME")
    if preset:
        yield Path(preset)
        return
    home = tmp_path_factory.mktemp("ferrum-home")
    os.environ["FERRUM_HOME"] = str(home)
    try:
        yield home
    finally:
        os.environ.pop("FERRUM_HOME", None)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    """Read-only tiny models, one per FAMILY_CASES entry (tests that edit files build their own)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        case: build_tiny_model(root, case[0], tie_word_embeddings=case[1]) for case in FAMILY_CASES
    }


@pytest.fixture(
    params=FAMILY_CASES, ids=[f"{f}-{'tied' if t else 'untied'}" for f, t in FAMILY_CASES]
)
def family_case(request: pytest.FixtureRequest) -> tuple[str, bool]:
    case: tuple[str, bool] = request.param
    return case


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A fresh (editable) tiny llama: 3 heads, 1 KV head, untied."""
    return build_tiny_model(tmp_path, "llama")


@pytest.fixture(scope="session")
def sharded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("sharded"), "qwen2", max_shard_size="30KB")


@pytest.fixture(scope="session")
def default_dir() -> Path:
    """The converted default model (conversion runs at most once per FERRUM_HOME)."""
    return default_model_dir()


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from ferrum_core.models.default_model import default_gguf_path

    return default_gguf_path()


@pytest.fixture(scope="session")
def hf_gguf_tokenizer(default_gguf: Path) -> Any:
    """The tokenizer ``transformers`` itself builds from the GGUF: the oracle."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_gguf.parent), gguf_file=default_gguf.name)
