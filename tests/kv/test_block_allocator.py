"""BlockAllocator: free list, refcounts, evictable cached blocks."""

from __future__ import annotations

import pytest

from ferrum_core.errors import KvPoolExhaustedError
from ferrum_core.kv import BlockAllocator, PrefixCache, chain_hash


def test_allocate_and_free_round_trip() -> None:
    alloc = BlockAllocator(4)
    blocks = alloc.allocate(3)
    assert len(set(blocks)) == 3
    assert alloc.num_free == 1
    assert all(alloc.refcount(b) == 1 for b in blocks)
    for b in blocks:
        alloc.decref(b)
    assert alloc.num_free == 4


def test_exhaustion_raises_before_taking_anything() -> None:
    alloc = BlockAllocator(2)
    alloc.allocate(1)
    with pytest.raises(KvPoolExhaustedError):
        alloc.allocate(2)
    assert alloc.num_free == 1


def test_refcount_keeps_shared_block_alive() -> None:
    alloc = BlockAllocator(2)
    (b,) = alloc.allocate(1)
    alloc.incref(b)
    alloc.decref(b)
    assert alloc.refcount(b) == 1
    assert alloc.num_free == 1
    alloc.decref(b)
    assert alloc.num_free == 2
    with pytest.raises(ValueError):
        alloc.decref(b)


def test_cached_block_is_evictable_then_evicted_lru() -> None:
    cache = PrefixCache()
    alloc = BlockAllocator(2, cache)
    a, b = alloc.allocate(2)
    cache.insert(a, chain_hash(0, [1]), 0, [1])
    cache.insert(b, chain_hash(0, [2]), 0, [2])
    alloc.decref(b)
    alloc.decref(a)
    assert alloc.num_free == 2 and alloc.num_evictable == 2
    # b was released first, so it is evicted first.
    (first,) = alloc.allocate(1)
    assert first == b
    assert not cache.contains_block(b) and cache.contains_block(a)
    # A cached, evictable block can be revived by a hit.
    alloc.incref(a)
    assert alloc.refcount(a) == 1 and alloc.num_free == 0


def test_incref_of_free_block_is_an_error() -> None:
    alloc = BlockAllocator(1)
    with pytest.raises(ValueError):
        alloc.incref(0)


def test_uncache_turns_evictable_into_free() -> None:
    cache = PrefixCache()
    alloc = BlockAllocator(1, cache)
    (a,) = alloc.allocate(1)
    cache.insert(a, 7, 0, [1])
    alloc.decref(a)
    assert alloc.is_evictable(a)
    alloc.uncache(a)
    assert not alloc.is_evictable(a) and alloc.num_free == 1 and len(cache) == 0
