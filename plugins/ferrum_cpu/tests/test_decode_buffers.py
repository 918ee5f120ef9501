"""A steady decode step on the cpu backend copies no KV and allocates no KV-sized buffer.

The pool's K/V arrays keep their addresses, its generation and capacity stay put
while the sequences fit, and the runner reuses one cached IOBinding per shape;
the batched logits still equal a fresh serial run's (so the steps did real work).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from cpu_helpers import cpu_executor, decode, prefill, rel_err
from ferrum_cpu.kv import KvPool

from ferrum_core.plugin import DecodeInput, HostTensor

STEPS = 8
PROMPTS = ([1, 17, 42, 99, 7, 63], [3, 9, 27, 81, 11])
TOKENS = ([120, 5, 88, 31, 200, 14, 77, 6], [33, 44, 55, 66, 2, 250, 19, 8])


def _buffers(pool: KvPool) -> tuple[int, int, int, int, int]:
    """Where the K and V arrays live and how big the pool is."""
    return (pool.keys.ctypes.data, pool.values.ctypes.data, pool.generation, pool.capacity,
            pool.slots)  # fmt: skip


def test_decode_steps_reuse_kv_and_bindings(tiny: Callable[..., Path]) -> None:
    path = tiny("llama3")
    executor = cpu_executor(path)
    model = executor._model  # the OrtDecoderLLM: its KvPool and Runner
    pool, runner = model.pool, model.runner
    _, a = prefill(executor, PROMPTS[0])
    _, b = prefill(executor, PROMPTS[1])
    assert max(len(p) + STEPS for p in PROMPTS) <= pool.capacity  # within capacity: no growth
    before = _buffers(pool)
    bindings: list[object] | None = None
    got: list[list[np.ndarray]] = [[], []]
    handles = [a, b]
    for step in range(STEPS):
        runs = runner.runs
        outs = executor.batch_decode([
            DecodeInput(HostTensor(np.array([[TOKENS[i][step]]], np.int64)), handles[i])
            for i in range(2)
        ])  # fmt: skip
        assert runner.runs == runs + 1, "two sequences decode in one session run"
        for i, out in enumerate(outs):
            got[i].append(out.logits.to_numpy().reshape(-1))
            handles[i] = out.kv_cache
        assert _buffers(pool) == before, f"the KV pool moved or grew at step {step}"
        cached = list(runner._bindings.values())  # holds them: a rebuilt one is a new object
        if bindings is None:
            bindings = cached
        assert len(cached) == len(bindings), f"a new IOBinding cached at step {step}"
        same = all(x is y for x, y in zip(cached, bindings, strict=True))
        assert same, f"an IOBinding rebuilt at step {step}"
    assert pool.length(a.cache_id) == len(PROMPTS[0]) + STEPS
    executor.shutdown()

    serial = cpu_executor(path)  # a fresh executor, one sequence at a time
    for i, prompt in enumerate(PROMPTS):
        _, handle = prefill(serial, prompt)
        for step, token in enumerate(TOKENS[i]):
            row, handle = decode(serial, token, handle)
            assert rel_err(got[i][step], row) < 1e-5, f"sequence {i}, step {step}"
        serial.release_cache(handle.cache_id)
    serial.shutdown()
