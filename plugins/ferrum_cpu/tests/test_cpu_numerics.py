"""fp32 logits of the cpu backend against transformers on tiny random models of every family."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cpu_helpers import cpu_executor, decode, hf_logits, prefill, rel_err

from ferrum_core.plugin import DecodeInput, HostTensor, UnifiedBatch, UnifiedBatchItem

TOL = 1e-4
IDS = [1, 17, 42, 99, 7, 63, 120, 5, 88, 31, 200, 14, 77]

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),  # 3 heads, MQA, head_dim 16
    "llama_tied": ("llama", {"tie_word_embeddings": True}),
    "llama_bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "llama3_rope": ("llama3", {}),
    "mistral_window": ("mistral", {"sliding_window": 4}),
    "qwen2_bias": ("qwen2", {}),
    "qwen3_qknorm": ("qwen3", {}),
    "head_dim_8": ("llama", {"hidden_size": 32, "num_attention_heads": 4,
                             "num_key_value_heads": 2}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_prefill_and_decode_match_transformers(case: str, tiny: Callable[..., Path]) -> None:
    family, overrides = CASES[case]
    path = tiny(family, **overrides)
    want = hf_logits(path, IDS)
    executor = cpu_executor(path)
    row, handle = prefill(executor, IDS[:6])
    assert rel_err(row, want[5]) < TOL
    for i in range(6, len(IDS)):
        row, handle = decode(executor, IDS[i], handle)
        assert rel_err(row, want[i]) < TOL, f"decode at position {i}"
    executor.shutdown()


def test_mixed_unified_batch_is_one_run(tiny: Callable[..., Path]) -> None:
    """A prefill chunk and decode tokens of other sequences in one session run."""
    path = tiny("qwen3")
    other = [3, 9, 27, 81, 243 % 256, 11, 33]
    want_a, want_b = hf_logits(path, IDS), hf_logits(path, other)
    executor = cpu_executor(path)
    _, a = prefill(executor, IDS[:5])
    _, b = prefill(executor, other[:3])
    fresh = executor.new_cache()
    runs = executor.cache_metrics_snapshot()["session_runs"]
    rows = executor.unified_decode(UnifiedBatch([
        UnifiedBatchItem(a.cache_id, IDS[5:6], a, 5, True),
        UnifiedBatchItem(b.cache_id, other[3:6], b, 3, True),
        UnifiedBatchItem(fresh.cache_id, IDS[:4], fresh, 0, False),
    ]))  # fmt: skip
    snapshot = executor.cache_metrics_snapshot()
    assert snapshot["session_runs"] == runs + 1
    assert snapshot["unified_native_calls"] == 1
    assert rows[2] is None
    assert rel_err(np.asarray(rows[0]), want_a[5]) < TOL
    assert rel_err(np.asarray(rows[1]), want_b[5]) < TOL
    executor.shutdown()


def test_verify_truncate_and_release(tiny: Callable[..., Path]) -> None:
    path = tiny("llama3")
    want = hf_logits(path, IDS)
    executor = cpu_executor(path, max_chunk_tokens=4)  # chunks inside one call, too
    _, handle = prefill(executor, IDS[:3])
    outs = executor.forward_verify(
        [DecodeInput(HostTensor(np.array([[t]], np.int64)), handle) for t in IDS[3:10]]
    )
    for i, out in enumerate(outs):
        assert rel_err(out.logits.to_numpy().reshape(-1), want[3 + i]) < TOL
    handle = executor.truncate_kv(outs[-1].kv_cache, 5)  # reject the tail: rows 5.. rewritten
    row, handle = decode(executor, IDS[5], handle)
    assert rel_err(row, want[5]) < TOL
    # a second sequence released from the first slot moves the other one: still exact
    _, first = prefill(executor, [4, 5, 6])
    executor.release_cache(handle.cache_id)
    row, _ = decode(executor, 9, first)
    assert rel_err(row, hf_logits(path, [4, 5, 6, 9])[3]) < TOL
    executor.shutdown()


def test_kv_pool_growth_keeps_every_sequence(tiny: Callable[..., Path]) -> None:
    """Slots double and rows double (KV copied once per growth); all sequences stay exact."""
    path = tiny("llama")
    rng = np.random.default_rng(0)
    long = [int(t) for t in rng.integers(5, 250, 300)]
    executor = cpu_executor(path, max_chunk_tokens=128)
    _, a = prefill(executor, IDS[:6])
    _, b = prefill(executor, IDS[:3])
    row, c = prefill(executor, long[:299])  # 256 -> 512 rows, 2 -> 4 slots
    assert executor.cache_metrics_snapshot()["kv_rows_per_slot"] >= 299
    want_long = hf_logits(path, long)
    assert rel_err(row, want_long[298]) < TOL
    row, _ = decode(executor, long[299], c)
    assert rel_err(row, want_long[299]) < TOL
    want = hf_logits(path, IDS)
    row, _ = decode(executor, IDS[6], a)
    assert rel_err(row, want[6]) < TOL
    row, _ = decode(executor, IDS[3], b)
    assert rel_err(row, want[3]) < TOL
    executor.shutdown()
