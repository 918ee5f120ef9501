"""Small helpers the checks use to drive an executor through the public protocol only."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ferrum_core.errors import FerrumError
from ferrum_core.protocol import (
    DecodeInput,
    KvCacheHandle,
    ModelExecutor,
    PrefillInput,
    UnifiedBatch,
    UnifiedBatchItem,
)
from ferrum_core.tensor import HostTensor, TensorRef, token_ids

__all__ = ["Driver", "ids", "logits_rows", "prompt", "snapshot"]


def ids(tokens: Sequence[int]) -> HostTensor:
    """Token ids as the ``[1, seq]`` int64 tensor the protocol expects."""
    return token_ids(tokens)


def prompt(seed: int, length: int, vocab: int) -> list[int]:
    """A deterministic pseudo-random prompt (ids in ``[0, vocab)``)."""
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(0, vocab, size=length)]


def logits_rows(value: TensorRef | np.ndarray) -> np.ndarray:
    """Logits as a float32 ``[rows, vocab]`` array, whatever batch axes surround them."""
    array = value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 0:
        raise AssertionError("logits are a scalar")
    return array.reshape(-1, array.shape[-1])


def snapshot(executor: ModelExecutor) -> dict[str, Any]:
    return dict(executor.cache_metrics_snapshot() or {})


class Driver:
    """Runs prefill / decode calls and releases every sequence it opened at the end."""

    def __init__(self, executor: ModelExecutor) -> None:
        self.executor = executor
        self.vocab = executor.info().vocab_size
        self._opened: dict[str, None] = {}

    def track(self, handle: KvCacheHandle) -> KvCacheHandle:
        self._opened[handle.cache_id] = None
        return handle

    def prefill(
        self,
        tokens: Sequence[int],
        handle: KvCacheHandle | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[np.ndarray, KvCacheHandle]:
        """Prefill (or continue) a sequence; return the last-position logits row and handle."""
        inp = PrefillInput(ids(tokens), kv_cache=handle)
        if metadata:
            inp = inp.with_metadata(metadata)
        out = self.executor.prefill(inp)
        self.track(out.kv_cache)
        return logits_rows(out.logits)[-1], out.kv_cache

    def decode(
        self, token: int, handle: KvCacheHandle, metadata: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, KvCacheHandle]:
        inp = DecodeInput(ids([token]), handle)
        if metadata:
            inp = inp.with_metadata(metadata)
        out = self.executor.decode(inp)
        rows = logits_rows(out.logits)
        if rows.shape[0] != 1:
            raise AssertionError(f"decode returned {rows.shape[0]} logits rows for one token")
        return rows[0], self.track(out.kv_cache)

    def run(self, tokens: Sequence[int], steps: Sequence[int]) -> list[np.ndarray]:
        """Serial reference: prefill ``tokens`` on a fresh sequence, then decode ``steps``."""
        row, handle = self.prefill(tokens)
        rows = [row]
        for token in steps:
            row, handle = self.decode(token, handle)
            rows.append(row)
        self.release(handle)
        return rows

    def new_cache(self) -> KvCacheHandle:
        return self.track(self.executor.new_cache())

    def unified(
        self, items: Sequence[tuple[KvCacheHandle, Sequence[int], bool]]
    ) -> list[np.ndarray | None]:
        """One ``unified_decode`` over ``(handle, q_tokens, is_final_chunk)`` items."""
        batch = UnifiedBatch(
            tuple(
                UnifiedBatchItem(
                    seq_id=handle.cache_id,
                    q_tokens=tuple(tokens),
                    kv_cache=handle,
                    pos_offset=handle.sequence_length,
                    is_final_chunk=final,
                )
                for handle, tokens, final in items
            )
        )
        out = self.executor.unified_decode(batch)
        if len(out) != len(items):
            raise AssertionError(f"unified_decode returned {len(out)} entries for {len(items)}")
        rows: list[np.ndarray | None] = []
        for (_, _, final), entry in zip(items, out, strict=True):
            if entry is None:
                if final:
                    raise AssertionError("unified_decode returned None for a final chunk")
                rows.append(None)
                continue
            if not final:
                raise AssertionError("unified_decode returned logits for a non-final chunk")
            row = logits_rows(entry)
            if row.shape[0] != 1:
                raise AssertionError(f"unified_decode row has shape {list(row.shape)}")
            rows.append(row[0])
        return rows

    def release(self, handle_or_id: KvCacheHandle | str) -> None:
        cache_id = handle_or_id if isinstance(handle_or_id, str) else handle_or_id.cache_id
        self.executor.release_cache(cache_id)
        self._opened.pop(cache_id, None)

    def close(self) -> None:
        for cache_id in list(self._opened):
            with contextlib.suppress(FerrumError):
                self.executor.release_cache(cache_id)
        self._opened.clear()

