"""Paged KV: prefix cache, copy-on-write, truncate, release, exhaustion, rollback."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from torch_tiny import TinyModel, prompt

from ferrum_core.errors import InvalidInputError, KvPoolExhaustedError
from ferrum_core.llm.decoder import UnifiedItem

ATOL = 1e-4
BS = 4


def free(llm) -> int:  # type: ignore[no-untyped-def]
    return int(llm.cache_metrics_snapshot()["kv_blocks_free"])


def test_prefix_hit_same_logits_fewer_blocks(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("llama_gqa")
    llm = model.build(block_size=BS)
    shared = prompt(12, seed=1)
    first, second = [*shared, 5, 6], [*shared, 7, 8, 9]
    llm.prefill("a", first, 0)
    before, hits = free(llm), llm.cache_metrics_snapshot()["prefix_cache_hits"]
    got = llm.prefill("b", second, 0)
    np.testing.assert_allclose(got, model.logits(second).numpy()[-1], atol=ATOL, rtol=0)
    assert llm.cache_metrics_snapshot()["prefix_cache_hits"] - hits == 3
    assert before - free(llm) == 1  # 15 tokens = 4 blocks, 3 of them shared
    # Decoding after a hit reads the shared blocks correctly.
    got = llm.decode("b", 10, 15)
    np.testing.assert_allclose(got, model.logits([*second, 10]).numpy()[-1], atol=ATOL, rtol=0)
    got = llm.decode("a", 11, 14)
    np.testing.assert_allclose(got, model.logits([*first, 11]).numpy()[-1], atol=ATOL, rtol=0)


def test_fully_cached_prompt_recomputes_its_last_token(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("qwen3")
    llm = model.build(block_size=BS)
    tokens = prompt(12, seed=2)
    llm.prefill("a", tokens, 0)
    got = llm.prefill("b", tokens, 0)
    np.testing.assert_allclose(got, model.logits(tokens).numpy()[-1], atol=ATOL, rtol=0)
    assert llm.cache_metrics_snapshot()["prefix_cache_hits"] == 2


def test_released_prefix_stays_cached(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("qwen2")
    llm = model.build(block_size=BS)
    start = free(llm)
    tokens = prompt(10, seed=3)
    llm.prefill("a", tokens, 0)
    llm.release("a")
    assert free(llm) == start
    got = llm.prefill("b", tokens, 0)
    assert llm.cache_metrics_snapshot()["prefix_cache_hits"] == 2
    np.testing.assert_allclose(got, model.logits(tokens).numpy()[-1], atol=ATOL, rtol=0)


def test_prefix_caching_can_be_disabled(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("qwen2")
    llm = model.build(block_size=BS, enable_prefix_caching=False)
    tokens = prompt(10, seed=3)
    llm.prefill("a", tokens, 0)
    before = free(llm)
    llm.prefill("b", tokens, 0)
    assert before - free(llm) == 3
    assert llm.cache_metrics_snapshot()["prefix_cache_hits"] == 0
    assert not llm.config.prefix_caching


def test_copy_on_write_keeps_the_other_sequence_intact(
    tiny: Callable[[str], TinyModel],
) -> None:
    model = tiny("llama_mqa_bias")
    llm = model.build(block_size=BS)
    tokens = prompt(13, seed=4)
    llm.prefill("a", tokens, 0)
    llm.prefill("b", tokens, 0)  # shares blocks 0-2 with "a"
    llm.truncate_kv("b", 6)  # position 6 lies in shared block 1
    got = llm.decode("b", 99, 6)
    np.testing.assert_allclose(got, model.logits([*tokens[:6], 99]).numpy()[-1], atol=ATOL, rtol=0)
    got = llm.decode("a", 98, 13)
    np.testing.assert_allclose(got, model.logits([*tokens, 98]).numpy()[-1], atol=ATOL, rtol=0)


def test_truncate_then_decode_equals_fresh_run(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("llama_gqa")
    llm = model.build(block_size=BS)
    tokens = prompt(10, seed=5)
    llm.prefill("s", tokens, 0)
    for pos, tok in enumerate((20, 21, 22, 23, 24), start=10):
        llm.decode("s", tok, pos)
    before = free(llm)
    llm.truncate_kv("s", 7)
    assert free(llm) - before == 2  # 15 tokens (4 blocks) -> 7 tokens (2 blocks)
    got = llm.decode("s", 30, 7)
    np.testing.assert_allclose(got, model.logits([*tokens[:7], 30]).numpy()[-1], atol=ATOL, rtol=0)
    # Speculative pattern: verify draft tokens, then roll back the rejected ones.
    llm.forward_verify("s", [31, 32, 33], 8)
    llm.truncate_kv("s", 9)
    got = llm.decode("s", 40, 9)
    want = model.logits([*tokens[:7], 30, 31, 40]).numpy()[-1]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_release_returns_every_block(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("mistral_window")
    llm = model.build(block_size=BS)
    start = free(llm)
    shared = prompt(9, seed=6)
    llm.prefill("a", shared, 0)
    llm.prefill("b", [*shared, 1, 2, 3], 0)
    llm.decode("b", 4, 12)
    llm.release("a")
    llm.release("b")
    llm.release("never-seen")
    assert free(llm) == start
    assert llm.cache_metrics_snapshot()["kv_sequences"] == 0
    allocated, used = llm.memory_usage_bytes()
    assert used < allocated


def test_exhaustion_raises_before_mutating(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("qwen2")
    llm = model.build(block_size=BS, num_blocks=6)
    assert llm.kv_capacity() == 24
    a = prompt(10, seed=7)
    llm.prefill("a", a, 0)  # 3 blocks
    before = free(llm)
    with pytest.raises(KvPoolExhaustedError):
        llm.prefill("b", prompt(16, seed=8), 0)
    with pytest.raises(KvPoolExhaustedError):  # a batch fails as a whole
        llm.unified_forward(
            [UnifiedItem("a", [5], 10, True), UnifiedItem("c", prompt(13, seed=9), 0, True)]
        )
    assert free(llm) == before
    assert llm.cache_metrics_snapshot()["kv_sequences"] == 1
    got = llm.decode("a", 5, 10)
    np.testing.assert_allclose(got, model.logits([*a, 5]).numpy()[-1], atol=ATOL, rtol=0)


def test_failed_forward_rolls_back(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("qwen2")
    llm = model.build(block_size=BS)
    a = prompt(6, seed=9)
    llm.prefill("a", a, 0)
    before = free(llm)
    bad = model.config.vocab_size + 3  # out of range: the embedding lookup fails
    with pytest.raises(IndexError):
        llm.unified_forward([UnifiedItem("a", [bad], 6, True), UnifiedItem("x", [1, bad], 0, True)])
    assert free(llm) == before
    got = llm.decode("a", 5, 6)
    np.testing.assert_allclose(got, model.logits([*a, 5]).numpy()[-1], atol=ATOL, rtol=0)
    # A failed prompt leaves nothing in the prefix cache.
    cached = llm.cache_metrics_snapshot()["kv_blocks_cached"]
    with pytest.raises(IndexError):
        llm.prefill("y", [*prompt(8, seed=10), bad], 0)
    assert llm.cache_metrics_snapshot()["kv_blocks_cached"] == cached


def test_positions_must_continue_the_sequence(tiny: Callable[[str], TinyModel]) -> None:
    llm = tiny("qwen2").build(block_size=BS)
    llm.prefill("a", [5, 6, 7], 0)
    with pytest.raises(InvalidInputError):
        llm.decode("a", 8, 5)
    with pytest.raises(InvalidInputError):
        llm.decode("unknown", 8, 2)
