"""Guarded access to a backend's model: one lock, cache bookkeeping, validation, roll-back.

`LlmExecutor` translates protocol records into `UnifiedItem`s; this module
makes sure a batch either happens completely or leaves no trace: inputs are
validated before the model sees them (token range, capacity, batch size),
handles are re-checked under the lock, and on failure fresh caches are
released and existing ones rolled back to where they started.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferrum_core.errors import BackendError, CapacityError, InvalidInputError
from ferrum_core.llm.cache_table import CacheTable
from ferrum_core.llm.decoder import DecoderOnlyLLM, UnifiedItem
from ferrum_core.llm.dispatch import run_items
from ferrum_core.llm.metadata import active_lora_from_metadata, requires_full_logits
from ferrum_core.llm.stats import ExecutorStats
from ferrum_core.protocol.io import Metadata

__all__ = ["ModelSession", "StepTimes", "sampled_row"]


@dataclass(slots=True)
class StepTimes:
    """Seconds one :meth:`ModelSession.execute` spent waiting for the model lock and
    inside the model (filled only when the caller profiles)."""

    lock_acq: float = 0.0
    model_call: float = 0.0


class ModelSession:
    def __init__(self, model: DecoderOnlyLLM, owner: int) -> None:
        self.model = model
        self.cfg = model.config
        self.lock = threading.Lock()
        self.caches = CacheTable(self.cfg, owner=owner)
        self.stats = ExecutorStats()

    def kv_capacity(self) -> int:
        return min(self.cfg.max_seq_len, self.model.kv_capacity())

    @contextmanager
    def locked(self) -> Iterator[DecoderOnlyLLM]:
        start = time.perf_counter()
        with self.lock:
            self.stats.record_lock_wait(time.perf_counter() - start)
            yield self.model

    def check_tokens(self, tokens: Sequence[int], start: int) -> None:
        if not tokens:
            raise InvalidInputError("empty token list")
        vocab = self.cfg.vocab_size
        bad = [t for t in tokens if not 0 <= t < vocab]
        if bad:
            raise InvalidInputError(f"token id {bad[0]} out of vocabulary (size {vocab})")
        capacity = self.kv_capacity()
        if start + len(tokens) > capacity:
            raise CapacityError(
                f"sequence would reach {start + len(tokens)} tokens; capacity is {capacity}"
            )

    def check_batch(self, size: int) -> None:
        if size > self.cfg.max_batch_size:
            raise CapacityError(
                f"batch of {size} exceeds max_batch_size {self.cfg.max_batch_size}"
            )

    def set_lora(self, model: DecoderOnlyLLM, cache_id: str, metadata: Metadata) -> None:
        model.set_lora_adapter_for_cache(cache_id, active_lora_from_metadata(metadata))

    def execute(
        self, items: list[UnifiedItem], metadata: Sequence[Metadata], fresh: Sequence[str],
        times: StepTimes | None = None,
    ) -> tuple[list[np.ndarray | None], bool]:
        """Validate, forward and commit lengths (``times``: where the time went).

        On failure nothing stays half-done: fresh ids are released and existing
        caches are rolled back to where they started.
        """
        ids = [it.cache_id for it in items]
        if len(set(ids)) != len(ids):
            raise InvalidInputError("a cache id appears twice in one batch")
        self.check_batch(len(items))
        for it in items:
            self.check_tokens(it.tokens, it.pos_offset)
        full = any(requires_full_logits(m) for m in metadata)
        t_lock = time.perf_counter() if times is not None else 0.0
        with self.locked() as model:
            if times is not None:
                t_model = time.perf_counter()
                times.lock_acq = t_model - t_lock
            for it in items:  # a release or another call may have raced us to the lock
                self.caches.recheck(it.cache_id, it.pos_offset)
            try:
                for it, meta in zip(items, metadata, strict=True):
                    self.set_lora(model, it.cache_id, meta)
                out, native = run_items(model, items, full)
            except BaseException:
                self.roll_back(model, items, fresh)
                raise
            if times is not None:
                times.model_call = time.perf_counter() - t_model
            for it in items:
                self.caches.set_length(it.cache_id, it.pos_offset + len(it.tokens))
        return out, native

    def cache_metrics(self) -> dict[str, Any]:
        """The model's pool figures plus the executor's: live caches, unified calls by
        path, and the model lock's waits."""
        with self.locked() as model:
            snapshot = dict(model.cache_metrics_snapshot() or {})
            snapshot["live_caches"] = len(self.caches)
        snapshot["unified_native_calls"] = self.stats.unified_native_calls
        snapshot["unified_fallback_calls"] = self.stats.unified_fallback_calls
        snapshot["executor_model_lock"] = self.stats.lock_snapshot()
        return snapshot

    def verify(
        self, cache_id: str, tokens: list[int], start: int, metadata: Metadata
    ) -> np.ndarray:
        """``forward_verify``: one forward over ``tokens`` from ``start``; the
        ``[len(tokens), vocab]`` float32 logits (rolled back on failure)."""
        self.check_tokens(tokens, start)
        vocab = self.cfg.vocab_size
        with self.locked() as model:
            self.caches.recheck(cache_id, start)
            try:
                self.set_lora(model, cache_id, metadata)
                flat = np.asarray(model.forward_verify(cache_id, tokens, start), np.float32)
                if flat.shape != (len(tokens), vocab):
                    raise BackendError(
                        f"forward_verify returned shape {flat.shape};"
                        f" expected {(len(tokens), vocab)}"
                    )
            except BaseException:
                self.roll_back(model, [UnifiedItem(cache_id, tokens, start, True)], ())
                raise
            self.caches.set_length(cache_id, start + len(tokens))
        return flat

    def truncate(self, cache_id: str, new_len: int, expected: int | None) -> None:
        """Roll ``cache_id`` back to ``new_len`` positions; ``expected``: the length the
        caller's handle says (re-checked under the lock), None to trust the table."""
        with self.locked() as model:
            length = self.caches.length(cache_id)
            if expected is not None:
                self.caches.recheck(cache_id, expected)
            if not 0 <= new_len <= length:
                raise InvalidInputError(
                    f"cannot truncate {cache_id!r} of length {length} to {new_len}"
                )
            model.truncate_kv(cache_id, new_len)
            self.caches.set_length(cache_id, new_len)

    def roll_back(
        self, model: DecoderOnlyLLM, items: Sequence[UnifiedItem], fresh: Sequence[str]
    ) -> None:
        for it in items:
            try:
                if it.cache_id in fresh:
                    model.release(it.cache_id)
                    self.caches.forget(it.cache_id)
                else:
                    model.truncate_kv(it.cache_id, it.pos_offset)
            except Exception:  # keep the original error; this is best-effort cleanup
                continue


def sampled_row(row: np.ndarray | None) -> np.ndarray:
    """A sampling item's logits row (``run_items`` guarantees one; keep the type honest)."""
    if row is None:
        raise BackendError("no logits for an item that samples")
    return row
