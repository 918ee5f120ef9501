"""What the torch model tells the core's `LlmExecutor` about itself (`LlmRuntimeConfig`)."""

from __future__ import annotations

from typing import Any

import torch

from ferrum_core.plugin import AttentionType, DataType, LlmRuntimeConfig, ModelConfig

__all__ = ["runtime_config"]


def runtime_config(
    cfg: ModelConfig,
    num_parameters: int,
    *,
    dtype: DataType,
    device: torch.device,
    max_batch_size: int,
    prefix_caching: bool,
    extra: dict[str, Any],
) -> LlmRuntimeConfig:
    """The facts the executor's info and capabilities are derived from."""
    return LlmRuntimeConfig(
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        num_kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        vocab_size=cfg.vocab_size,
        max_seq_len=cfg.max_model_len,
        intermediate_size=cfg.intermediate_size,
        num_parameters=num_parameters,
        dtype=dtype,
        device=str(device) if device.type == "cpu" else f"cuda:{device.index or 0}",
        max_batch_size=max_batch_size,
        sliding_window=cfg.sliding_window,
        supported_dtypes=(DataType.FP32, DataType.FP16, DataType.BF16),
        attention_mechanisms=(AttentionType.FLASH,) if device.type == "cuda" else (),
        paged_kv=True,
        prefix_caching=prefix_caching,
        supports_lora=True,
        extra=extra,
    )
