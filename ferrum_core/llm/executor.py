"""`LlmExecutor`: every executor semantic, over a backend's `DecoderOnlyLLM` math.

Port of ferrum-infer-rs' `llm_executor.rs`. The model sits behind one lock;
the executor issues cache ids (``llm-cache-N``), validates inputs before the
model sees them (token range, capacity, unknown or released caches, stale
handles), tries the model's ragged ``unified_forward`` first and falls back on
``UnsupportedError``, and keeps the counters the conformance suite checks.
Its place in a request's path: docs/architecture.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from ferrum_core.errors import (
    BackendError,
    ExecutorStateError,
    FerrumError,
    InvalidInputError,
)
from ferrum_core.llm.decoder import DecoderOnlyLLM, UnifiedItem
from ferrum_core.llm.describe import capabilities_for, model_info_for
from ferrum_core.llm.handle import LlmKvCacheHandle
from ferrum_core.llm.metadata import ProfileFlags
from ferrum_core.llm.profile import DecodeProfiler, report_prefill
from ferrum_core.llm.session import ModelSession, StepTimes, sampled_row
from ferrum_core.protocol.capabilities import (
    ExecutorCapabilities,
    ExecutorMetrics,
    ExecutorState,
    ExecutorStatus,
)
from ferrum_core.protocol.executor import BatchModelExecutor, UnifiedLogits
from ferrum_core.protocol.io import (
    DecodeInput,
    DecodeOutput,
    KvCacheHandle,
    PrefillInput,
    PrefillOutput,
    UnifiedBatch,
)
from ferrum_core.tensor import HostTensor, tensor_to_tokens
from ferrum_core.types import ModelInfo

__all__ = ["LlmExecutor"]

T = TypeVar("T")


class LlmExecutor(BatchModelExecutor):
    """Adapts a :class:`DecoderOnlyLLM` to the :class:`ModelExecutor` protocol.

    It is a :class:`BatchModelExecutor`: ``batch_prefill`` and ``batch_decode``
    take the model lock once and make one model call for the whole batch.
    """

    def __init__(
        self, model: DecoderOnlyLLM, *, model_id: str = "model", model_type: str = "llama",
        declared: ExecutorCapabilities | None = None,
    ) -> None:
        """``declared``: the backend's registered (static) capabilities, which the
        instance's are derived from (see :func:`~ferrum_core.llm.describe.capabilities_for`)."""
        self._model, self._declared = model, declared
        self._cfg = model.config
        self._info = model_info_for(self._cfg, model_id=model_id, model_type=model_type)
        self._session = ModelSession(model, owner=id(self))
        self._model_lock, self._caches = self._session.lock, self._session.caches
        self._stats = self._session.stats
        self._profile, self._state = ProfileFlags.from_env(), ExecutorState.READY
        self._decode_prof = DecodeProfiler() if self._profile.batch_decode else None

    # -- plumbing -------------------------------------------------------------------
    def _check_live(self) -> None:
        if self._state == ExecutorState.SHUTDOWN:
            raise ExecutorStateError("executor is shut down")

    def _run(self, kind: str, batch: int, tokens: int, body: Callable[[], T]) -> T:
        self._check_live()
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

    # -- protocol -------------------------------------------------------------------
    def info(self) -> ModelInfo:
        return self._info

    def supports_native_unified_decode(self) -> bool:
        return bool(self._model.native_unified)

    def kv_capacity(self) -> int:
        return self._session.kv_capacity()

    def optimal_batch_size(self) -> int:  # one model call per batch: fuller is cheaper
        return self._cfg.max_batch_size

    def supports_batch_size(self, batch_size: int) -> bool:
        return 1 <= batch_size <= self._cfg.max_batch_size

    def new_cache(self) -> LlmKvCacheHandle:
        self._check_live()
        with self._model_lock:
            return self._caches.handle(self._caches.new_id(), 0)

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
                start = None if inp.kv_cache is None else self._caches.resolve(inp.kv_cache)
                parsed.append((start, tensor_to_tokens(inp.input_ids)))
            items, fresh = [], []
            with self._model_lock:
                for start, tokens in parsed:
                    if start is None:
                        fresh.append(self._caches.new_id())
                        start = (fresh[-1], 0)
                    items.append(UnifiedItem(start[0], tokens, start[1], True))
            t0 = time.perf_counter()
            try:
                logits, native = self._session.execute(items, [i.metadata for i in inputs], fresh)
            except BaseException:
                with self._model_lock:
                    for cache_id in fresh:
                        self._caches.forget(cache_id)
                raise
            if self._profile.batch_prefill:
                report_prefill(items, native, t0)
            return [
                PrefillOutput(
                    HostTensor(sampled_row(row)[None, None, :]),
                    self._caches.handle(it.cache_id, it.pos_offset + len(it.tokens)),
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
            prof = self._decode_prof
            t0 = time.perf_counter() if prof is not None else 0.0
            items = []
            for inp in inputs:
                cache_id, start = self._caches.resolve(inp.kv_cache)
                tokens = tensor_to_tokens(inp.input_ids)
                if len(tokens) != 1:
                    raise InvalidInputError(f"decode takes one token, got {len(tokens)}")
                items.append(UnifiedItem(cache_id, tokens, start, True))
            if prof is None:
                logits, _ = self._session.execute(items, [i.metadata for i in inputs], ())
                return self._decode_outputs(items, logits)
            times = StepTimes()
            t_prep = time.perf_counter()
            logits, _ = self._session.execute(items, [i.metadata for i in inputs], (), times)
            t_model = time.perf_counter()
            outputs = self._decode_outputs(items, logits)
            prof.report(len(items), t0, t_prep, t_model, times)
            return outputs

        return self._run("decode", len(inputs), len(inputs), body)

    def _decode_outputs(
        self, items: Sequence[UnifiedItem], logits: Sequence[np.ndarray | None]
    ) -> list[DecodeOutput]:
        return [
            DecodeOutput(
                HostTensor(sampled_row(row)[None, :]),
                self._caches.handle(it.cache_id, it.pos_offset + 1),
            )
            for it, row in zip(items, logits, strict=True)
        ]

    def unified_decode(self, batch: UnifiedBatch) -> UnifiedLogits:
        if not batch.items:
            return []

        def body() -> UnifiedLogits:
            items = []
            for it in batch.items:
                cache_id, start = self._caches.resolve(it.kv_cache)
                if it.seq_id != cache_id:
                    raise InvalidInputError(
                        f"seq_id {it.seq_id!r} does not match its KV handle {cache_id!r}"
                    )
                if it.pos_offset != start:
                    raise InvalidInputError(
                        f"pos_offset {it.pos_offset} for {cache_id!r} but the cache holds {start}"
                    )
                items.append(UnifiedItem(cache_id, list(it.q_tokens), start, it.is_final_chunk))
            logits, native = self._session.execute(items, [it.metadata for it in batch.items], ())
            self._stats.record_unified(native)
            return logits

        kind = "prefill" if any(len(it.q_tokens) > 1 for it in batch.items) else "decode"
        return self._run(kind, len(batch.items), batch.total_q_tokens, body)

    def forward_verify(self, inputs: Sequence[DecodeInput]) -> list[DecodeOutput]:
        if not inputs:
            return []

        def body() -> list[DecodeOutput]:
            cache_id, start = self._caches.resolve(inputs[0].kv_cache)
            tokens: list[int] = []
            for inp in inputs:
                toks = tensor_to_tokens(inp.input_ids)
                if len(toks) != 1:
                    raise InvalidInputError("forward_verify takes one token per input")
                tokens.extend(toks)
            flat = self._session.verify(cache_id, tokens, start, inputs[0].metadata)
            return [
                DecodeOutput(
                    HostTensor(flat[i][None, :]), self._caches.handle(cache_id, start + i + 1)
                )
                for i in range(len(tokens))
            ]

        return self._run("decode", 1, len(inputs), body)

    def truncate_kv(self, kv_cache: KvCacheHandle, new_len: int) -> LlmKvCacheHandle:
        self._check_live()
        cache_id, length = self._caches.resolve(kv_cache)
        self._session.truncate(cache_id, new_len, length)
        return self._caches.handle(cache_id, new_len)

    def truncate_kv_for_cache_id(self, cache_id: str, new_len: int) -> None:
        """Roll ``cache_id``'s KV back to ``new_len`` positions (the reference's
        speculative rollback by id). Handles of it issued before are stale afterwards;
        continue with ``truncate_kv``'s, or one of length ``new_len``."""
        self._check_live()
        self._session.truncate(cache_id, new_len, None)

    def release_cache(self, cache_id: str) -> None:
        with self._session.locked() as model:
            if self._caches.forget(cache_id):
                model.release(cache_id)

    def cache_length(self, cache_id: str) -> int:
        """Positions ``cache_id`` holds, the record every handle is checked against."""
        with self._model_lock:
            return self._caches.length(cache_id)

    def live_caches(self) -> list[str]:
        with self._model_lock:
            return self._caches.ids()

    def capabilities(self) -> ExecutorCapabilities:
        native = self.supports_native_unified_decode()
        return capabilities_for(self._cfg, self.kv_capacity(), native, self._info.model_type,
                                declared=self._declared)

    def status(self) -> ExecutorStatus:
        return self._stats.status(self._state, *self._model.memory_usage_bytes())

    def metrics(self) -> ExecutorMetrics:
        allocated, used = self._model.memory_usage_bytes()
        return self._stats.metrics(used / allocated if allocated else 0.0)

    def cache_metrics_snapshot(self) -> dict[str, Any]:
        return self._session.cache_metrics()

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        with self._session.locked() as model:
            return model.lora_metrics_snapshot()

    def shutdown(self) -> None:
        with self._session.locked() as model:
            for cache_id in self._caches.ids():
                model.release(cache_id)
                self._caches.forget(cache_id)
            self._state = ExecutorState.SHUTDOWN
