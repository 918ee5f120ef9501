"""Decodes of different sequences from several threads at once give the serial results."""

from __future__ import annotations

import threading

import numpy as np
from ferrum_core.conformance.harness import Driver, prompt
from ferrum_core.conformance.oracle import assert_close

from ferrum_core.types import DataType

THREADS = 4
STEPS = 8


def test_threads_decode(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    prompts = [prompt(1000 + i, 4 + 3 * i, vocab) for i in range(THREADS)]
    steps = [prompt(1010 + i, STEPS, vocab) for i in range(THREADS)]
    want = [driver.run(p, s) for p, s in zip(prompts, steps, strict=True)]
    got: list[list[np.ndarray]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(i: int) -> None:
        try:
            start.wait(30)
            row, handle = driver.prefill(prompts[i])
            got[i].append(row)
            for token in steps[i]:
                row, handle = driver.decode(token, handle)
                got[i].append(row)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a decode thread hung"
    assert not errors, f"a thread failed: {errors[0]!r}"
    for i in range(THREADS):
        assert len(got[i]) == STEPS + 1
        for step, (g, w) in enumerate(zip(got[i], want[i], strict=True)):
            assert_close(g, w, tol_dtype, f"thread {i} step {step}")
