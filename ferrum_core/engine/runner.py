"""Drive one executor through the protocol: unified batches, or prefill + batch_decode.

The path is chosen by what the executor does, never by its name: the first
``UnsupportedError`` from ``new_cache``/``unified_decode`` switches to the
reference's prefill/batch_decode fallback for good. The runner keeps each
sequence's KV handle, keyed by the engine's request id, as the *name* of its
cache only: a sequence's length is owned by the engine's ``Sequence``
(docs/architecture.md, "A sequence's length"), arrives here as ``Work.pos`` or
an explicit argument, and every handle the runner sends is stamped with it.
The runner never reads a length back from a stored handle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ferrum_core.batch_plan import plan_batch
from ferrum_core.engine.work import Work
from ferrum_core.errors import UnsupportedError
from ferrum_core.protocol import (
    DecodeInput,
    KvCacheHandle,
    ModelExecutor,
    PrefillInput,
    UnifiedBatch,
    UnifiedBatchItem,
)
from ferrum_core.tensor import TensorRef, token_ids

__all__ = ["Work", "ExecutorRunner", "as_logits_row"]


def as_logits_row(value: np.ndarray | TensorRef) -> np.ndarray:
    array = value if isinstance(value, np.ndarray) else value.to_numpy()
    row: np.ndarray = np.asarray(array, dtype=np.float32).reshape(-1, array.shape[-1])[-1]
    return row


class ExecutorRunner:
    def __init__(self, executor: ModelExecutor) -> None:
        self.executor = executor
        self.unified: bool | None = None  # unknown until the first batch
        self._handles: dict[str, KvCacheHandle] = {}
        self.calls = {"unified": 0, "prefill": 0, "decode": 0}

    @property
    def live_keys(self) -> list[str]:
        return list(self._handles)

    def cache_id(self, key: str) -> str | None:
        """The executor's cache id for ``key`` (``None``: it holds no KV yet)."""
        handle = self._handles.get(key)
        return None if handle is None else handle.cache_id

    def run(self, works: Sequence[Work]) -> list[np.ndarray | None]:
        """One step's forwards; one logits row per final work, ``None`` for the others."""
        if not works:
            return []
        if self.unified is not False:
            try:
                return self._run_unified(works)
            except UnsupportedError:
                if self.unified:
                    raise
                self.unified = False
        return self._run_fallback(works)

    def _handle_at(self, work: Work, create: bool) -> KvCacheHandle | None:
        """``work.key``'s handle stamped with the owner's length ``work.pos``."""
        handle = self._handles.get(work.key)
        if handle is None and create:
            handle = self.executor.new_cache()
            self._handles[work.key] = handle
        return None if handle is None else handle.with_sequence_length(work.pos)

    def _run_unified(self, works: Sequence[Work]) -> list[np.ndarray | None]:
        items = []
        for work in works:
            handle = self._handle_at(work, create=True)
            assert handle is not None
            items.append(
                UnifiedBatchItem(
                    handle.cache_id, work.tokens, handle, work.pos, work.final, work.metadata
                )
            )
        rows = self.executor.unified_decode(UnifiedBatch(tuple(items)))
        self.unified = True
        self.calls["unified"] += 1
        return [None if row is None else as_logits_row(row) for row in rows]

    def _run_fallback(self, works: Sequence[Work]) -> list[np.ndarray | None]:
        """Several executor calls; when one fails, those before it are undone too, so a
        step either happens completely or leaves the owners' lengths true."""
        results: list[np.ndarray | None] = [None] * len(works)
        plan = plan_batch((len(w.tokens), w.final, w.pos) for w in works)
        done: list[Work] = []
        try:
            for i in plan.prefills:
                work = works[i]
                handle = self._handle_at(work, create=False)
                out = self.executor.prefill(PrefillInput(
                    token_ids(work.tokens), kv_cache=handle, metadata=work.metadata))
                self.calls["prefill"] += 1
                self._handles[work.key] = out.kv_cache
                done.append(work)
                if work.final:
                    results[i] = as_logits_row(out.logits)
            if plan.decodes:
                self._decode_group([works[i] for i in plan.decodes], plan.decodes, results)
        except Exception:
            self._undo(done)
            raise
        return results

    def _decode_group(
        self, works: Sequence[Work], indices: Sequence[int], results: list[np.ndarray | None]
    ) -> None:
        inputs = []
        for work in works:
            handle = self._handle_at(work, create=False)
            assert handle is not None
            inputs.append(DecodeInput(token_ids(work.tokens), handle, metadata=work.metadata))
        self.calls["decode"] += 1
        for i, work, out in zip(indices, works, self.executor.batch_decode(inputs), strict=True):
            self._handles[work.key] = out.kv_cache
            results[i] = as_logits_row(out.logits)

    def _undo(self, done: Sequence[Work]) -> None:
        """Roll the prefills of a failed fallback step back to their owners' lengths
        (best effort: the original error is what the caller sees)."""
        for work in done:
            try:
                if work.pos == 0:
                    self.release(work.key)
                else:
                    self.truncate(work.key, work.end, work.pos)
            except Exception:  # keep the original error
                continue

    def decode_input(
        self, key: str, token: int, pos: int, metadata: Mapping[str, Any]
    ) -> DecodeInput:
        """A one-token input on ``key``'s handle at ``pos`` (for ``forward_verify``)."""
        handle = self._handles[key].with_sequence_length(pos)
        return DecodeInput(token_ids([token]), handle, metadata=metadata)

    def set_handle(self, key: str, handle: KvCacheHandle) -> None:
        """Keep the handle an executor call made outside :meth:`run` returned."""
        self._handles[key] = handle

    def truncate(self, key: str, current: int, length: int, *, rollback: bool = False) -> None:
        """Roll ``key`` back from ``current`` (its owner's length) to ``length`` positions.

        ``rollback`` (after a failed call) asks the executor even when ``current``
        already equals ``length``: a batch that failed half-way may have written KV
        for some items without the owner counting them.
        """
        handle = self._handles.get(key)
        if handle is None or current < length:
            return
        if current > length or rollback:
            self._handles[key] = self.executor.truncate_kv(
                handle.with_sequence_length(current), length
            )

    def release(self, key: str) -> None:
        handle = self._handles.pop(key, None)
        if handle is not None:
            self.executor.release_cache(handle.cache_id)

    def release_all(self) -> None:
        for key in list(self._handles):
            self.release(key)
