"""Helpers of the ferrum-mlx tests: build the MLX model on a directory, run the oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ferrum_mlx.factory import MlxExecutorFactory
from ferrum_mlx.model import MlxDecoderLLM

from ferrum_core.protocol import ExecutorConfig
from ferrum_core.types import DataType

PROMPT = [5, 17, 42, 99, 3, 64, 128, 7, 200, 11]
DECODE = [23, 150, 8]


def build(path: Path, dtype: str = "fp32", **options: Any) -> MlxDecoderLLM:
    """The bare MLX model of ``path`` in ``dtype`` (weights closed after loading)."""
    config = ExecutorConfig(model_path=str(path), dtype=DataType(dtype), executor_options=options)
    return MlxExecutorFactory().create_model(config)[0]


def hf_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """The oracle: transformers' float32 logits at every position ``[len, vocab]``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def relative(got: np.ndarray, want: np.ndarray) -> float:
    """``max|got - want|`` relative to ``max(1, max|want|)`` (the suite's measure)."""
    return float(np.abs(np.asarray(got) - want).max() / max(1.0, float(np.abs(want).max())))


def run_sequence(llm: MlxDecoderLLM, cache_id: str, chunk: int = 4) -> np.ndarray:
    """Logits at every position of PROMPT + DECODE: chunked prefill, then decode steps."""
    rows = []
    for start in range(0, len(PROMPT), chunk):
        part = PROMPT[start:start + chunk]
        rows.append(llm.forward_verify(cache_id, part, start))
    pos = len(PROMPT)
    for token in DECODE:
        rows.append(llm.decode(cache_id, token, pos)[None])
        pos += 1
    return np.concatenate(rows)
