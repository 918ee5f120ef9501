"""fp16 and bf16 run on the CPU and stay close to the float32 oracle."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch_tiny import TinyModel, prompt

from ferrum_core.types import DataType

# Relative to the largest logit: bf16 keeps 8 mantissa bits, fp16 11.
TOLERANCE = {DataType.FP16: 0.02, DataType.BF16: 0.08}


@pytest.mark.parametrize("dtype", [DataType.FP16, DataType.BF16])
@pytest.mark.parametrize("family", ["llama_gqa", "qwen3"])
def test_half_precision_close_to_fp32(
    dtype: DataType, family: str, tiny: Callable[[str], TinyModel]
) -> None:
    model = tiny(family)
    llm = model.build(dtype)
    assert (
        llm.pool.data.dtype == {DataType.FP16: torch.float16, DataType.BF16: torch.bfloat16}[dtype]
    )
    assert llm.config.dtype == dtype
    tokens = prompt(14, seed=1)
    ref = model.logits(tokens).numpy()
    got = [llm.prefill("s", tokens[:10], 0)]
    got += [llm.decode("s", tokens[p], p) for p in range(10, 14)]
    scale = np.abs(ref[9:]).max()
    for row, want in zip(got, ref[9:], strict=True):
        assert row.dtype == np.float32
        assert np.abs(row - want).max() <= TOLERANCE[dtype] * scale
