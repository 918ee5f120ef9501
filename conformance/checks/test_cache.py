"""KV accounting: ``release_cache`` returns everything, ``kv_capacity`` and pool counters add up."""

from __future__ import annotations

import math
from typing import Any

import pytest
from ferrum_core.conformance.fixtures import UnifiedSupport
from ferrum_core.conformance.harness import Driver, ids, prompt, snapshot

from ferrum_core.plugin import POOL_METRIC_KEYS as POOL_KEYS
from ferrum_core.protocol import DecodeInput, ModelExecutor, PrefillInput


def _usage(executor: ModelExecutor) -> dict[str, Any]:
    snap = snapshot(executor)
    keys = ("kv_blocks_free", "live_caches")
    usage: dict[str, Any] = {key: snap[key] for key in keys if key in snap}
    used = executor.status().memory_usage.used_bytes
    if used:
        usage["memory_used_bytes"] = used
    return usage


def _exercise(driver: Driver, seed: int, unified: bool) -> None:
    """One sequence through every path that allocates KV, then released."""
    vocab = driver.vocab
    tokens = prompt(seed, 5 + seed % 23, vocab)
    steps = prompt(seed + 1, 4, vocab)
    _, handle = driver.prefill(tokens[:3])
    _, handle = driver.prefill(tokens[3:], handle)
    _, handle = driver.decode(steps[0], handle)
    outs = driver.executor.forward_verify([DecodeInput(ids([t]), handle) for t in steps[1:]])
    handle = outs[-1].kv_cache
    handle = driver.executor.truncate_kv(handle, len(tokens) + 1)
    if unified:
        driver.unified([(handle, [steps[1]], True)])
    driver.release(handle)


def test_release_no_leak(
    driver: Driver, vocab: int, unified_support: UnifiedSupport
) -> None:
    """After many sequences come and go, pool, live caches and memory are back where they were."""
    executor = driver.executor
    before = _usage(executor)
    for seed in range(500, 524):
        _exercise(driver, seed, unified_support.supported)
    outs = executor.batch_prefill([PrefillInput(ids(prompt(600 + i, 6, vocab))) for i in range(4)])
    decoded = executor.batch_decode([DecodeInput(ids([1 % vocab]), o.kv_cache) for o in outs])
    for out in decoded:
        driver.release(out.kv_cache)
    after = _usage(executor)
    if not before:
        pytest.skip("the backend reports neither pool blocks, live caches nor memory use")
    assert after == before, f"after releasing every sequence: {after}, at the start: {before}"


def test_kv_capacity(executor: ModelExecutor) -> None:
    capacity = executor.kv_capacity()
    if capacity is None:
        pytest.skip("kv_capacity() is None: the model's context is the limit")
    assert isinstance(capacity, int) and capacity >= 1
    assert capacity <= executor.info().max_sequence_length, (
        f"kv_capacity {capacity} exceeds the model's max_sequence_length "
        f"{executor.info().max_sequence_length}"
    )


def test_paged_accounting(driver: Driver, vocab: int) -> None:
    """Where the backend pages KV, a fresh prompt takes its blocks and release gives them back."""
    executor = driver.executor
    snap = snapshot(executor)
    if "kv_blocks_total" not in snap:
        pytest.skip("the backend reports no paged KV accounting")
    missing = [key for key in POOL_KEYS if key not in snap]
    assert not missing, f"cache snapshot lacks {missing}"
    total, free, block = snap["kv_blocks_total"], snap["kv_blocks_free"], snap["block_size"]
    assert block >= 1 and 0 <= free <= total, snap
    length = 3 * block + 1
    _, handle = driver.prefill(prompt(700, length, vocab))
    taken = free - snapshot(executor)["kv_blocks_free"]
    assert taken >= math.ceil(length / block), (
        f"a {length}-token prompt took {taken} blocks of {block} tokens"
    )
    driver.release(handle)
    assert snapshot(executor)["kv_blocks_free"] == free, "release did not return every block"
