"""A batch call that fails part-way leaves every sequence of the batch as it was.

The LAST item of each batch is the bad one (an out-of-vocabulary token, a prompt
over capacity, a released cache id), so a backend that runs items one by one and
commits each before reaching the next has already advanced the others when it
fails. The call must raise a FerrumError, and every other sequence must continue
from the handle it had as if the call never happened: same length, next logits
equal to the serial run's.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from ferrum_core.conformance.fixtures import UnifiedSupport, require_unified
from ferrum_core.conformance.harness import Driver, ids, prompt
from ferrum_core.conformance.oracle import assert_close

from ferrum_core.errors import FerrumError
from ferrum_core.protocol import DecodeInput, KvCacheHandle, PrefillInput
from ferrum_core.types import DataType

BAD = ("out_of_vocabulary", "over_capacity", "released_cache")
LENGTHS = (4, 6, 5)


class Sequences:
    """The good sequences of a batch: their prompts, handles, and a serial check afterwards."""

    def __init__(self, driver: Driver, seed: int) -> None:
        self.driver = driver
        self.prompts = [prompt(seed + i, n, driver.vocab) for i, n in enumerate(LENGTHS)]
        self.handles = [driver.prefill(p)[1] for p in self.prompts]

    def check_unchanged(self, dtype: DataType, what: str) -> None:
        token = 3 % self.driver.vocab
        for i, (tokens, handle) in enumerate(zip(self.prompts, self.handles, strict=True)):
            try:
                row, after = self.driver.decode(token, handle)
            except FerrumError as exc:
                raise AssertionError(
                    f"after the failed {what}, sequence {i} cannot continue from its handle "
                    f"(length {handle.sequence_length}): {type(exc).__name__}: {exc}"
                ) from None
            assert after.sequence_length == len(tokens) + 1, (
                f"after the failed {what}, sequence {i} is at {after.sequence_length - 1} "
                f"positions, not {len(tokens)}"
            )
            want = self.driver.run(tokens, [token])[-1]
            assert_close(row, want, dtype, f"sequence {i} after the failed {what}")


def _capacity(driver: Driver) -> int:
    return driver.executor.kv_capacity() or driver.executor.info().max_sequence_length


def _bad_decode(driver: Driver, bad: str, seed: int) -> DecodeInput:
    """A decode input that must be refused."""
    vocab = driver.vocab
    if bad == "out_of_vocabulary":
        return DecodeInput(ids([vocab]), driver.prefill(prompt(seed, 3, vocab))[1])
    if bad == "over_capacity":
        _, full = driver.prefill(prompt(seed, _capacity(driver), vocab))
        return DecodeInput(ids([1 % vocab]), full)
    _, gone = driver.prefill(prompt(seed, 3, vocab))
    driver.release(gone)
    return DecodeInput(ids([1 % vocab]), gone)


def _bad_chunk(driver: Driver, bad: str, seed: int) -> tuple[KvCacheHandle, list[int]]:
    """A continuation ``(handle, tokens)`` that must be refused."""
    vocab = driver.vocab
    _, handle = driver.prefill(prompt(seed, 3, vocab))
    if bad == "out_of_vocabulary":
        return handle, [1 % vocab, vocab, 2 % vocab]
    if bad == "over_capacity":
        return handle, prompt(seed + 1, _capacity(driver) - 3 + 1, vocab)
    driver.release(handle)
    return handle, [1 % vocab, 2 % vocab]


def _expect_failure(call: Callable[[], object], what: str) -> None:
    try:
        call()
    except FerrumError:
        return
    pytest.fail(f"{what} with a bad last item succeeded")


@pytest.mark.parametrize("bad", BAD)
def test_batch_decode(driver: Driver, tol_dtype: DataType, bad: str) -> None:
    seqs = Sequences(driver, 1900)
    bad_input = _bad_decode(driver, bad, 1910)
    inputs = [DecodeInput(ids([(5 + i) % driver.vocab]), h) for i, h in enumerate(seqs.handles)]
    _expect_failure(lambda: driver.executor.batch_decode([*inputs, bad_input]), "batch_decode")
    seqs.check_unchanged(tol_dtype, f"batch_decode ({bad})")


@pytest.mark.parametrize("bad", BAD)
def test_batch_prefill(driver: Driver, tol_dtype: DataType, bad: str) -> None:
    """Continued chunks and a fresh prompt, then the bad chunk; no fresh sequence survives."""
    seqs = Sequences(driver, 1920)
    handle, tokens = _bad_chunk(driver, bad, 1930)
    live = driver.executor.cache_metrics_snapshot() or {}
    inputs = [PrefillInput(ids(prompt(1940 + i, 2, driver.vocab)), kv_cache=h)
              for i, h in enumerate(seqs.handles)]
    fresh = PrefillInput(ids(prompt(1945, 4, driver.vocab)))
    bad_input = PrefillInput(ids(tokens), kv_cache=handle)
    _expect_failure(lambda: driver.executor.batch_prefill([*inputs, fresh, bad_input]),
                    "batch_prefill")
    after = driver.executor.cache_metrics_snapshot() or {}
    if "live_caches" in live and "live_caches" in after:
        assert after["live_caches"] == live["live_caches"], (
            f"the failed batch_prefill left {after['live_caches'] - live['live_caches']} "
            "new sequence(s) behind"
        )
    seqs.check_unchanged(tol_dtype, f"batch_prefill ({bad})")


@pytest.mark.parametrize("bad", BAD)
def test_unified_decode(
    driver: Driver, tol_dtype: DataType, unified_support: UnifiedSupport, bad: str
) -> None:
    """Decodes and a prompt chunk, then the bad item."""
    require_unified(unified_support)
    seqs = Sequences(driver, 1950)
    handle, tokens = _bad_chunk(driver, bad, 1960)
    vocab = driver.vocab
    items = [(h, [(7 + i) % vocab], True) for i, h in enumerate(seqs.handles[:-1])]
    items.append((seqs.handles[-1], prompt(1965, 3, vocab), False))  # a chunk, no logits
    _expect_failure(lambda: driver.unified([*items, (handle, tokens, True)]), "unified_decode")
    seqs.check_unchanged(tol_dtype, f"unified_decode ({bad})")
