"""The one rule that splits a batch into prefill chunks and one decode group.

Both places that run a batch without a ragged forward use it: the engine's
runner when the executor has no ``unified_decode`` (``prefill`` per chunk, one
``batch_decode``), and ``LlmExecutor``'s fallback when the model has no
``unified_forward`` (``prefill`` per chunk, one ``decode_batch``). An item joins
the decode group when it is exactly one token, its logits are sampled, and it
continues a sequence that already holds positions; everything else, a
one-token prompt included, is a prefill.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["BatchPlan", "plan_batch"]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Indices into the batch, each in batch order."""

    prefills: tuple[int, ...]
    decodes: tuple[int, ...]


def plan_batch(items: Iterable[tuple[int, bool, int]]) -> BatchPlan:
    """``items``: ``(number of tokens, is final chunk, start position)`` per item."""
    prefills: list[int] = []
    decodes: list[int] = []
    for index, (num_tokens, final, start) in enumerate(items):
        (decodes if num_tokens == 1 and final and start > 0 else prefills).append(index)
    return BatchPlan(tuple(prefills), tuple(decodes))
