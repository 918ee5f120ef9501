"""Operation counters, executor metrics and the cache snapshot add up."""

from __future__ import annotations

import json

import pytest
from ferrum_core.conformance.harness import Driver, prompt, snapshot

from ferrum_core.plugin import POOL_METRIC_KEYS
from ferrum_core.protocol import ExecutorMetrics


def test_status_counters(driver: Driver, vocab: int) -> None:
    executor = driver.executor
    before = executor.status()
    _, handle = driver.prefill(prompt(900, 5, vocab))
    mid = executor.status()
    for token in prompt(901, 2, vocab):
        _, handle = driver.decode(token, handle)
    after = executor.status()
    assert mid.prefill_operations == before.prefill_operations + 1, "one prefill counted once"
    assert after.decode_operations == before.decode_operations + 2, "two decodes counted twice"
    assert after.prefill_operations == mid.prefill_operations
    assert after.avg_prefill_time_ms >= 0 and after.avg_decode_time_ms >= 0
    assert after.last_operation_unix_s is not None
    memory = after.memory_usage
    assert memory.used_bytes >= 0 and memory.allocated_bytes >= 0
    assert memory.peak_bytes >= memory.used_bytes
    assert 0.0 <= memory.utilization_percent <= 100.0


def test_executor_metrics(driver: Driver, vocab: int) -> None:
    executor = driver.executor
    metrics_fn = getattr(executor, "metrics", None)
    if metrics_fn is None:
        pytest.skip("the executor has no metrics() method")
    _, handle = driver.prefill(prompt(910, 4, vocab))
    driver.decode(1 % vocab, handle)
    metrics = metrics_fn()
    status = executor.status()
    assert isinstance(metrics, ExecutorMetrics)
    assert metrics.prefill_operations == status.prefill_operations
    assert metrics.decode_operations == status.decode_operations
    assert metrics.total_operations == metrics.prefill_operations + metrics.decode_operations
    assert metrics.p95_prefill_latency >= 0 and metrics.p95_decode_latency >= 0
    assert metrics.throughput_tps >= 0


def test_cache_snapshot(driver: Driver) -> None:
    """JSON-serialisable; counters are non-negative integers; lock metrics follow schema 1."""
    snap = snapshot(driver.executor)
    json.dumps(snap)
    for key in ("unified_native_calls", "unified_fallback_calls", *POOL_METRIC_KEYS):
        if key in snap:
            assert isinstance(snap[key], int) and snap[key] >= 0, f"{key} = {snap[key]!r}"
    lock = snap.get("executor_model_lock")
    if lock is not None:
        assert lock.get("schema_version") == 1, lock
