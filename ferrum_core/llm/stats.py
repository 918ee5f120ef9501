"""Thread-safe counters behind `status()`, `metrics()` and the lock-wait snapshot."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ferrum_core.protocol.capabilities import (
    ExecutorMemoryUsage,
    ExecutorMetrics,
    ExecutorState,
    ExecutorStatus,
)

__all__ = ["ExecutorStats"]

_WINDOW = 512  # latencies kept for the p95


def _p95(samples: deque[float]) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.95 * (len(ordered) - 1) + 0.5))]


@dataclass
class ExecutorStats:
    prefill_operations: int = 0
    decode_operations: int = 0
    prefill_time_ms: float = 0.0
    decode_time_ms: float = 0.0
    tokens_processed: int = 0
    busy_time_s: float = 0.0
    unified_native_calls: int = 0
    unified_fallback_calls: int = 0
    lock_wait_us: int = 0
    lock_wait_samples: int = 0
    in_flight: int = 0
    current_batch_size: int = 0
    last_operation_unix_s: float | None = None
    prefill_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    decode_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, batch_size: int) -> float:
        with self._lock:
            self.in_flight += 1
            self.current_batch_size = batch_size
        return time.perf_counter()

    def end(self, start: float, *, kind: str, tokens: int, ok: bool) -> None:
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        with self._lock:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.current_batch_size = 0
            if not ok:
                return
            self.last_operation_unix_s = time.time()
            self.tokens_processed += tokens
            self.busy_time_s += elapsed_ms / 1000.0
            if kind == "prefill":
                self.prefill_operations += 1
                self.prefill_time_ms += elapsed_ms
                self.prefill_latencies.append(elapsed_ms)
            else:
                self.decode_operations += 1
                self.decode_time_ms += elapsed_ms
                self.decode_latencies.append(elapsed_ms)

    def record_lock_wait(self, seconds: float) -> None:
        with self._lock:
            self.lock_wait_us += int(seconds * 1_000_000)
            self.lock_wait_samples += 1

    def record_unified(self, native: bool) -> None:
        with self._lock:
            if native:
                self.unified_native_calls += 1
            else:
                self.unified_fallback_calls += 1

    def lock_snapshot(self) -> dict[str, Any]:
        with self._lock:
            samples, total = self.lock_wait_samples, self.lock_wait_us
        return {
            "schema_version": 1,
            "samples": samples,
            "total_wait_time_us": total,
            "avg_wait_time_ms": 0.0 if samples == 0 else total / samples / 1000.0,
        }

    def averages(self) -> tuple[float, float]:
        with self._lock:
            prefill = self.prefill_time_ms / max(1, self.prefill_operations)
            decode = self.decode_time_ms / max(1, self.decode_operations)
        return prefill, decode

    def metrics(self, memory_efficiency: float) -> ExecutorMetrics:
        avg_prefill, avg_decode = self.averages()
        with self._lock:
            return ExecutorMetrics(
                total_operations=self.prefill_operations + self.decode_operations,
                prefill_operations=self.prefill_operations,
                decode_operations=self.decode_operations,
                avg_prefill_latency=avg_prefill,
                avg_decode_latency=avg_decode,
                p95_prefill_latency=_p95(self.prefill_latencies),
                p95_decode_latency=_p95(self.decode_latencies),
                throughput_tps=(
                    self.tokens_processed / self.busy_time_s if self.busy_time_s > 0 else 0.0
                ),
                memory_efficiency=memory_efficiency,
                batch_utilization=0.0,
            )

    def status(self, state: ExecutorState, allocated: int, used: int) -> ExecutorStatus:
        """The executor's status; a READY executor with a call in flight is BUSY."""
        avg_prefill, avg_decode = self.averages()
        with self._lock:
            if state == ExecutorState.READY and self.in_flight > 0:
                state = ExecutorState.BUSY
            return ExecutorStatus(
                state=state,
                is_ready=state in (ExecutorState.READY, ExecutorState.BUSY),
                current_batch_size=self.current_batch_size,
                prefill_operations=self.prefill_operations,
                decode_operations=self.decode_operations,
                avg_prefill_time_ms=avg_prefill,
                avg_decode_time_ms=avg_decode,
                memory_usage=ExecutorMemoryUsage(
                    allocated_bytes=allocated,
                    used_bytes=used,
                    peak_bytes=max(allocated, used),
                    utilization_percent=100.0 * used / allocated if allocated else 0.0,
                ),
                last_operation_unix_s=self.last_operation_unix_s,
            )
