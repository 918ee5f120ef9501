"""int8 / int4 from fp32 weights (ORT's block quantiser) within tolerance on every family case
of the fp32 numerics test: GQA/MQA, tied embeddings, llama3 rope, a sliding window, biases,
q/k norms, head_dim 8. Tolerances are test_cpu_dtypes' (measured there on qwen2)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cpu_helpers import cpu_executor, hf_logits, rel_err
from test_cpu_dtypes import IDS, QUANTISED_TOL, _logits
from test_cpu_numerics import CASES

from ferrum_core.plugin import DataType

BLOCK = 32  # the backend's default quantisation block along K
# Cases whose widths the block does not divide, widened keeping their quirk (as QUANTISABLE in
# plugins/ferrum_mlx/tests/test_mlx_numerics.py): still MQA (one kv head) where it was.
QUANTISABLE = {
    "llama": {"hidden_size": 64, "num_attention_heads": 4},
    "llama_tied": {"hidden_size": 64, "num_attention_heads": 4},
    "llama_bias": {"hidden_size": 64, "num_attention_heads": 4},
    "mistral_window": {"intermediate_size": 128},
    "qwen2_bias": {"hidden_size": 160},
}

_ORACLE: dict[str, tuple[Path, np.ndarray]] = {}


def _model(case: str, tiny: Callable[..., Path]) -> tuple[Path, np.ndarray]:
    if case not in _ORACLE:
        family, overrides = CASES[case]
        path = tiny(family, **{**overrides, **QUANTISABLE.get(case, {})})
        _ORACLE[case] = (path, hf_logits(path, IDS)[3:])
    return _ORACLE[case]


@pytest.mark.parametrize("dtype", [DataType.INT8, DataType.INT4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_quantised_fp32_weights_within_tolerance(
    case: str, dtype: DataType, tiny: Callable[..., Path]
) -> None:
    path, want = _model(case, tiny)
    config = json.loads((path / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    widths = (config["hidden_size"], config["intermediate_size"],
              config["num_attention_heads"] * head_dim)  # fmt: skip
    assert all(w % BLOCK == 0 for w in widths), f"{case}: K widths {widths} vs block {BLOCK}"
    got = _logits(cpu_executor(path, dtype, block_size=BLOCK), IDS)
    err = rel_err(got, want)
    assert err < QUANTISED_TOL[dtype], f"{case} {dtype.value}: {err:.3g}"
    assert err > 1e-6, "the weights were not quantised at all"
