"""Logits against the golden oracle (transformers, float32) within the dtype's tolerance.

The checks run on every float golden, or, when the run's dtype is int8 / int4, on the
GGUF goldens of that dtype (the same quantised weights, their expected logits computed
on them dequantised): ``numerics.decode_logits[llama_mha_q8_0]``.
"""

from __future__ import annotations

import numpy as np
import pytest
from ferrum_core.conformance.fixtures import GoldenExecutor
from ferrum_core.conformance.harness import Driver, ids, logits_rows
from ferrum_core.conformance.oracle import assert_close, golden_model, numeric_goldens
from ferrum_core.conformance.plugin import configured_dtype

from ferrum_core.errors import UnsupportedError
from ferrum_core.protocol import DecodeInput, PrefillInput
from ferrum_core.types import DataType


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model" in metafunc.fixturenames:
        metafunc.parametrize("model", numeric_goldens(configured_dtype(metafunc.config)))


def test_prefill_logits(
    model: str, golden_executor: GoldenExecutor, default_dtype: DataType
) -> None:
    """Prefill of the golden prompt: the last position, or every position when returned."""
    golden = golden_model(model)
    executor = golden_executor(model, default_dtype)
    out = executor.prefill(PrefillInput(ids(golden.prompt_ids)))
    try:
        rows = logits_rows(out.logits)
        n = len(golden.prompt_ids)
        if rows.shape[0] == n:
            assert_close(rows, golden.prefill_logits, default_dtype, "prefill logits (every row)")
        else:
            assert rows.shape[0] == 1, f"prefill returned {rows.shape[0]} rows for {n} tokens"
            assert_close(rows[0], golden.prefill_logits[-1], default_dtype, "prefill logits")
    finally:
        executor.release_cache(out.kv_cache.cache_id)


def test_chunked_prefill_logits(
    model: str, golden_executor: GoldenExecutor, default_dtype: DataType
) -> None:
    """Chunks of growing size continue the handle; each chunk's last row matches that position."""
    golden = golden_model(model)
    drv = Driver(golden_executor(model, default_dtype))
    try:
        handle, start, size = None, 0, 1
        tokens = golden.prompt_ids
        while start < len(tokens):
            chunk = tokens[start : start + size]
            row, handle = drv.prefill(chunk, handle)
            start += len(chunk)
            assert handle.sequence_length == start, "handle length after a chunk"
            assert_close(row, golden.prefill_logits[start - 1], default_dtype,
                         f"chunked prefill logits at position {start - 1}")
            size += 1
    finally:
        drv.close()


def test_decode_logits(
    model: str, golden_executor: GoldenExecutor, default_dtype: DataType
) -> None:
    """Decode steps after the golden prompt."""
    golden = golden_model(model)
    drv = Driver(golden_executor(model, default_dtype))
    try:
        _, handle = drv.prefill(golden.prompt_ids)
        steps = zip(golden.decode_ids, golden.decode_logits, strict=True)
        for step, (token, want) in enumerate(steps):
            row, handle = drv.decode(token, handle)
            assert_close(row, want, default_dtype, f"decode step {step}")
    finally:
        drv.close()


def test_all_positions(
    model: str, golden_executor: GoldenExecutor, default_dtype: DataType
) -> None:
    """``forward_verify`` from an empty cache gives the logits of every prompt position."""
    golden = golden_model(model)
    executor = golden_executor(model, default_dtype)
    try:
        handle = executor.new_cache()
    except UnsupportedError:
        pytest.skip("new_cache() is unsupported: no empty handle to verify from")
    try:
        outs = executor.forward_verify([DecodeInput(ids([t]), handle) for t in golden.prompt_ids])
        rows = np.concatenate([logits_rows(out.logits) for out in outs])
        assert_close(rows, golden.prefill_logits, default_dtype, "logits at every prompt position")
    finally:
        executor.release_cache(handle.cache_id)
