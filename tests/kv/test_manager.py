"""KvBlockManager: slots, prefix reuse, copy-on-write, truncate, release, exhaustion."""

from __future__ import annotations

import pytest

from ferrum_core.errors import InvalidInputError, KvPoolExhaustedError, UnknownCacheError
from ferrum_core.kv import AppendRequest, AppendResult, KvBlockManager

BS = 4


def append(mgr: KvBlockManager, seq: str, tokens: list[int], cached: int = 0) -> AppendResult:
    start = mgr.num_tokens(seq) if mgr.has(seq) else 0
    (result,) = mgr.append([AppendRequest(seq, start, tokens, cached)])
    return result


def slot_of(mgr: KvBlockManager, seq: str, pos: int) -> int:
    table = mgr.block_table(seq)
    return table[pos // BS] * BS + pos % BS


def test_slots_follow_the_block_table() -> None:
    mgr = KvBlockManager(8, BS)
    r = append(mgr, "a", list(range(10)))
    assert r.num_cached == 0 and r.copies == ()
    assert len(mgr.block_table("a")) == 3
    assert list(r.slots) == [slot_of(mgr, "a", p) for p in range(10)]
    r2 = append(mgr, "a", [10])
    assert r2.slots == (slot_of(mgr, "a", 10),)
    assert mgr.num_tokens("a") == 11 and mgr.num_free_blocks == 5


def test_append_must_continue_at_current_length() -> None:
    mgr = KvBlockManager(8, BS)
    append(mgr, "a", [1, 2])
    with pytest.raises(InvalidInputError):
        mgr.append([AppendRequest("a", 5, [3])])
    with pytest.raises(InvalidInputError):
        mgr.append([AppendRequest("b", 0, [1]), AppendRequest("b", 0, [1])])


def test_prefix_hit_shares_full_blocks() -> None:
    mgr = KvBlockManager(16, BS)
    prompt = list(range(100, 111))  # 11 tokens: 2 full blocks + 3
    append(mgr, "a", prompt, cached=len(prompt) - 1)
    free_before = mgr.num_free_blocks
    r = append(mgr, "b", prompt, cached=len(prompt) - 1)
    assert r.num_cached == 8
    assert len(r.slots) == 3
    assert mgr.block_table("b")[:2] == mgr.block_table("a")[:2]
    assert mgr.block_table("b")[2] != mgr.block_table("a")[2]
    assert free_before - mgr.num_free_blocks == 1
    m = mgr.metrics()
    assert m["prefix_cache_hits"] == 2
    assert m["prefix_cache_misses"] == 2  # the first sequence looked up 2 blocks and missed


def test_whole_prompt_cached_still_computes_last_block() -> None:
    mgr = KvBlockManager(16, BS)
    prompt = list(range(8))  # exactly 2 blocks
    append(mgr, "a", prompt, cached=len(prompt) - 1)
    r = append(mgr, "b", prompt, cached=len(prompt) - 1)
    assert r.num_cached == 4 and len(r.slots) == 4


def test_divergent_prompt_stops_the_chain() -> None:
    mgr = KvBlockManager(16, BS)
    append(mgr, "a", [1, 2, 3, 4, 5, 6, 7, 8, 9], cached=8)
    r = append(mgr, "b", [1, 2, 3, 4, 0, 6, 7, 8, 9], cached=8)
    assert r.num_cached == 4
    # Same second block content after a different first block is not a hit.
    r = append(mgr, "c", [0, 2, 3, 4, 5, 6, 7, 8, 9], cached=8)
    assert r.num_cached == 0


def test_prefix_caching_disabled() -> None:
    mgr = KvBlockManager(16, BS, enable_prefix_caching=False)
    append(mgr, "a", list(range(9)), cached=8)
    r = append(mgr, "b", list(range(9)), cached=8)
    assert r.num_cached == 0
    assert mgr.metrics()["prefix_cache_hits"] == 0


def test_chunked_prefill_continues_the_chain() -> None:
    mgr = KvBlockManager(16, BS)
    prompt = list(range(50, 62))
    append(mgr, "a", prompt, cached=11)
    append(mgr, "b", prompt[:4], cached=4)  # a non-final chunk may be served entirely
    assert mgr.num_tokens("b") == 4
    r = append(mgr, "b", prompt[4:], cached=7)
    assert r.num_cached == 4
    assert mgr.block_table("b")[:2] == mgr.block_table("a")[:2]


def test_release_keeps_blocks_cached_until_evicted() -> None:
    mgr = KvBlockManager(4, BS)
    start = mgr.num_free_blocks
    append(mgr, "a", list(range(10)), cached=9)
    mgr.release("a")
    assert mgr.num_free_blocks == start
    assert mgr.metrics()["kv_blocks_cached"] == 2
    r = append(mgr, "b", list(range(10)), cached=9)
    assert r.num_cached == 8
    mgr.release("b")
    # Filling the pool evicts the cached blocks.
    append(mgr, "c", list(range(1000, 1016)))
    assert mgr.num_free_blocks == 0 and mgr.metrics()["kv_blocks_evictable"] == 0
    mgr.release("c")
    r = append(mgr, "d", list(range(10)), cached=9)
    assert r.num_cached == 0
    mgr.release("unknown")  # no-op


def test_exhaustion_leaves_everything_intact() -> None:
    mgr = KvBlockManager(4, BS)
    append(mgr, "a", list(range(6)))
    table, free = mgr.block_table("a"), mgr.num_free_blocks
    with pytest.raises(KvPoolExhaustedError):
        mgr.append([AppendRequest("a", 6, [1, 2, 3]), AppendRequest("b", 0, list(range(9)))])
    assert mgr.block_table("a") == table and mgr.num_tokens("a") == 6
    assert not mgr.has("b") and mgr.num_free_blocks == free
    with pytest.raises(KvPoolExhaustedError):
        mgr.append([AppendRequest("z", 0, list(range(17)))])


def test_exhaustion_counts_revived_cached_blocks() -> None:
    mgr = KvBlockManager(3, BS)
    append(mgr, "a", list(range(8)), cached=7)
    mgr.release("a")  # both blocks evictable, 3 "free"
    # Reviving both cached blocks leaves one free block: 13 tokens need two more.
    with pytest.raises(KvPoolExhaustedError):
        append(mgr, "b", list(range(13)), cached=12)
    r = append(mgr, "b", list(range(12)), cached=11)
    assert r.num_cached == 8
    assert mgr.num_free_blocks == 0


def test_truncate_frees_tail_blocks() -> None:
    mgr = KvBlockManager(8, BS)
    append(mgr, "a", list(range(10)))
    mgr.truncate("a", 5)
    assert mgr.num_tokens("a") == 5 and len(mgr.block_table("a")) == 2
    assert mgr.num_free_blocks == 6
    r = append(mgr, "a", [7])
    assert r.slots == (slot_of(mgr, "a", 5),) and r.copies == ()
    mgr.truncate("a", 100)  # longer than the sequence: no-op
    assert mgr.num_tokens("a") == 6
    mgr.truncate("a", 0)
    assert mgr.block_table("a") == () and mgr.num_free_blocks == 8
    with pytest.raises(UnknownCacheError):
        mgr.truncate("nope", 0)


def test_copy_on_write_after_truncating_into_a_shared_block() -> None:
    mgr = KvBlockManager(8, BS)
    prompt = list(range(9))
    append(mgr, "a", prompt, cached=8)
    append(mgr, "b", prompt, cached=8)
    shared = mgr.block_table("b")[1]
    assert mgr.block_table("a")[1] == shared
    mgr.truncate("b", 6)  # position 6 lives in the shared block
    assert mgr.block_table("b")[1] == shared
    r = append(mgr, "b", [99])
    assert r.copies == ((shared, mgr.block_table("b")[1]),)
    assert mgr.block_table("b")[1] != shared
    assert mgr.block_table("a")[1] == shared
    assert r.slots == (slot_of(mgr, "b", 6),)
    # The shared block is still cached with its original content.
    r = append(mgr, "c", prompt, cached=8)
    assert mgr.block_table("c")[:2] == mgr.block_table("a")[:2]


def test_truncate_into_own_cached_block_uncaches_it() -> None:
    mgr = KvBlockManager(8, BS)
    prompt = list(range(8))
    append(mgr, "a", [*prompt, 8], cached=8)
    mgr.truncate("a", 6)
    r = append(mgr, "a", [42, 43])
    assert r.copies == ()  # sole owner writes in place ...
    r = append(mgr, "b", [*prompt, 8], cached=8)
    assert r.num_cached == 4  # ... and its old content is no longer advertised


def test_release_returns_the_pool() -> None:
    mgr = KvBlockManager(8, BS)
    start = mgr.num_free_blocks
    append(mgr, "a", list(range(9)), cached=8)
    append(mgr, "b", list(range(9)), cached=8)
    append(mgr, "b", [1, 2, 3, 4, 5])
    mgr.release("a")
    mgr.release("b")
    assert mgr.num_free_blocks == start
    assert mgr.metrics()["kv_sequences"] == 0


def test_blocks_needed_matches_consumption() -> None:
    mgr = KvBlockManager(16, BS)
    append(mgr, "a", list(range(9)), cached=8)
    reqs = [AppendRequest("a", 9, [1, 2, 3, 4]), AppendRequest("b", 0, list(range(9)), 8)]
    need = mgr.blocks_needed(reqs)
    free = mgr.num_free_blocks
    mgr.append(reqs)
    assert free - mgr.num_free_blocks == need


def test_cache_salt_separates_prefixes() -> None:
    mgr = KvBlockManager(16, BS)
    tokens = list(range(9))
    mgr.append([AppendRequest("a", 0, tokens, 8)])
    (r,) = mgr.append([AppendRequest("b", 0, tokens, 8, cache_salt="adapter-x")])
    assert r.num_cached == 0
    (r,) = mgr.append([AppendRequest("c", 0, tokens, 8, cache_salt="adapter-x")])
    assert r.num_cached == 8
    assert mgr.block_table("c")[:2] == mgr.block_table("b")[:2]
    (r,) = mgr.append([AppendRequest("d", 0, tokens, 8)])
    assert mgr.block_table("d")[:2] == mgr.block_table("a")[:2]


def test_pool_state_is_the_metrics_pool_keys_as_one_value() -> None:
    from ferrum_core.kv import POOL_METRIC_KEYS, AppendRequest, KvBlockManager, KvPoolState

    manager = KvBlockManager(6, 4)
    manager.append([AppendRequest("a", 0, list(range(9)))])
    state = manager.pool_state()
    assert state == KvPoolState(blocks_total=6, blocks_free=3, block_size=4)
    metrics = manager.metrics()
    assert {k: metrics[k] for k in POOL_METRIC_KEYS} == state.metrics()
    assert KvPoolState.from_snapshot({**metrics, "unrelated": "x"}) == state
    assert KvPoolState.from_snapshot(None) is None
    assert KvPoolState.from_snapshot({"kv_blocks_total": 6, "kv_blocks_free": 3}) is None
    assert KvPoolState.from_snapshot({**metrics, "block_size": 0}) is None
