"""Helpers of the ferrum-cpu tests: executors on tiny models and the transformers oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ferrum_core.plugin import (
    DataType,
    DecodeInput,
    ExecutorConfig,
    HostTensor,
    KvCacheHandle,
    ModelExecutor,
    PrefillInput,
)

__all__ = ["cpu_executor", "decode", "hf_logits", "prefill", "rel_err"]


def cpu_executor(path: Path | str | None, dtype: DataType = DataType.FP32, **options: Any) -> Any:
    from ferrum_cpu.factory import CpuExecutorFactory

    config = ExecutorConfig(model_path=None if path is None else str(path), dtype=dtype,
                            executor_options=options)
    return CpuExecutorFactory().create_executor(config)


def hf_logits(path: Path | str, ids: list[int]) -> np.ndarray:
    """transformers' fp32 logits ``[len(ids), vocab]`` for one sequence."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        out = model.eval()(torch.tensor([ids])).logits[0]
    return np.asarray(out.numpy(), np.float32)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def prefill(executor: ModelExecutor, ids: list[int],
            handle: KvCacheHandle | None = None) -> tuple[np.ndarray, KvCacheHandle]:  # fmt: skip
    out = executor.prefill(PrefillInput(HostTensor(np.array([ids], np.int64)), kv_cache=handle))
    return out.logits.to_numpy().reshape(-1), out.kv_cache


def decode(executor: ModelExecutor, token: int,
           handle: KvCacheHandle) -> tuple[np.ndarray, KvCacheHandle]:  # fmt: skip
    out = executor.decode(DecodeInput(HostTensor(np.array([[token]], np.int64)), handle))
    return out.logits.to_numpy().reshape(-1), out.kv_cache
