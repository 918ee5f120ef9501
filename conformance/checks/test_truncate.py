"""``truncate_kv`` rolls a sequence back so that it continues as if the tail never existed."""

from __future__ import annotations

from ferrum_core.conformance.harness import Driver, prompt
from ferrum_core.conformance.oracle import assert_close

from ferrum_core.types import DataType


def test_rollback_decode(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    tokens = prompt(400, 9, vocab)
    x, y, z, w = prompt(401, 4, vocab)
    _, handle = driver.prefill(tokens)
    for token in (x, y, z):
        _, handle = driver.decode(token, handle)
    handle = driver.executor.truncate_kv(handle, len(tokens) + 1)
    assert handle.sequence_length == len(tokens) + 1
    row, handle = driver.decode(w, handle)
    assert_close(row, driver.run(tokens, [x, w])[-1], tol_dtype, "decode after truncation")


def test_rollback_into_prompt(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    """Truncating inside the prompt (across any block boundary) and prefilling a new tail."""
    tokens = prompt(410, 40, vocab)
    tail = prompt(411, 6, vocab)
    _, handle = driver.prefill(tokens)
    handle = driver.executor.truncate_kv(handle, 13)
    assert handle.sequence_length == 13
    row, handle = driver.prefill(tail, handle)
    assert handle.sequence_length == 13 + len(tail)
    assert_close(row, driver.run(tokens[:13] + tail, [])[0], tol_dtype, "prefill after truncation")


def test_rollback_to_zero(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    first, second = prompt(420, 8, vocab), prompt(421, 5, vocab)
    _, handle = driver.prefill(first)
    handle = driver.executor.truncate_kv(handle, 0)
    assert handle.sequence_length == 0
    row, handle = driver.prefill(second, handle)
    assert_close(row, driver.run(second, [])[0], tol_dtype, "prefill after truncating to 0")
