"""How one validated batch reaches the model: the ragged path, or the reference's fallback.

Routing rules the `DecoderOnlyLLM` contract relies on:

* ``unified_forward`` is called only when the model says ``native_unified``
  and no item needs full logits; ``UnsupportedError`` from it falls back;
* in the fallback, :func:`~ferrum_core.batch_plan.plan_batch` splits the
  batch: ``prefill`` starts every new cache (even a one-token prompt) and
  continues chunks; ``decode`` / ``decode_batch`` only ever extend a cache
  that already holds positions (``pos > 0``);
* a model with ``max_chunk_tokens`` never sees a longer ``prefill`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ferrum_core.batch_plan import plan_batch
from ferrum_core.errors import BackendError, UnsupportedError
from ferrum_core.llm.decoder import DecodeItem, DecoderOnlyLLM, UnifiedItem

__all__ = ["logits_row", "run_items"]


def logits_row(logits: Any, vocab_size: int, what: str) -> np.ndarray:
    """A 1-D float32 row over the vocabulary, or a BackendError naming the culprit."""
    if logits is None:
        raise BackendError(f"{what} returned no logits for an item that samples")
    row = np.asarray(logits, dtype=np.float32).reshape(-1)
    if row.shape[0] != vocab_size:
        raise BackendError(f"{what} returned {row.shape[0]} logits; vocabulary is {vocab_size}")
    return row


def run_items(
    model: DecoderOnlyLLM, items: Sequence[UnifiedItem], full_logits: bool
) -> tuple[list[np.ndarray | None], bool]:
    """Run ``items`` through the model; return per-item logits and whether it was native."""
    vocab = model.config.vocab_size
    if model.native_unified and not full_logits:
        try:
            out = model.unified_forward(items)
        except UnsupportedError:
            pass
        else:
            if len(out) != len(items):
                raise BackendError(
                    f"unified_forward returned {len(out)} entries for {len(items)} items"
                )
            return [
                logits_row(o, vocab, "unified_forward") if it.is_final_chunk else None
                for it, o in zip(items, out, strict=True)
            ], True
    return _fallback(model, items, full_logits, vocab), False


def _fallback(
    model: DecoderOnlyLLM, items: Sequence[UnifiedItem], full_logits: bool, vocab: int
) -> list[np.ndarray | None]:
    results: list[np.ndarray | None] = [None] * len(items)
    plan = plan_batch((len(it.tokens), it.is_final_chunk, it.pos_offset) for it in items)
    decodes = plan.decodes
    chunk = model.config.max_chunk_tokens
    for i in plan.prefills:
        it = items[i]
        tokens = list(it.tokens)
        step = chunk or len(tokens)
        logits: Any = None
        for start in range(0, len(tokens), step):
            logits = model.prefill(it.cache_id, tokens[start : start + step], it.pos_offset + start)
        results[i] = logits_row(logits, vocab, "prefill") if it.is_final_chunk else None
    if len(decodes) == 1:
        it = items[decodes[0]]
        results[decodes[0]] = logits_row(
            model.decode(it.cache_id, it.tokens[0], it.pos_offset), vocab, "decode"
        )
    elif decodes:
        batch = [DecodeItem(items[i].cache_id, items[i].tokens[0], items[i].pos_offset)
                 for i in decodes]
        rows = model.decode_batch(batch, full_logits)
        if len(rows) != len(batch):
            raise BackendError(f"decode_batch returned {len(rows)} rows for {len(batch)} items")
        for i, row in zip(decodes, rows, strict=True):
            results[i] = logits_row(row, vocab, "decode_batch")
    return results
