"""The status state machine: Initializing -> Ready -> Busy -> Ready, then Shutdown."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from ferrum_core.conformance.fixtures import MakeExecutor
from ferrum_core.conformance.harness import ids, prompt

from ferrum_core.errors import ExecutorStateError, UnsupportedError
from ferrum_core.protocol import (
    DecodeInput,
    ExecutorState,
    ModelExecutor,
    PrefillInput,
    UnifiedBatch,
    UnifiedBatchItem,
)

WAIT_S = 30.0


class GatedIds:
    """Token ids whose host copy waits for a signal, holding the call that reads them in flight."""

    def __init__(self, tokens: list[int]) -> None:
        self.array = np.asarray([tokens], dtype=np.int64)
        self.entered = threading.Event()
        self.opened = threading.Event()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> str:
        return str(self.array.dtype)

    @property
    def device(self) -> str:
        return "cpu"

    def _wait(self) -> None:
        self.entered.set()
        self.opened.wait(WAIT_S)

    def to_numpy(self) -> np.ndarray:
        self._wait()
        return self.array

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        self._wait()
        return self.array if dtype is None else self.array.astype(dtype)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        self._wait()
        return self.array.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.array.__dlpack_device__()


def _poll_busy(executor: ModelExecutor, running: threading.Thread, limit_s: float) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + limit_s
    while running.is_alive() and time.monotonic() < deadline:
        seen.add(executor.status().state.value)
        if ExecutorState.BUSY.value in seen:
            break
        time.sleep(0.0005)
    return seen


def _busy_while_gated(executor: ModelExecutor, vocab: int) -> set[str]:
    gate = GatedIds(prompt(800, 6, vocab))
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(executor.prefill(PrefillInput(gate))))
    worker.start()
    try:
        assert gate.entered.wait(WAIT_S), "prefill never read its input ids"
        return _poll_busy(executor, worker, 2.0)
    finally:
        gate.opened.set()
        worker.join(WAIT_S)
        for out in results:
            executor.release_cache(out.kv_cache.cache_id)


def _busy_while_long(executor: ModelExecutor, vocab: int) -> set[str]:
    """Fallback for backends that copy the input ids before they mark themselves busy."""
    seen: set[str] = set()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for attempt in range(20):
            inputs = [PrefillInput(ids(prompt(810 + attempt * 8 + i, 64, vocab))) for i in range(8)]
            results: list[Any] = []
            worker = threading.Thread(
                target=lambda inputs=inputs, results=results: results.extend(
                    executor.batch_prefill(inputs)
                )
            )
            worker.start()
            seen |= _poll_busy(executor, worker, WAIT_S)
            worker.join(WAIT_S)
            for out in results:
                executor.release_cache(out.kv_cache.cache_id)
            if ExecutorState.BUSY.value in seen:
                break
    finally:
        sys.setswitchinterval(interval)
    return seen


def test_lifecycle(make_executor: MakeExecutor) -> None:
    executor = make_executor()
    first = executor.status()
    assert first.state in (ExecutorState.INITIALIZING, ExecutorState.READY), first.state
    executor.warmup()
    ready = executor.status()
    assert ready.state == ExecutorState.READY and ready.is_ready, ready
    vocab = executor.info().vocab_size
    seen = _busy_while_gated(executor, vocab)
    if ExecutorState.BUSY.value not in seen:
        seen |= _busy_while_long(executor, vocab)
    assert ExecutorState.BUSY.value in seen, f"never BUSY during a call; saw {sorted(seen)}"
    assert seen <= {ExecutorState.READY.value, ExecutorState.BUSY.value}, sorted(seen)
    after = executor.status()
    assert after.state == ExecutorState.READY and after.is_ready, after
    executor.shutdown()
    final = executor.status()
    assert final.state == ExecutorState.SHUTDOWN and not final.is_ready, final


def test_calls_after_shutdown(make_executor: MakeExecutor) -> None:
    """Every call after shutdown fails with ExecutorStateError; shutdown is idempotent."""
    executor = make_executor()
    vocab = executor.info().vocab_size
    out = executor.prefill(PrefillInput(ids(prompt(820, 4, vocab))))
    handle = out.kv_cache
    executor.shutdown()
    decode = DecodeInput(ids([1 % vocab]), handle)
    calls: dict[str, Callable[[], object]] = {
        "prefill": lambda: executor.prefill(PrefillInput(ids([1 % vocab]))),
        "batch_prefill": lambda: executor.batch_prefill([PrefillInput(ids([1 % vocab]))]),
        "decode": lambda: executor.decode(decode),
        "batch_decode": lambda: executor.batch_decode([decode]),
        "forward_verify": lambda: executor.forward_verify([decode]),
        "truncate_kv": lambda: executor.truncate_kv(handle, 1),
        "new_cache": executor.new_cache,
        "unified_decode": lambda: executor.unified_decode(UnifiedBatch((UnifiedBatchItem(
            handle.cache_id, (1 % vocab,), handle, handle.sequence_length, True),))),
    }
    wrong = {}
    for name, call in calls.items():
        try:
            call()
        except ExecutorStateError:
            continue
        except UnsupportedError:
            if name in ("new_cache", "unified_decode"):
                continue  # never supported, before or after shutdown
            wrong[name] = "UnsupportedError"
        except Exception as exc:
            wrong[name] = f"{type(exc).__name__}: {exc}"
        else:
            wrong[name] = "succeeded"
    assert not wrong, f"calls after shutdown that did not raise ExecutorStateError: {wrong}"
    executor.shutdown()
    with contextlib.suppress(ExecutorStateError):  # a no-op or a clean refusal: both fine
        executor.release_cache(handle.cache_id)
    assert executor.status().state == ExecutorState.SHUTDOWN
