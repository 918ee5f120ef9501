"""Test doubles for the engine's unit tests: a paged toy model behind the real LlmExecutor.

The toy's logits are a deterministic pseudo-random function of a cache's whole
token history, so any slip in positions, chunking, preemption or rollback
changes the output. Its KV "pool" counts blocks like a paged backend (full
blocks with the same prefix are shared when prefix caching is on) and raises
`KvPoolExhaustedError` before changing anything, as the contract asks.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ferrum_core.errors import KvPoolExhaustedError, UnsupportedError
from ferrum_core.llm import ActiveLoraAdapter, DecodeItem, LlmRuntimeConfig, UnifiedItem
from ferrum_core.llm.executor import LlmExecutor
from ferrum_core.protocol import KvCacheHandle, UnifiedBatch, UnifiedLogits

VOCAB = 101
EOS = 0


def toy_logits(history: Sequence[int], salt: int = 0, noise: float = 0.0) -> np.ndarray:
    seed = hash(tuple(history)) & 0x7FFF_FFFF_FFFF_FFFF
    row = np.random.default_rng(seed).standard_normal(VOCAB) * 2.0
    if noise:
        row += noise * np.random.default_rng(seed ^ (salt + 1)).standard_normal(VOCAB)
    return row.astype(np.float32)


class PagedToyLlm:
    def __init__(
        self,
        *,
        block_size: int = 4,
        num_blocks: int = 512,
        max_seq_len: int = 256,
        max_batch_size: int = 64,
        prefix_caching: bool = False,
        noise: float = 0.0,
        salt: int = 0,
        report_pool: bool = True,
        lora: bool = True,
    ) -> None:
        self._config = LlmRuntimeConfig(
            hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=4,
            vocab_size=VOCAB, max_seq_len=max_seq_len, max_batch_size=max_batch_size,
            paged_kv=True, prefix_caching=prefix_caching, supports_lora=lora,
        )
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.prefix_caching = prefix_caching
        self.noise = noise
        self.salt = salt
        self.report_pool = report_pool
        self.history: dict[str, list[int]] = {}
        self.adapters: dict[str, ActiveLoraAdapter | None] = {}
        self.adapters_seen: list[tuple[str, str | None]] = []
        self.calls: Counter[str] = Counter()

    @property
    def config(self) -> LlmRuntimeConfig:
        return self._config

    @property
    def native_unified(self) -> bool:
        return True

    # --- pool -------------------------------------------------------------------------
    def _blocks_in_use(self, histories: dict[str, list[int]]) -> int:
        used: set[Any] = set()
        for cache_id, tokens in histories.items():
            parent: Any = ("root",)
            for start in range(0, len(tokens), self.block_size):
                block = tuple(tokens[start : start + self.block_size])
                parent = (parent, block)
                full = len(block) == self.block_size
                used.add(parent if full and self.prefix_caching else (cache_id, start))
        return len(used)

    def free_blocks(self) -> int:
        return self.num_blocks - self._blocks_in_use(self.history)

    def _append_all(self, items: Sequence[tuple[str, Sequence[int], int]]) -> list[list[int]]:
        planned = {k: list(v) for k, v in self.history.items()}
        for cache_id, tokens, start in items:
            seq = planned.setdefault(cache_id, [])
            assert start == len(seq), f"{cache_id}: start {start} != held {len(seq)}"
            seq.extend(int(t) for t in tokens)
        if self._blocks_in_use(planned) > self.num_blocks:
            raise KvPoolExhaustedError("toy pool exhausted")
        self.history = planned
        return [planned[cache_id] for cache_id, _, _ in items]

    def _logits(self, cache_id: str, history: Sequence[int]) -> np.ndarray:
        row = toy_logits(history, self.salt, self.noise)
        adapter = self.adapters.get(cache_id)
        if adapter is not None:  # an "adapter" shifts the scores by a name-dependent pattern
            # crc32, not hash(): str hashes change per process (PYTHONHASHSEED)
            row = row + 3.0 * toy_logits([zlib.crc32(adapter.name.encode()) & 0xFFFF])
        return row

    # --- DecoderOnlyLLM ---------------------------------------------------------------
    def prefill(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        self.calls["prefill"] += 1
        (seq,) = self._append_all([(cache_id, tokens, start_pos)])
        return self._logits(cache_id, seq)

    def decode(self, cache_id: str, token: int, pos: int) -> np.ndarray:
        return self.prefill(cache_id, [token], pos)

    def decode_batch(
        self, items: Sequence[DecodeItem], force_full_logits: bool
    ) -> list[np.ndarray]:
        self.calls["decode_batch"] += 1
        seqs = self._append_all([(i.cache_id, [i.token], i.pos) for i in items])
        return [self._logits(i.cache_id, s) for i, s in zip(items, seqs, strict=True)]

    def unified_forward(self, items: Sequence[UnifiedItem]) -> list[np.ndarray | None]:
        self.calls["unified_forward"] += 1
        seqs = self._append_all([(i.cache_id, i.tokens, i.pos_offset) for i in items])
        return [
            self._logits(i.cache_id, s) if i.is_final_chunk else None
            for i, s in zip(items, seqs, strict=True)
        ]

    def forward_verify(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        self.calls["forward_verify"] += 1
        (seq,) = self._append_all([(cache_id, tokens, start_pos)])
        n = len(tokens)
        return np.stack([self._logits(cache_id, seq[: len(seq) - n + i + 1]) for i in range(n)])

    def truncate_kv(self, cache_id: str, new_len: int) -> None:
        if cache_id in self.history:
            del self.history[cache_id][new_len:]

    def release(self, cache_id: str) -> None:
        self.history.pop(cache_id, None)
        self.adapters.pop(cache_id, None)

    def kv_capacity(self) -> int:
        return self._config.max_seq_len

    def set_lora_adapter_for_cache(self, cache_id: str, adapter: ActiveLoraAdapter | None) -> None:
        self.adapters[cache_id] = adapter
        self.adapters_seen.append((cache_id, None if adapter is None else adapter.name))

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        if not self.report_pool:
            return None
        out: dict[str, Any] = {
            "kv_blocks_total": self.num_blocks,
            "kv_blocks_free": self.free_blocks(),
            "block_size": self.block_size,
        }
        if self.prefix_caching:
            out["prefix_cache_hits"] = 0
            out["prefix_cache_misses"] = 0
        return out

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        return None

    def memory_usage_bytes(self) -> tuple[int, int]:
        return (self.num_blocks, self.num_blocks - self.free_blocks())


class NoUnifiedExecutor(LlmExecutor):
    """An executor as a simple third-party backend might ship: no unified path, no new_cache."""

    def unified_decode(self, batch: UnifiedBatch) -> UnifiedLogits:
        raise UnsupportedError("no unified decode here")

    def new_cache(self) -> KvCacheHandle:
        raise UnsupportedError("no new_cache here")


def toy_executor(*, unified: bool = True, **kwargs: Any) -> tuple[LlmExecutor, PagedToyLlm]:
    model = PagedToyLlm(**kwargs)
    cls = LlmExecutor if unified else NoUnifiedExecutor
    return cls(model, model_id="toy"), model


class ToyDetokenizer:
    """Token ``t`` reads as a letter; a few ids are two-letter pieces or a space."""

    def __init__(self) -> None:
        self.text = ""

    @staticmethod
    def piece(token_id: int) -> str:
        if token_id == EOS:
            return ""
        if token_id % 10 == 3:
            return " "
        if token_id % 10 == 7:
            return "xy"
        return chr(ord("a") + token_id % 26)

    def add(self, token_id: int) -> str:
        delta = self.piece(token_id)
        self.text += delta
        return delta

    def finish(self) -> str:
        return ""
