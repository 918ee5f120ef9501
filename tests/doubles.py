"""A small `DecoderOnlyLLM` test double, like the reference's `RecordingLlm`.

Its "logits" are a deterministic function of the whole token history of a
cache, so any mistake in positions, continuation or routing shows up as a
different row. It records which model entry points were called.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ferrum_core.errors import KvPoolExhaustedError, UnsupportedError
from ferrum_core.llm import ActiveLoraAdapter, DecodeItem, LlmRuntimeConfig, UnifiedItem

VOCAB = 32


def history_logits(history: Sequence[int], vocab: int = VOCAB) -> np.ndarray:
    phase = sum((t + 1) * (i + 1) * 0.1 for i, t in enumerate(history))
    return np.cos(phase + np.arange(vocab, dtype=np.float64)).astype(np.float32)


class ToyLlm:
    def __init__(
        self,
        *,
        native: bool = True,
        capacity: int = 64,
        max_tokens_total: int | None = None,
        max_batch_size: int = 8,
        lora: bool = False,
    ) -> None:
        self._config = LlmRuntimeConfig(
            hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=4,
            vocab_size=VOCAB, max_seq_len=128, max_batch_size=max_batch_size,
            supports_lora=lora,
        )
        self.native = native
        self.capacity = capacity
        self.max_tokens_total = max_tokens_total
        self.history: dict[str, list[int]] = {}
        self.calls: Counter[str] = Counter()
        self.adapters: dict[str, ActiveLoraAdapter | None] = {}
        self.full_logits_flags: list[bool] = []

    @property
    def config(self) -> LlmRuntimeConfig:
        return self._config

    @property
    def native_unified(self) -> bool:
        return self.native

    def _append(self, cache_id: str, tokens: Sequence[int], start: int) -> list[int]:
        seq = self.history.setdefault(cache_id, [])
        assert start == len(seq), f"{cache_id}: start {start} != held {len(seq)}"
        seq.extend(int(t) for t in tokens)
        return seq

    def _reserve(self, extra: int) -> None:
        if self.max_tokens_total is None:
            return
        held = sum(len(h) for h in self.history.values())
        if held + extra > self.max_tokens_total:
            raise KvPoolExhaustedError("toy pool exhausted")

    def prefill(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        self.calls["prefill"] += 1
        self._reserve(len(tokens))
        return history_logits(self._append(cache_id, tokens, start_pos))

    def decode(self, cache_id: str, token: int, pos: int) -> np.ndarray:
        self.calls["decode"] += 1
        self._reserve(1)
        return history_logits(self._append(cache_id, [token], pos))

    def decode_batch(
        self, items: Sequence[DecodeItem], force_full_logits: bool
    ) -> list[np.ndarray]:
        self.calls["decode_batch"] += 1
        self.full_logits_flags.append(force_full_logits)
        self._reserve(len(items))
        return [history_logits(self._append(i.cache_id, [i.token], i.pos)) for i in items]

    def unified_forward(self, items: Sequence[UnifiedItem]) -> list[np.ndarray | None]:
        self.calls["unified_forward"] += 1
        if not self.native:
            raise UnsupportedError("toy model has no ragged forward")
        self._reserve(sum(len(i.tokens) for i in items))
        out: list[np.ndarray | None] = []
        for item in items:
            seq = self._append(item.cache_id, item.tokens, item.pos_offset)
            out.append(history_logits(seq) if item.is_final_chunk else None)
        return out

    def forward_verify(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        self.calls["forward_verify"] += 1
        seq = self._append(cache_id, tokens, start_pos)
        n = len(tokens)
        return np.stack([history_logits(seq[: len(seq) - n + i + 1]) for i in range(n)])

    def truncate_kv(self, cache_id: str, new_len: int) -> None:
        del self.history[cache_id][new_len:]

    def release(self, cache_id: str) -> None:
        self.history.pop(cache_id, None)
        self.adapters.pop(cache_id, None)

    def kv_capacity(self) -> int:
        return self.capacity

    def set_lora_adapter_for_cache(self, cache_id: str, adapter: ActiveLoraAdapter | None) -> None:
        if adapter is not None and not self._config.supports_lora:
            raise UnsupportedError("toy model has no LoRA")
        self.adapters[cache_id] = adapter

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        return {"position": "toy-cache", "held_tokens": sum(len(h) for h in self.history.values())}

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        return None

    def memory_usage_bytes(self) -> tuple[int, int]:
        return 1000, 10 * sum(len(h) for h in self.history.values())

    def with_config(self, **changes: Any) -> ToyLlm:
        self._config = replace(self._config, **changes)
        return self
