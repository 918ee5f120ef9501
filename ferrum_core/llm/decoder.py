"""`DecoderOnlyLLM`: the model-math contract a backend implements.

The core's :class:`~ferrum_core.llm.executor.LlmExecutor` wraps one of these and
supplies every executor semantic (cache ids, validation, unified fallback,
metrics). A backend only does the math and owns its KV tensors, keyed by
``cache_id``:

* PyTorch keeps a paged pool and follows the block tables of
  :mod:`ferrum_core.kv`;
* ONNX Runtime keeps pre-allocated per-sequence buffers for a static graph;
* MLX keeps lazy arrays per sequence.

All logits cross this boundary as host ``numpy.float32`` arrays over the full
vocabulary. Positions are absolute; ``start_pos`` / ``pos`` always equal the
number of positions the model already holds for that cache id (the executor
guarantees it), so a model may assert it.

Error contract: raise :class:`~ferrum_core.errors.UnsupportedError` for
operations it lacks (``unified_forward``, LoRA),
:class:`~ferrum_core.errors.KvPoolExhaustedError` when it cannot allocate KV —
*before* mutating any state, so that other sequences and the failing one are
left intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ferrum_core.protocol.capabilities import AttentionType
from ferrum_core.types import DataType

__all__ = [
    "LlmRuntimeConfig",
    "ActiveLoraAdapter",
    "UnifiedItem",
    "DecodeItem",
    "DecoderOnlyLLM",
]


@dataclass(frozen=True, slots=True)
class LlmRuntimeConfig:
    """What the executor needs to know of the model and how the backend runs it."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int
    intermediate_size: int = 0
    num_parameters: int = 0
    dtype: DataType = DataType.FP32
    device: str = "cpu"
    max_batch_size: int = 256
    sliding_window: int | None = None
    supported_dtypes: tuple[DataType, ...] = (DataType.FP32,)
    attention_mechanisms: tuple[AttentionType, ...] = (AttentionType.GROUPED_QUERY,)
    paged_kv: bool = False
    prefix_caching: bool = False
    supports_lora: bool = False
    max_chunk_tokens: int | None = None  # static graphs: longest prefill call the model takes
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ActiveLoraAdapter:
    """A PEFT adapter selected for a sequence through request metadata."""

    name: str
    path: Path


class UnifiedItem(NamedTuple):
    """One ragged-batch entry: ``(cache_id, tokens, pos_offset, is_final_chunk)``."""

    cache_id: str
    tokens: Sequence[int]
    pos_offset: int
    is_final_chunk: bool


class DecodeItem(NamedTuple):
    """One decode step: ``(cache_id, token, pos)``."""

    cache_id: str
    token: int
    pos: int


@runtime_checkable
class DecoderOnlyLLM(Protocol):
    """Model math over per-sequence KV state keyed by ``cache_id``."""

    @property
    def config(self) -> LlmRuntimeConfig: ...

    @property
    def native_unified(self) -> bool:
        """True when :meth:`unified_forward` runs one ragged forward for the batch."""
        ...

    def prefill(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        """Append ``tokens`` at ``start_pos``; return last-position logits ``[vocab]``.

        ``start_pos == 0`` with an id the model has never seen starts a new
        sequence (prefill is the only call that does). At most
        ``config.max_chunk_tokens`` tokens when that is set.
        """
        ...

    def decode(self, cache_id: str, token: int, pos: int) -> np.ndarray:
        """Append one token at ``pos > 0`` of an existing sequence; return logits ``[vocab]``."""
        ...

    def decode_batch(
        self, items: Sequence[DecodeItem], force_full_logits: bool
    ) -> list[np.ndarray]:
        """One decode step for several sequences; one logits row per item."""
        ...

    def unified_forward(self, items: Sequence[UnifiedItem]) -> list[np.ndarray | None]:
        """One forward over a ragged mix of prefill chunks and decode tokens.

        Returns, per item, last-position logits when ``is_final_chunk`` else
        ``None``. Raises ``UnsupportedError`` when the model has no such path.
        """
        ...

    def forward_verify(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        """Append ``tokens`` in one forward; return logits for every position ``[n, vocab]``."""
        ...

    def truncate_kv(self, cache_id: str, new_len: int) -> None:
        """Forget positions ``>= new_len`` of that sequence (freeing whole blocks)."""
        ...

    def release(self, cache_id: str) -> None:
        """Drop every bit of state held for ``cache_id``; unknown ids are ignored."""
        ...

    def kv_capacity(self) -> int:
        """Most tokens one sequence can hold."""
        ...

    def set_lora_adapter_for_cache(
        self, cache_id: str, adapter: ActiveLoraAdapter | None
    ) -> None:
        """Select (or clear) the adapter used for ``cache_id``'s next forwards."""
        ...

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        """Pool accounting (the keys of :data:`~ferrum_core.kv.POOL_METRIC_KEYS`) or ``None``."""
        ...

    def lora_metrics_snapshot(self) -> dict[str, Any] | None: ...

    def memory_usage_bytes(self) -> tuple[int, int]:
        """``(allocated, used)`` bytes of weights plus KV."""
        ...
