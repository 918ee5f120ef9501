"""A test-only backend that runs ANY transformers causal-LM family the core does not parse.

It shows the path a third party takes for a family outside ``KNOWN_MODEL_TYPES``:
``load_model(..., model_types=(...))`` hands over ``config=None``, the raw
``config.json``, the weight source and the tokenizer; the model math is real
``transformers`` execution (every call recomputes the sequence's full history,
which is slow and exact). It imports the core only through ``ferrum_core.plugin``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ferrum_core.backends import BackendDescriptor  # test wiring, not plugin code
from ferrum_core.plugin import (
    AttentionType,
    BatchModelExecutor,
    DataType,
    DecodeItem,
    ExecutorCapabilities,
    ExecutorConfig,
    ExecutorType,
    LlmExecutor,
    LlmRuntimeConfig,
    LoadedModel,
    ProbeResult,
    UnifiedItem,
    UnsupportedError,
    executor_types_for,
    load_model,
)

MODEL_TYPES = ("gpt2",)
CAPABILITIES = ExecutorCapabilities(
    max_batch_size=8, max_sequence_length=4096,
    attention_mechanisms=(AttentionType.MULTI_HEAD,),
    supports_dynamic_batching=True, supports_continuous_batching=True,
    supports_speculative_decoding=True, supported_dtypes=(DataType.FP32,),
    supported_devices=("cpu",), supported_model_types=MODEL_TYPES,
)  # fmt: skip


class HistoryLLM:
    """``DecoderOnlyLLM`` over a transformers model: per-sequence token history, no KV."""

    native_unified = False

    def __init__(self, model: Any, raw: dict[str, Any]) -> None:
        self.model = model
        heads = int(raw["n_head"])
        self.config = LlmRuntimeConfig(
            hidden_size=int(raw["n_embd"]), num_layers=int(raw["n_layer"]), num_heads=heads,
            num_kv_heads=heads, head_dim=int(raw["n_embd"]) // heads,
            vocab_size=int(raw["vocab_size"]), max_seq_len=int(raw["n_positions"]),
            max_batch_size=8, attention_mechanisms=(),
        )  # fmt: skip
        self.history: dict[str, list[int]] = {}

    def _logits(self, tokens: list[int], last: int) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(torch.tensor([tokens])).logits[0, -last:]
        return np.asarray(out.float().numpy(), dtype=np.float32)

    def _append(self, cache_id: str, tokens: Sequence[int], start: int) -> list[int]:
        held = self.history.get(cache_id, [])
        assert start == len(held), (start, len(held))
        return [*held, *tokens]

    def prefill(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        full = self._append(cache_id, tokens, start_pos)
        logits = self._logits(full, 1)[0]
        self.history[cache_id] = full
        return logits

    def decode(self, cache_id: str, token: int, pos: int) -> np.ndarray:
        return self.prefill(cache_id, [token], pos)

    def decode_batch(self, items: Sequence[DecodeItem], force_full_logits: bool
                     ) -> list[np.ndarray]:  # fmt: skip
        fulls = [self._append(it.cache_id, [it.token], it.pos) for it in items]
        rows = [self._logits(full, 1)[0] for full in fulls]
        for it, full in zip(items, fulls, strict=True):
            self.history[it.cache_id] = full
        return rows

    def unified_forward(self, items: Sequence[UnifiedItem]) -> list[np.ndarray | None]:
        raise UnsupportedError("no ragged forward")

    def forward_verify(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        full = self._append(cache_id, tokens, start_pos)
        logits = self._logits(full, len(tokens))
        self.history[cache_id] = full
        return logits

    def truncate_kv(self, cache_id: str, new_len: int) -> None:
        self.history[cache_id] = self.history.get(cache_id, [])[:new_len]

    def release(self, cache_id: str) -> None:
        self.history.pop(cache_id, None)

    def kv_capacity(self) -> int:
        return self.config.max_seq_len

    def set_lora_adapter_for_cache(self, cache_id: str, adapter: Any) -> None:
        if adapter is not None:
            raise UnsupportedError("no LoRA")

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        return None

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        return None

    def memory_usage_bytes(self) -> tuple[int, int]:
        return 0, 0


class TransformersFactory:
    def validate_config(self, config: ExecutorConfig) -> None:
        if config.dtype != DataType.FP32:
            raise UnsupportedError(f"fp32 only, not {config.dtype.value}")

    def create_executor(
        self, config: ExecutorConfig, *, model: LoadedModel | None = None
    ) -> LlmExecutor:
        import torch
        import transformers

        loaded = model if model is not None else load_model(config.model_path,
                                                            model_types=MODEL_TYPES)
        assert loaded.config is None  # a family the core does not parse
        hf_config = transformers.AutoConfig.for_model(**loaded.raw_config)
        hf_model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
        with loaded.weights as weights:  # the core's weight source, not transformers' loader
            state = {name: torch.from_numpy(np.array(weights.get(name)))
                     for name in weights.names()}
        result = hf_model.load_state_dict(state, strict=False)
        assert set(result.missing_keys) <= {"lm_head.weight"}, result.missing_keys  # tied
        hf_model.tie_weights()
        return LlmExecutor(HistoryLLM(hf_model, loaded.raw_config), model_id=loaded.path.name,
                           model_type=loaded.model_type, declared=CAPABILITIES)

    def create_batch_executor(self, config: ExecutorConfig) -> BatchModelExecutor:
        return self.create_executor(config)

    def supported_types(self) -> list[ExecutorType]:
        return executor_types_for(CAPABILITIES)


def descriptor(name: str = "hf-families") -> BackendDescriptor:
    return BackendDescriptor(
        name=name, factory_loader=TransformersFactory, probe=lambda: ProbeResult(True, "test"),
        priority=0, capabilities=CAPABILITIES, plugin="tests", distribution="tests",
    )  # fmt: skip
