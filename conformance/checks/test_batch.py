"""``batch_prefill`` / ``batch_decode`` give what the serial calls give."""

from __future__ import annotations

import numpy as np
from ferrum_core.conformance.harness import Driver, ids, logits_rows, prompt
from ferrum_core.conformance.oracle import assert_close

from ferrum_core.protocol import DecodeInput, PrefillInput
from ferrum_core.types import DataType

LENGTHS = (5, 9, 2, 7)  # ragged on purpose; fewer than 8 items


def test_prefill_matches_serial(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    prompts = [prompt(100 + i, n, vocab) for i, n in enumerate(LENGTHS)]
    outs = driver.executor.batch_prefill([PrefillInput(ids(p)) for p in prompts])
    for out in outs:
        driver.track(out.kv_cache)
    assert len(outs) == len(prompts)
    assert len({o.kv_cache.cache_id for o in outs}) == len(outs), "cache ids must differ"
    for i, (p, out) in enumerate(zip(prompts, outs, strict=True)):
        assert out.kv_cache.sequence_length == len(p)
        assert_close(logits_rows(out.logits)[-1], driver.run(p, [])[0], tol_dtype,
                     f"batch_prefill item {i}")


def test_prefill_continues_handles(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    """A batch may mix fresh prompts and continuations of supplied handles (chunked prefill)."""
    first = [prompt(110 + i, n, vocab) for i, n in enumerate((4, 6))]
    rest = [prompt(120 + i, n, vocab) for i, n in enumerate((3, 5))]
    handles = [driver.prefill(p)[1] for p in first]
    fresh = prompt(130, 6, vocab)
    inputs = [PrefillInput(ids(r), kv_cache=h) for r, h in zip(rest, handles, strict=True)]
    outs = driver.executor.batch_prefill([*inputs, PrefillInput(ids(fresh))])
    for out in outs:
        driver.track(out.kv_cache)
    for i in range(2):
        assert outs[i].kv_cache.cache_id == handles[i].cache_id
        assert outs[i].kv_cache.sequence_length == len(first[i]) + len(rest[i])
        want = driver.run(first[i] + rest[i], [])[0]
        assert_close(logits_rows(outs[i].logits)[-1], want, tol_dtype, f"continued item {i}")
    assert_close(logits_rows(outs[2].logits)[-1], driver.run(fresh, [])[0], tol_dtype,
                 "fresh item next to continuations")


def test_decode_matches_serial(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    prompts = [prompt(140 + i, n, vocab) for i, n in enumerate(LENGTHS)]
    steps = [prompt(150 + i, 3, vocab) for i in range(len(prompts))]
    handles = [driver.prefill(p)[1] for p in prompts]
    got: list[list[np.ndarray]] = [[] for _ in prompts]
    for step in range(3):
        inputs = [DecodeInput(ids([s[step]]), h) for s, h in zip(steps, handles, strict=True)]
        outs = driver.executor.batch_decode(inputs)
        assert len(outs) == len(inputs)
        handles = [driver.track(o.kv_cache) for o in outs]
        for i, out in enumerate(outs):
            assert out.kv_cache.sequence_length == len(prompts[i]) + step + 1
            rows = logits_rows(out.logits)
            assert rows.shape == (1, vocab), f"batch_decode row shape {rows.shape}"
            got[i].append(rows[0])
    for i, p in enumerate(prompts):
        want = driver.run(p, steps[i])[1:]
        for step in range(3):
            assert_close(got[i][step], want[step], tol_dtype, f"batch_decode item {i} step {step}")
