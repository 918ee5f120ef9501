"""int8 / int4 on the cpu backend: GGUF blocks kept exactly, fp32 weights quantised by ORT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cpu_helpers import cpu_executor, decode, hf_logits, prefill, rel_err

from ferrum_core.plugin import DataType

IDS = [1, 40, 77, 120, 9, 33, 64, 200, 15, 99]
# From fp32 weights (ORT's block quantiser, block 32), relative to the logits' range:
QUANTISED_TOL = {DataType.INT8: 0.05, DataType.INT4: 0.35}  # measured 0.015, 0.23
LEVEL4_TOL = 0.06  # int8 activations (accuracy_level 4) vs fp32; measured 0.026


def _q4_1(name: str, array: np.ndarray) -> Any:
    from gguf import GGMLQuantizationType as Q

    return Q.F32 if array.ndim == 1 else (Q.Q8_0 if "embd" in name else Q.Q4_1)


def _k_quants(name: str, array: np.ndarray) -> Any:
    from gguf import GGMLQuantizationType as Q

    if array.ndim == 1:
        return Q.F32
    return [Q.Q4_K, Q.Q6_K, Q.Q4_0, Q.Q8_0][sum(map(ord, name)) % 4]


def _logits(executor: Any, ids: list[int]) -> np.ndarray:
    row, handle = prefill(executor, ids[:4])
    rows = [row]
    for token in ids[4:]:
        row, handle = decode(executor, token, handle)
        rows.append(row)
    executor.shutdown()
    return np.stack(rows)


@pytest.fixture(scope="module")
def gguf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.models.gguf_builder import build_tiny_llama_and_gguf

    out = {}
    for name, chooser, hidden in (("q4_1", _q4_1, 96), ("k_quants", _k_quants, 256)):
        _, gguf = build_tiny_llama_and_gguf(tmp_path_factory.mktemp(name), quant=chooser,
                                            hidden_size=hidden, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=hidden)
        out[name] = gguf
    return out


@pytest.mark.parametrize("name", ["q4_1", "k_quants"])
def test_int4_from_gguf_equals_fp32_on_its_dequantised_weights(
    name: str, gguf_models: dict[str, Path]
) -> None:
    """Each GGUF tensor keeps its own blocks (4-bit or 8-bit): no lossy re-quantisation."""
    path = gguf_models[name]
    want = _logits(cpu_executor(path, DataType.FP32), IDS)
    got = _logits(cpu_executor(path, DataType.INT4, accuracy_level=1), IDS)
    assert rel_err(got, want) < 1e-4
    fast = _logits(cpu_executor(path, DataType.INT4, accuracy_level=4), IDS)
    assert rel_err(fast, want) < LEVEL4_TOL


@pytest.mark.parametrize("dtype", [DataType.INT8, DataType.INT4])
def test_quantised_fp32_weights_within_tolerance(
    dtype: DataType, tiny: Callable[..., Path]
) -> None:
    path = tiny("qwen2", hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=256)
    want = hf_logits(path, IDS)[3:]
    got = _logits(cpu_executor(path, dtype), IDS)
    err = rel_err(got, want)
    assert err < QUANTISED_TOL[dtype]
    assert err > 1e-6, "the weights were not quantised at all"
