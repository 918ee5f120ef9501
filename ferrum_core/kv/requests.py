"""What a backend asks of :class:`~ferrum_core.kv.manager.KvBlockManager` and what it gets back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["AppendRequest", "AppendPlan", "AppendResult"]


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """Append ``tokens`` at ``start_pos`` (the sequence's current length).

    Up to ``max_cached_tokens`` leading tokens may be served by the prefix cache;
    pass ``len(tokens) - 1`` when the last position's logits are needed, 0 to
    compute everything. ``cache_salt`` separates prefixes whose KV differs for the
    same tokens (e.g. a LoRA adapter's name); it is read when a sequence starts.
    """

    seq_id: str
    start_pos: int
    tokens: Sequence[int]
    max_cached_tokens: int = 0
    cache_salt: str | None = None


@dataclass(frozen=True, slots=True)
class AppendPlan:
    """What :meth:`KvBlockManager.append` would do for one request; computed without mutating."""

    request: AppendRequest
    is_new: bool
    matched: tuple[tuple[int, int], ...]  # (block, chain hash) reused from the prefix cache
    cow_block: int | None  # shared block to copy before the first write
    new_blocks: int
    lookups: int  # full blocks looked up in the prefix cache

    @property
    def blocks_needed(self) -> int:
        return self.new_blocks + (self.cow_block is not None)


@dataclass(frozen=True, slots=True)
class AppendResult:
    seq_id: str
    num_cached: int  # leading tokens already in KV: do not compute them
    slots: tuple[int, ...]  # one physical slot per computed token, in order
    copies: tuple[tuple[int, int], ...]  # (src_block, dst_block), to copy before writing
    block_table: tuple[int, ...]
