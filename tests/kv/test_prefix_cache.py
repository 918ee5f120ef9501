"""PrefixCache: the hash chain and collision safety."""

from __future__ import annotations

from ferrum_core.kv import ROOT_HASH, PrefixCache, chain_hash


def test_chain_hash_depends_on_parent_and_tokens() -> None:
    h1 = chain_hash(ROOT_HASH, [1, 2])
    assert h1 == chain_hash(ROOT_HASH, (1, 2))
    assert h1 != chain_hash(ROOT_HASH, [2, 1])
    assert chain_hash(h1, [3, 4]) != chain_hash(ROOT_HASH, [3, 4])


def test_insert_lookup_remove() -> None:
    cache = PrefixCache()
    h = chain_hash(ROOT_HASH, [5, 6])
    assert cache.insert(3, h, ROOT_HASH, [5, 6])
    assert cache.lookup(h, ROOT_HASH, [5, 6]) == 3
    # The same hash cannot be registered twice, nor the same block under two hashes.
    assert not cache.insert(4, h, ROOT_HASH, [5, 6])
    assert not cache.insert(3, chain_hash(ROOT_HASH, [7]), ROOT_HASH, [7])
    cache.remove_block(3)
    assert cache.lookup(h, ROOT_HASH, [5, 6]) is None
    assert len(cache) == 0


def test_hash_collision_reads_as_miss() -> None:
    cache = PrefixCache()
    cache.insert(1, 42, ROOT_HASH, [1, 2])
    assert cache.lookup(42, ROOT_HASH, [9, 9]) is None
    assert cache.lookup(42, 17, [1, 2]) is None
    assert cache.lookup(42, ROOT_HASH, [1, 2]) == 1


def test_scheduler_and_block_manager_share_one_hash_chain() -> None:
    from ferrum_core.engine.sequence import prefix_block_hashes
    from ferrum_core.kv import AppendRequest, KvBlockManager

    tokens = list(range(10, 20))
    for salt in (None, "adapter-a"):
        manager = KvBlockManager(8, 4)
        manager.append([AppendRequest("a", 0, tokens, cache_salt=salt)])
        plan = manager.plan(AppendRequest("b", 0, tokens, len(tokens) - 1, cache_salt=salt))
        engine_side = prefix_block_hashes(tuple(tokens), 4, salt)
        assert [h for _, h in plan.matched] == list(engine_side) and len(engine_side) == 2
    other = prefix_block_hashes(tuple(tokens), 4, "adapter-b")
    assert set(other).isdisjoint(prefix_block_hashes(tuple(tokens), 4, "adapter-a"))
