"""`LlmExecutor`: every executor semantic, over a backend's `DecoderOnlyLLM` math.

Port of ferrum-infer-rs' `llm_executor.rs`. The model sits behind one lock;
the executor issues cache ids (``llm-cache-N``), validates inputs before the
model sees them (token range, capacity, unknown or released caches, stale
handles), tries the model's ragged ``unified_forward`` first and falls back on
``UnsupportedError``, and keeps the counters the conformance suite checks.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from ferrum_core.errors import (
    BackendError,
    CapacityError,
    ExecutorStateError,
    FerrumError,
    InvalidInputError,
    UnknownCacheError,
    UnsupportedError,
)
from ferrum_core.llm.decoder import DecodeItem, DecoderOnlyLLM, UnifiedItem
from ferrum_core.llm.describe import capabilities_for, model_info_for
from ferrum_core.llm.handle import LlmKvCacheHandle
from ferrum_core.llm.metadata import ProfileFlags, active_lora_from_metadata, requires_full_logits
from ferrum_core.llm.stats import ExecutorStats
from ferrum_core.protocol.capabilities import (
    ExecutorCapabilities,
    ExecutorMemoryUsage,
    ExecutorMetrics,
    ExecutorState,
    ExecutorStatus,
)
from ferrum_core.protocol.executor import ModelExecutor, UnifiedLogits
from ferrum_core.protocol.io import (
    DecodeInput,
    DecodeOutput,
    KvCacheHandle,
    Metadata,
    PrefillInput,
    PrefillOutput,
    UnifiedBatch,
)
from ferrum_core.tensor import HostTensor, tensor_to_tokens
from ferrum_core.types import ModelInfo

__all__ = ["LlmExecutor"]

T = TypeVar("T")


class LlmExecutor(ModelExecutor):
    """Adapts a :class:`DecoderOnlyLLM` to the :class:`ModelExecutor` protocol."""

    def __init__(
        self, model: DecoderOnlyLLM, *, model_id: str = "model", model_type: str = "llama"
    ) -> None:
        self._model = model
        self._cfg = model.config
        self._info = model_info_for(self._cfg, model_id=model_id, model_type=model_type)
        self._model_lock = threading.Lock()
        self._ids = itertools.count()
        self._lengths: dict[str, int] = {}  # live cache id -> positions written
        self._stats = ExecutorStats()
        self._profile = ProfileFlags.from_env()
        self._state = ExecutorState.READY

    # -- plumbing -------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[DecoderOnlyLLM]:
        start = time.perf_counter()
        with self._model_lock:
            self._stats.record_lock_wait(time.perf_counter() - start)
            yield self._model

    def _run(self, kind: str, batch: int, tokens: int, body: Callable[[], T]) -> T:
        if self._state == ExecutorState.SHUTDOWN:
            raise ExecutorStateError("executor is shut down")
        start = self._stats.begin(batch)
        ok = False
        try:
            result = body()
            ok = True
            return result
        except FerrumError:
            raise
        except Exception as exc:  # a backend bug must not escape as a bare traceback
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._stats.end(start, kind=kind, tokens=tokens, ok=ok)

    def _handle(self, cache_id: str, length: int) -> LlmKvCacheHandle:
        cfg = self._cfg
        return LlmKvCacheHandle(
            cache_id=cache_id,
            sequence_length=length,
            num_layers=cfg.num_layers,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            device=cfg.device,
            bytes_per_element=max(1, int(cfg.dtype.bytes_per_element)),
            owner=id(self),
        )

    def _resolve(self, handle: KvCacheHandle) -> tuple[str, int]:
        """The cache id and current length behind a handle this executor issued."""
        if not isinstance(handle, LlmKvCacheHandle) or handle.owner != id(self):
            raise UnknownCacheError("KV cache handle was not issued by this executor")
        live = self._lengths.get(handle.cache_id)
        if live is None:
            raise UnknownCacheError(f"unknown or released KV cache id {handle.cache_id!r}")
        if handle.sequence_length != live:
            raise InvalidInputError(
                f"stale KV handle for {handle.cache_id!r}: it says {handle.sequence_length}"
                f" positions, the cache holds {live} (use the handle the last call returned)"
            )
        return handle.cache_id, live

    def _check_tokens(self, tokens: Sequence[int], start: int) -> None:
        if not tokens:
            raise InvalidInputError("empty token list")
        vocab = self._cfg.vocab_size
        bad = [t for t in tokens if not 0 <= t < vocab]
        if bad:
            raise InvalidInputError(f"token id {bad[0]} out of vocabulary (size {vocab})")
        capacity = self.kv_capacity()
        if start + len(tokens) > capacity:
            raise CapacityError(
                f"sequence would reach {start + len(tokens)} tokens; capacity is {capacity}"
            )

    def _check_batch(self, size: int) -> None:
        if size > self._cfg.max_batch_size:
            raise CapacityError(
                f"batch of {size} exceeds max_batch_size {self._cfg.max_batch_size}"
            )

    def _set_lora(self, model: DecoderOnlyLLM, cache_id: str, metadata: Metadata) -> None:
        model.set_lora_adapter_for_cache(cache_id, active_lora_from_metadata(metadata))

    def _forward(
        self, model: DecoderOnlyLLM, items: Sequence[UnifiedItem], full: bool
    ) -> tuple[list[np.ndarray | None], bool]:
        """Run items through the ragged path when possible; return (logits, native)."""
        if model.native_unified and not full:
            try:
                out = model.unified_forward(items)
            except UnsupportedError:
                pass
            else:
                if len(out) != len(items):
                    raise BackendError(
                        f"unified_forward returned {len(out)} entries for {len(items)} items"
                    )
                return [None if o is None else _row(o) for o in out], True
        results: list[np.ndarray | None] = [None] * len(items)
        decodes = [i for i, it in enumerate(items) if len(it.tokens) == 1 and it.is_final_chunk]
        for i, it in enumerate(items):
            if i not in decodes:
                logits = model.prefill(it.cache_id, it.tokens, it.pos_offset)
                results[i] = _row(logits) if it.is_final_chunk else None
        if decodes:
            batch = [DecodeItem(items[i].cache_id, items[i].tokens[0], items[i].pos_offset)
                     for i in decodes]
            for i, logits in zip(decodes, model.decode_batch(batch, full), strict=True):
                results[i] = _row(logits)
        return results, False

    def _execute(
        self, items: list[UnifiedItem], metadata: Sequence[Metadata], fresh: Sequence[str]
    ) -> tuple[list[np.ndarray | None], bool]:
        """Validate, forward and commit lengths; on failure forget freshly created ids."""
        ids = [it.cache_id for it in items]
        if len(set(ids)) != len(ids):
            raise InvalidInputError("a cache id appears twice in one batch")
        self._check_batch(len(items))
        for it in items:
            self._check_tokens(it.tokens, it.pos_offset)
        full = any(requires_full_logits(m) for m in metadata)
        with self._locked() as model:
            try:
                for it, meta in zip(items, metadata, strict=True):
                    self._set_lora(model, it.cache_id, meta)
                out, native = self._forward(model, items, full)
            except BaseException:
                for cache_id in fresh:
                    model.release(cache_id)
                    self._lengths.pop(cache_id, None)
                raise
            for it in items:
                self._lengths[it.cache_id] = it.pos_offset + len(it.tokens)
        return out, native

    def _new_id(self) -> str:
        cache_id = f"llm-cache-{next(self._ids)}"
        self._lengths[cache_id] = 0
        return cache_id

    # -- protocol -------------------------------------------------------------------
    def info(self) -> ModelInfo:
        return self._info

    def supports_native_unified_decode(self) -> bool:
        return bool(self._model.native_unified)

    def kv_capacity(self) -> int:
        return min(self._cfg.max_seq_len, self._model.kv_capacity())

    def new_cache(self) -> LlmKvCacheHandle:
        if self._state == ExecutorState.SHUTDOWN:
            raise ExecutorStateError("executor is shut down")
        with self._model_lock:
            return self._handle(self._new_id(), 0)

    def prefill(self, input: PrefillInput) -> PrefillOutput:
        return self.batch_prefill([input])[0]

    def batch_prefill(self, inputs: Sequence[PrefillInput]) -> list[PrefillOutput]:
        if not inputs:
            return []

        def body() -> list[PrefillOutput]:
            parsed = []
            for inp in inputs:
                if inp.batch_size != 1:
                    raise InvalidInputError(
                        f"prefill takes one sequence per input, got batch {inp.batch_size}"
                    )
                start = None if inp.kv_cache is None else self._resolve(inp.kv_cache)
                parsed.append((start, tensor_to_tokens(inp.input_ids)))
            items, fresh = [], []
            with self._model_lock:
                for start, tokens in parsed:
                    if start is None:
                        fresh.append(self._new_id())
                        start = (fresh[-1], 0)
                    items.append(UnifiedItem(start[0], tokens, start[1], True))
            t0 = time.perf_counter()
            try:
                logits, native = self._execute(items, [i.metadata for i in inputs], fresh)
            except BaseException:
                with self._model_lock:
                    for cache_id in fresh:
                        self._lengths.pop(cache_id, None)
                raise
            if self._profile.batch_prefill:
                self._profile.emit(
                    f"[batch-prefill] n_items={len(items)}"
                    f" total_q={sum(len(i.tokens) for i in items)} fallback={not native}"
                    f" elapsed={(time.perf_counter() - t0) * 1e6:.0f}us"
                )
            return [
                PrefillOutput(
                    HostTensor(_row(row)[None, None, :]),
                    self._handle(it.cache_id, it.pos_offset + len(it.tokens)),
                )
                for it, row in zip(items, logits, strict=True)
            ]

        total = sum(inp.sequence_length for inp in inputs)
        return self._run("prefill", len(inputs), total, body)

    def decode(self, input: DecodeInput) -> DecodeOutput:
        return self.batch_decode([input])[0]

    def batch_decode(self, inputs: Sequence[DecodeInput]) -> list[DecodeOutput]:
        if not inputs:
            return []

        def body() -> list[DecodeOutput]:
            items = []
            for inp in inputs:
                cache_id, start = self._resolve(inp.kv_cache)
                tokens = tensor_to_tokens(inp.input_ids)
                if len(tokens) != 1:
                    raise InvalidInputError(f"decode takes one token, got {len(tokens)}")
                items.append(UnifiedItem(cache_id, tokens, start, True))
            t0 = time.perf_counter()
            logits, native = self._execute(items, [i.metadata for i in inputs], ())
            if self._profile.batch_decode:
                self._profile.emit(
                    f"[exec-batch-decode-prof] m={len(items)} fallback={not native}"
                    f" total={(time.perf_counter() - t0) * 1e6:.0f}us"
                )
            return [
                DecodeOutput(
                    HostTensor(_row(row)[None, :]), self._handle(it.cache_id, it.pos_offset + 1)
                )
                for it, row in zip(items, logits, strict=True)
            ]

        return self._run("decode", len(inputs), len(inputs), body)

    def unified_decode(self, batch: UnifiedBatch) -> UnifiedLogits:
        if not batch.items:
            return []

        def body() -> UnifiedLogits:
            items = []
            for it in batch.items:
                cache_id, start = self._resolve(it.kv_cache)
                if it.seq_id != cache_id:
                    raise InvalidInputError(
                        f"seq_id {it.seq_id!r} does not match its KV handle {cache_id!r}"
                    )
                if it.pos_offset != start:
                    raise InvalidInputError(
                        f"pos_offset {it.pos_offset} for {cache_id!r} but the cache holds {start}"
                    )
                items.append(UnifiedItem(cache_id, list(it.q_tokens), start, it.is_final_chunk))
            logits, native = self._execute(items, [it.metadata for it in batch.items], ())
            self._stats.record_unified(native)
            return logits

        kind = "prefill" if any(len(it.q_tokens) > 1 for it in batch.items) else "decode"
        return self._run(kind, len(batch.items), batch.total_q_tokens, body)

    def forward_verify(self, inputs: Sequence[DecodeInput]) -> list[DecodeOutput]:
        if not inputs:
            return []

        def body() -> list[DecodeOutput]:
            cache_id, start = self._resolve(inputs[0].kv_cache)
            tokens: list[int] = []
            for inp in inputs:
                toks = tensor_to_tokens(inp.input_ids)
                if len(toks) != 1:
                    raise InvalidInputError("forward_verify takes one token per input")
                tokens.extend(toks)
            self._check_tokens(tokens, start)
            with self._locked() as model:
                self._set_lora(model, cache_id, inputs[0].metadata)
                flat = np.asarray(model.forward_verify(cache_id, tokens, start), np.float32)
                self._lengths[cache_id] = start + len(tokens)
            if flat.shape != (len(tokens), self._cfg.vocab_size):
                raise BackendError(f"forward_verify returned shape {flat.shape}")
            return [
                DecodeOutput(HostTensor(flat[i][None, :]), self._handle(cache_id, start + i + 1))
                for i in range(len(tokens))
            ]

        return self._run("decode", 1, len(inputs), body)

    def truncate_kv(self, kv_cache: KvCacheHandle, new_len: int) -> LlmKvCacheHandle:
        if self._state == ExecutorState.SHUTDOWN:
            raise ExecutorStateError("executor is shut down")
        cache_id, length = self._resolve(kv_cache)
        if not 0 <= new_len <= length:
            raise InvalidInputError(f"cannot truncate {cache_id!r} of length {length} to {new_len}")
        with self._locked() as model:
            model.truncate_kv(cache_id, new_len)
            self._lengths[cache_id] = new_len
        return self._handle(cache_id, new_len)

    def release_cache(self, cache_id: str) -> None:
        with self._locked() as model:
            if self._lengths.pop(cache_id, None) is not None:
                model.release(cache_id)

    def live_caches(self) -> list[str]:
        with self._model_lock:
            return list(self._lengths)

    def capabilities(self) -> ExecutorCapabilities:
        native = self.supports_native_unified_decode()
        return capabilities_for(self._cfg, self.kv_capacity(), native)

    def status(self) -> ExecutorStatus:
        allocated, used = self._model.memory_usage_bytes()
        avg_prefill, avg_decode = self._stats.averages()
        state = self._state
        if state == ExecutorState.READY and self._stats.in_flight > 0:
            state = ExecutorState.BUSY
        return ExecutorStatus(
            state=state,
            is_ready=state in (ExecutorState.READY, ExecutorState.BUSY),
            current_batch_size=self._stats.current_batch_size,
            prefill_operations=self._stats.prefill_operations,
            decode_operations=self._stats.decode_operations,
            avg_prefill_time_ms=avg_prefill,
            avg_decode_time_ms=avg_decode,
            memory_usage=ExecutorMemoryUsage(
                allocated_bytes=allocated,
                used_bytes=used,
                peak_bytes=max(allocated, used),
                utilization_percent=100.0 * used / allocated if allocated else 0.0,
            ),
            last_operation_unix_s=self._stats.last_operation_unix_s,
        )

    def metrics(self) -> ExecutorMetrics:
        allocated, used = self._model.memory_usage_bytes()
        return self._stats.metrics(used / allocated if allocated else 0.0)

    def cache_metrics_snapshot(self) -> dict[str, Any]:
        with self._locked() as model:
            snapshot = dict(model.cache_metrics_snapshot() or {})
            snapshot["live_caches"] = len(self._lengths)
        snapshot["unified_native_calls"] = self._stats.unified_native_calls
        snapshot["unified_fallback_calls"] = self._stats.unified_fallback_calls
        snapshot["executor_model_lock"] = self._stats.lock_snapshot()
        return snapshot

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        with self._locked() as model:
            return model.lora_metrics_snapshot()

    def shutdown(self) -> None:
        with self._locked() as model:
            for cache_id in list(self._lengths):
                model.release(cache_id)
            self._lengths.clear()
            self._state = ExecutorState.SHUTDOWN


def _row(logits: Any) -> np.ndarray:
    """A 1-D float32 logits row (backends may hand back 2-D ``[1, vocab]``)."""
    return np.asarray(logits, dtype=np.float32).reshape(-1)
