"""Hot-path records of the executor protocol: frozen, slotted dataclasses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ferrum_core.errors import InvalidInputError
from ferrum_core.tensor import HostTensor, TensorRef

__all__ = [
    "Metadata",
    "KvCacheHandle",
    "PrefillInput",
    "PrefillOutput",
    "DecodeInput",
    "DecodeOutput",
    "UnifiedBatchItem",
    "UnifiedBatch",
]

Metadata = Mapping[str, Any]
_EMPTY: Metadata = MappingProxyType({})


@runtime_checkable
class KvCacheHandle(Protocol):
    """A sequence's KV state as the executor that owns it describes it.

    The tensors stay inside the backend; the handle carries the id, the number of
    positions written, and layout facts. Handles are immutable: an operation that
    extends the cache returns a new handle.
    """

    @property
    def cache_id(self) -> str: ...

    @property
    def sequence_length(self) -> int: ...

    @property
    def block_table(self) -> tuple[int, ...] | None: ...

    @property
    def num_layers(self) -> int: ...

    @property
    def num_kv_heads(self) -> int: ...

    @property
    def head_dim(self) -> int: ...

    @property
    def device(self) -> str: ...

    def memory_bytes(self) -> int: ...

    def with_sequence_length(self, length: int) -> KvCacheHandle: ...


@dataclass(frozen=True, slots=True)
class PrefillInput:
    """Prompt (or prompt chunk) tokens, shape ``[batch, seq]``."""

    input_ids: TensorRef
    attention_mask: TensorRef | None = None
    position_ids: TensorRef | None = None
    kv_cache: KvCacheHandle | None = None
    metadata: Metadata = field(default_factory=lambda: _EMPTY)

    def with_kv_cache(self, kv_cache: KvCacheHandle) -> PrefillInput:
        return replace(self, kv_cache=kv_cache)

    def with_metadata(self, metadata: Metadata) -> PrefillInput:
        return replace(self, metadata=MappingProxyType(dict(metadata)))

    def with_attention_mask(self, mask: TensorRef) -> PrefillInput:
        return replace(self, attention_mask=mask)

    def with_position_ids(self, positions: TensorRef) -> PrefillInput:
        return replace(self, position_ids=positions)

    @property
    def batch_size(self) -> int:
        shape = self.input_ids.shape
        return int(shape[0]) if len(shape) >= 2 else 1

    @property
    def sequence_length(self) -> int:
        shape = self.input_ids.shape
        if len(shape) >= 2:
            return int(shape[1])
        return int(shape[0]) if shape else 1


@dataclass(frozen=True, slots=True)
class PrefillOutput:
    """Logits ``[batch, seq, vocab]`` (seq may be 1: last position only) and the handle."""

    logits: TensorRef
    kv_cache: KvCacheHandle
    hidden_states: Sequence[TensorRef] | None = None
    attention_weights: Sequence[TensorRef] | None = None

    def last_token_logits(self) -> TensorRef:
        """Logits at the last position, shape ``[batch, vocab]``."""
        shape = self.logits.shape
        if len(shape) != 3:
            raise InvalidInputError(
                f"expected 3-D logits [batch, seq, vocab], got shape {list(shape)}"
            )
        if shape[1] == 0:
            raise InvalidInputError("empty sequence: no last-token logits")
        array = np.asarray(self.logits.to_numpy())
        return HostTensor(np.ascontiguousarray(array[:, -1, :]))


@dataclass(frozen=True, slots=True)
class DecodeInput:
    """One new token per sequence, shape ``[batch, 1]`` (or ``[1]``)."""

    input_ids: TensorRef
    kv_cache: KvCacheHandle
    position_ids: TensorRef | None = None
    metadata: Metadata = field(default_factory=lambda: _EMPTY)

    def with_position_ids(self, positions: TensorRef) -> DecodeInput:
        return replace(self, position_ids=positions)

    def with_metadata(self, metadata: Metadata) -> DecodeInput:
        return replace(self, metadata=MappingProxyType(dict(metadata)))

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0]) if self.input_ids.shape else 1


@dataclass(frozen=True, slots=True)
class DecodeOutput:
    """Next-token logits ``[batch, vocab]`` and the extended handle."""

    logits: TensorRef
    kv_cache: KvCacheHandle
    hidden_state: TensorRef | None = None
    attention_weights: Sequence[TensorRef] | None = None


@dataclass(frozen=True, slots=True)
class UnifiedBatchItem:
    """One sequence's share of a mixed prefill/decode forward.

    ``pos_offset`` is the absolute position of ``q_tokens[0]`` (0 for a fresh
    prefill, the cache length for decode or a continuing chunk). Only items with
    ``is_final_chunk`` produce logits.
    """

    seq_id: str
    q_tokens: tuple[int, ...]
    kv_cache: KvCacheHandle
    pos_offset: int
    is_final_chunk: bool
    metadata: Metadata = field(default_factory=lambda: _EMPTY)

    def __repr__(self) -> str:
        return (
            f"UnifiedBatchItem(seq_id={self.seq_id!r}, q_len={len(self.q_tokens)}, "
            f"pos_offset={self.pos_offset}, is_final_chunk={self.is_final_chunk})"
        )


@dataclass(frozen=True, slots=True)
class UnifiedBatch:
    items: tuple[UnifiedBatchItem, ...] = ()

    @property
    def total_q_tokens(self) -> int:
        return sum(len(item.q_tokens) for item in self.items)

    @property
    def num_sampled_items(self) -> int:
        return sum(1 for item in self.items if item.is_final_chunk)
