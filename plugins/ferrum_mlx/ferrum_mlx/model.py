"""`MlxDecoderLLM`: the `DecoderOnlyLLM` of the mlx backend.

Every call (prefill, a chunk, a batched decode step, a ragged unified batch,
``forward_verify``) is one forward over the concatenated tokens of its items
and one ``mx.eval``: the logits it returns and every KV slab it wrote. A
sequence's state is committed only after that evaluation succeeded; every
check that can fail runs before anything is written.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from ferrum_core.errors import CapacityError, InvalidInputError, UnsupportedError
from ferrum_core.plugin import (
    ActiveLoraAdapter,
    DataType,
    DecodeItem,
    LlmRuntimeConfig,
    ModelConfig,
    UnifiedItem,
    rope_inv_freq,
)
from ferrum_mlx.forward import Forward, Span
from ferrum_mlx.kv import KvPool, SequenceKv
from ferrum_mlx.weights import MX_DTYPES, ModelWeights, describe

__all__ = ["MlxDecoderLLM"]

_Want = str  # "last" | "all" | "none"


class MlxDecoderLLM:
    """Model math over per-sequence KV slabs keyed by cache id (see ``DecoderOnlyLLM``)."""

    def __init__(
        self, config: ModelConfig, weights: ModelWeights, *, dtype: DataType, device: str,
        mx_device: mx.Device, max_batch_size: int, supported_dtypes: tuple[DataType, ...],
        shards: int = 1, kv_dtype: DataType | None = None,
    ) -> None:  # fmt: skip
        self.model_config = config
        self.weights = weights
        self._device = mx_device
        self._kv_dtype = MX_DTYPES[kv_dtype or dtype]
        periods = 1.0 / np.asarray(rope_inv_freq(config), dtype=np.float32)
        self._forward = Forward(config, weights, mx.array(periods))
        self._shards = shards
        self._local = threading.local()
        self._caches: dict[str, SequenceKv] = {}
        self._pool = KvPool(config.num_hidden_layers, config.num_key_value_heads,
                            config.head_dim, self._kv_dtype)
        self._lock = threading.Lock()  # one call at a time: every call writes the one pool
        self._runtime = LlmRuntimeConfig(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            vocab_size=config.vocab_size,
            max_seq_len=config.max_model_len,
            intermediate_size=config.intermediate_size,
            num_parameters=weights.num_parameters,
            dtype=dtype,
            device=device,
            max_batch_size=max_batch_size,
            sliding_window=config.sliding_window,
            supported_dtypes=supported_dtypes,
            attention_mechanisms=(),  # the executor derives MHA / GQA / MQA from the shapes
            extra={**describe(weights), "kv_cache_dtype": str(self._kv_dtype)},
        )

    # -- DecoderOnlyLLM ---------------------------------------------------------------
    @property
    def config(self) -> LlmRuntimeConfig:
        return self._runtime

    @property
    def native_unified(self) -> bool:
        return True

    def prefill(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        out = self._run([(cache_id, tokens, start_pos, "last")])[0]
        assert out is not None
        return out

    def decode(self, cache_id: str, token: int, pos: int) -> np.ndarray:
        return self.prefill(cache_id, [token], pos)

    def decode_batch(
        self, items: Sequence[DecodeItem], force_full_logits: bool
    ) -> list[np.ndarray]:
        outs = self._run([(i.cache_id, [i.token], i.pos, "last") for i in items])
        return [o for o in outs if o is not None]

    def unified_forward(self, items: Sequence[UnifiedItem]) -> list[np.ndarray | None]:
        return self._run([(i.cache_id, i.tokens, i.pos_offset,
                           "last" if i.is_final_chunk else "none") for i in items])

    def forward_verify(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        out = self._run([(cache_id, tokens, start_pos, "all")])[0]
        assert out is not None
        return out

    def truncate_kv(self, cache_id: str, new_len: int) -> None:
        with self._lock:
            kv = self._caches.get(cache_id)
            if kv is not None:
                kv.length = min(kv.length, max(0, new_len))

    def release(self, cache_id: str) -> None:
        with self._lock:
            kv = self._caches.pop(cache_id, None)
            if kv is not None:
                self._pool.release(kv.slot)

    def kv_capacity(self) -> int:
        return self.model_config.max_model_len

    def set_lora_adapter_for_cache(
        self, cache_id: str, adapter: ActiveLoraAdapter | None
    ) -> None:
        if adapter is not None:
            raise UnsupportedError("the mlx backend does not support LoRA adapters")

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        return {
            "kv_sequences": len(self._caches),
            "kv_bytes_allocated": self._pool.nbytes(),
            "kv_slots": self._pool.slots,
            "kv_capacity_positions": self._pool.capacity,
        }

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        return None

    def memory_usage_bytes(self) -> tuple[int, int]:
        weights = self.weights.nbytes
        allocated = weights + self._pool.nbytes()
        used = weights + sum(kv.bytes_used() for kv in self._caches.values())
        return allocated, used

    # -- one forward per call ---------------------------------------------------------
    def _streams(self) -> tuple[mx.Stream, ...]:
        """This thread's streams, one per weight shard (MLX streams belong to the thread
        that made them); none with one shard (it runs on the calling stream)."""
        streams: tuple[mx.Stream, ...] | None = getattr(self._local, "streams", None)
        if streams is None:
            streams = tuple(mx.new_stream(self._device) for _ in range(self._shards)
                            ) if self._shards > 1 else ()
            self._local.streams = streams
        return streams

    def _plan(
        self, batch: Sequence[tuple[str, Sequence[int], int, _Want]]
    ) -> list[tuple[str, SequenceKv, int, int]]:
        """Check every item before anything changes; ``(cache_id, kv, start, n)`` each."""
        cfg, limit = self.model_config, self.model_config.max_model_len
        seen: set[str] = set()
        plan = []
        for cache_id, tokens, start, _ in batch:
            if cache_id in seen:
                raise InvalidInputError(f"cache {cache_id!r} appears twice in one batch")
            seen.add(cache_id)
            kv = self._caches.get(cache_id)
            if kv is None:
                kv = SequenceKv(self._pool, -1)  # its slot is taken once every check passed
            if start != kv.length:
                raise InvalidInputError(
                    f"{cache_id!r} holds {kv.length} positions, asked to write at {start}"
                )
            if not tokens:
                raise InvalidInputError(f"no tokens given for {cache_id!r}")
            bad = [t for t in tokens if not 0 <= int(t) < cfg.vocab_size]
            if bad:
                raise InvalidInputError(f"token id {bad[0]} is outside the vocabulary "
                                        f"(0..{cfg.vocab_size - 1})")
            if start + len(tokens) > limit:
                raise CapacityError(
                    f"{cache_id!r}: {start} + {len(tokens)} positions exceed the "
                    f"{limit}-token limit"
                )
            plan.append((cache_id, kv, start, len(tokens)))
        return plan

    def _run(
        self, batch: Sequence[tuple[str, Sequence[int], int, _Want]]
    ) -> list[np.ndarray | None]:
        with self._lock:
            plan = self._plan(batch)
            fresh = [kv for _, kv, _, _ in plan if kv.slot < 0]
            for kv in fresh:
                kv.slot = self._pool.acquire()
            try:
                return self._forward_plan(batch, plan)
            except BaseException:
                for kv in fresh:  # nothing was committed: the new sequences do not exist
                    self._pool.release(kv.slot)
                    kv.slot = -1
                raise

    def _forward_plan(
        self, batch: Sequence[tuple[str, Sequence[int], int, _Want]],
        plan: list[tuple[str, SequenceKv, int, int]],
    ) -> list[np.ndarray | None]:  # fmt: skip
        limit = self.model_config.max_model_len
        self._pool.reserve(max(start + n for _, _, start, n in plan), limit)
        spans, rows, offset = [], [], 0
        for (_, kv, start, n), (_, _, _, want) in zip(plan, batch, strict=True):
            spans.append(Span(kv, start, n, offset))
            if want == "last":
                rows.append(offset + n - 1)
            elif want == "all":
                rows.extend(range(offset, offset + n))
            offset += n
        ids = np.fromiter((int(t) for _, tokens, _, _ in batch for t in tokens), np.int32)
        positions = np.concatenate([np.arange(s, s + n, dtype=np.int32) for _, _, s, n in plan])
        with mx.stream(self._device):
            streams = self._streams()
            hidden = self._forward.hidden(mx.array(ids), mx.array(positions), spans, streams)
            if rows != list(range(offset)):
                hidden = hidden[mx.array(np.asarray(rows, np.int32))]
            logits = self._forward.logits(hidden, streams) if rows else None
            mx.eval(*([logits] if logits is not None else []),
                    *self._pool.arrays())
        table = np.asarray(logits) if logits is not None else None
        for cache_id, kv, start, n in plan:
            kv.length = start + n
            self._caches[cache_id] = kv
        out: list[np.ndarray | None] = []
        index = 0
        for (_, _, _, n), (_, _, _, want) in zip(plan, batch, strict=True):
            if want == "none" or table is None:
                out.append(None)
                continue
            take = 1 if want == "last" else n
            block = table[index:index + take]
            out.append(np.array(block[0] if want == "last" else block, np.float32))
            index += take
        return out
