"""Protocol surface: types, shapes and the documented defaults."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
import pytest
from ferrum_core.conformance.harness import Driver, ids, logits_rows, prompt
from ferrum_core.conformance.oracle import assert_close

from ferrum_core.errors import UnsupportedError
from ferrum_core.protocol import (
    ExecutorCapabilities,
    ExecutorStatus,
    KvCacheHandle,
    ModelExecutor,
    PrefillInput,
)
from ferrum_core.tensor import HostTensor, TensorRef
from ferrum_core.types import DataType, ModelInfo


def test_executor_type(executor: ModelExecutor) -> None:
    assert isinstance(executor, ModelExecutor), f"{type(executor).__name__} is not a ModelExecutor"
    assert isinstance(executor.info(), ModelInfo)
    assert isinstance(executor.capabilities(), ExecutorCapabilities)
    assert isinstance(executor.status(), ExecutorStatus)


def test_info_matches_config(executor: ModelExecutor, model_config: dict[str, Any]) -> None:
    """``info()`` describes the model that was loaded (compared with its config.json)."""
    if not model_config:
        pytest.skip("the model directory has no config.json to compare with")
    info = executor.info()
    heads = model_config["num_attention_heads"]
    expected = {
        "vocab_size": model_config["vocab_size"],
        "hidden_size": model_config["hidden_size"],
        "num_layers": model_config["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": model_config.get("num_key_value_heads", heads),
    }
    got = {key: getattr(info, key) for key in expected}
    assert got == expected
    assert 1 <= info.max_sequence_length <= model_config.get("max_position_embeddings", 1 << 30)


def test_defaults(executor: ModelExecutor) -> None:
    """Optional methods answer with the documented types (or the typed unsupported error)."""
    capacity = executor.kv_capacity()
    assert capacity is None or (isinstance(capacity, int) and capacity >= 1), capacity
    assert isinstance(executor.supports_native_unified_decode(), bool)
    for snapshot in (executor.cache_metrics_snapshot(), executor.lora_metrics_snapshot()):
        assert snapshot is None or isinstance(snapshot, dict)
        json.dumps(snapshot)  # JSON-serialisable, as the CLI and engine publish it
    executor.warmup()
    try:
        out = executor.forward(HostTensor(np.asarray([[1]], dtype=np.int64)))
    except UnsupportedError:
        out = None  # the protocol default
    assert out is None or isinstance(out, TensorRef)
    assert executor.batch_prefill([]) == []
    assert executor.batch_decode([]) == []
    assert executor.forward_verify([]) == []


def test_output_shapes(driver: Driver, vocab: int) -> None:
    """Prefill gives ``[1, seq|1, vocab]`` float logits and a handle at the prompt's length."""
    tokens = prompt(11, 6, vocab)
    out = driver.executor.prefill(PrefillInput(ids(tokens)))
    driver.track(out.kv_cache)
    shape = tuple(out.logits.shape)
    assert len(shape) == 3 and shape[0] == 1 and shape[1] in (1, len(tokens)), shape
    assert shape[2] == vocab, f"logits over {shape[2]} entries, vocabulary has {vocab}"
    assert tuple(out.last_token_logits().shape) == (1, vocab)
    assert isinstance(out.kv_cache, KvCacheHandle)
    assert out.kv_cache.sequence_length == len(tokens)
    info = driver.executor.info()
    assert out.kv_cache.num_layers == info.num_layers
    assert out.kv_cache.num_kv_heads == info.num_kv_heads
    assert out.kv_cache.memory_bytes() >= 0
    row, handle = driver.decode(tokens[0], out.kv_cache)
    assert row.shape == (vocab,) and row.dtype == np.float32
    assert handle.sequence_length == len(tokens) + 1
    assert handle.cache_id == out.kv_cache.cache_id
    assert np.all(np.isfinite(logits_rows(out.logits)))


def test_cache_ids_unique(driver: Driver, vocab: int) -> None:
    handles = [driver.prefill(prompt(20 + i, 3, vocab))[1] for i in range(4)]
    with contextlib.suppress(UnsupportedError):
        handles.append(driver.new_cache())
    cache_ids = [h.cache_id for h in handles]
    assert len(set(cache_ids)) == len(cache_ids), cache_ids


def test_new_cache(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    """``new_cache()`` gives an empty handle that a prefill continues (or is unsupported)."""
    try:
        handle = driver.new_cache()
    except UnsupportedError:
        pytest.skip("new_cache() is not supported (the protocol default)")
    assert handle.sequence_length == 0
    tokens = prompt(30, 5, vocab)
    row, after = driver.prefill(tokens, handle)
    assert after.cache_id == handle.cache_id and after.sequence_length == len(tokens)
    assert_close(row, driver.run(tokens, [])[0], tol_dtype, "prefill on a new_cache() handle")

