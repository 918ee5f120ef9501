"""Fixtures of the reliability tests: a tiny llama on the `torch` backend, pool checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_models import build_tiny_model, require_torch_backend


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama (vocab 256, ChatML template), built once per session."""
    pytest.importorskip("transformers")
    require_torch_backend()
    return build_tiny_model(tmp_path_factory.mktemp("reliability-models"), "llama", seed=0)


@pytest.fixture(scope="module")
def shared_llm(tiny_dir: Path) -> Iterator[Any]:
    """One LLM per test module (block_size 4, a pool of 128 blocks)."""
    from ferrum_core.engine import LLM

    llm = LLM(str(tiny_dir), "torch", block_size=4, num_kv_blocks=128, max_model_len=96)
    yield llm
    llm.close()


def free_blocks(llm: Any) -> int:
    """Free blocks of the LLM's KV pool (the torch backend pages its cache)."""
    snapshot = llm.engine.runner.executor.cache_metrics_snapshot()
    assert snapshot is not None and "kv_blocks_free" in snapshot
    return int(snapshot["kv_blocks_free"])


@pytest.fixture(scope="module")
def executors(tiny_dir: Path) -> Iterator[list[Any]]:
    """Two torch executors of the tiny model (one to be the other's foreigner)."""
    from ferrum_core.backends import create_executor
    from ferrum_core.engine import EngineConfig
    from ferrum_core.types import DataType

    config = EngineConfig(block_size=4, num_kv_blocks=64).executor_config(str(tiny_dir),
                                                                         DataType.FP32)
    made = [create_executor(config, "torch") for _ in range(2)]
    yield made
    for executor in made:
        executor.shutdown()


def prefill(executor: Any, tokens: list[int]) -> Any:
    from ferrum_core.protocol import PrefillInput
    from ferrum_core.tensor import token_ids

    return executor.prefill(PrefillInput(token_ids(tokens)))


def decode_one(executor: Any, token: int, handle: Any) -> Any:
    from ferrum_core.protocol import DecodeInput
    from ferrum_core.tensor import token_ids

    return executor.decode(DecodeInput(token_ids([token]), handle))
