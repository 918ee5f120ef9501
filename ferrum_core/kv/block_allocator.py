"""Refcounted fixed-size KV blocks: a free list plus an LRU of evictable cached blocks.

A block whose refcount drops to zero goes back to the free list, unless the
prefix cache still maps a hash to it: then it stays *evictable* (its KV is
kept for a later hit) and is reclaimed, least recently released first, only
when the free list runs dry. Evictable blocks count as free.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from ferrum_core.errors import KvPoolExhaustedError
from ferrum_core.kv.prefix_cache import PrefixCache

__all__ = ["BlockAllocator"]


class BlockAllocator:
    """Refcounted physical blocks: free list, shared blocks, and evictable cached ones."""

    def __init__(self, num_blocks: int, prefix_cache: PrefixCache | None = None) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._prefix_cache = prefix_cache
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._refcount = [0] * num_blocks

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take: never used, released, or evictable."""
        return len(self._free) + len(self._evictable)

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    def refcount(self, block: int) -> int:
        return self._refcount[block]

    def is_evictable(self, block: int) -> bool:
        return block in self._evictable

    def allocate(self, count: int) -> list[int]:
        """Take ``count`` blocks (refcount 1 each), evicting cached ones if needed."""
        if count > self.num_free:
            raise KvPoolExhaustedError(
                f"KV pool exhausted: need {count} blocks, {self.num_free} of {self.num_blocks} free"
            )
        blocks: list[int] = []
        for _ in range(count):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._evictable.popitem(last=False)
                if self._prefix_cache is not None:
                    self._prefix_cache.remove_block(block)
            self._refcount[block] = 1
            blocks.append(block)
        return blocks

    def incref(self, block: int) -> None:
        if self._refcount[block] == 0:
            if block not in self._evictable:
                raise ValueError(f"block {block} is free; only cached blocks can be revived")
            del self._evictable[block]
        self._refcount[block] += 1

    def decref(self, block: int, *, keep_cached: bool = True) -> None:
        """Drop one reference; at zero the block becomes evictable (if cached) or free."""
        count = self._refcount[block]
        if count <= 0:
            raise ValueError(f"block {block} is not allocated")
        self._refcount[block] = count - 1
        if count > 1:
            return
        cache = self._prefix_cache
        if keep_cached and cache is not None and cache.contains_block(block):
            self._evictable[block] = None
        else:
            if cache is not None:
                cache.remove_block(block)
            self._free.append(block)

    def uncache(self, block: int) -> None:
        """Remove ``block`` from the prefix cache; an evictable one becomes plainly free."""
        if self._prefix_cache is not None:
            self._prefix_cache.remove_block(block)
        if block in self._evictable:
            del self._evictable[block]
            self._free.append(block)
