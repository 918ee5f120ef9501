"""Bad inputs give typed errors and leave every other sequence as it was."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from ferrum_core.conformance.fixtures import MakeExecutor
from ferrum_core.conformance.harness import Driver, ids, prompt
from ferrum_core.conformance.oracle import assert_close

from ferrum_core.errors import CapacityError, InvalidInputError, UnknownCacheError
from ferrum_core.protocol import DecodeInput, KvCacheHandle, PrefillInput
from ferrum_core.tensor import HostTensor
from ferrum_core.types import DataType


class Bystander:
    """A sequence opened before the bad calls; it must continue exactly as a fresh one would."""

    def __init__(self, driver: Driver, seed: int) -> None:
        self.driver = driver
        self.tokens = prompt(seed, 6, driver.vocab)
        self.next_token = prompt(seed + 1, 1, driver.vocab)[0]
        _, self.handle = driver.prefill(self.tokens)

    def check(self, dtype: DataType) -> None:
        row, _ = self.driver.decode(self.next_token, self.handle)
        want = self.driver.run(self.tokens, [self.next_token])[-1]
        assert_close(row, want, dtype, "a bystander sequence after the failed calls")


@pytest.fixture
def bystander(driver: Driver, tol_dtype: DataType) -> Iterator[Bystander]:
    witness = Bystander(driver, 1100)
    yield witness
    witness.check(tol_dtype)


def _live(driver: Driver, seed: int) -> KvCacheHandle:
    return driver.prefill(prompt(seed, 5, driver.vocab))[1]


def test_out_of_vocabulary(driver: Driver, vocab: int, bystander: Bystander) -> None:
    for bad in (vocab, vocab + 1000, -1):
        with pytest.raises(InvalidInputError):
            driver.prefill([1 % vocab, bad, 2 % vocab])
    handle = _live(driver, 1110)
    with pytest.raises(InvalidInputError):
        driver.decode(vocab, handle)
    driver.decode(1 % vocab, handle)  # the sequence itself is still usable


def test_unknown_cache(driver: Driver, make_executor: MakeExecutor, bystander: Bystander) -> None:
    """A handle from another executor was never issued by this one."""
    other = make_executor(max_batch_size=4)
    foreign = other.prefill(PrefillInput(ids(prompt(1120, 4, driver.vocab)))).kv_cache
    with pytest.raises(UnknownCacheError):
        driver.decode(1, foreign)
    with pytest.raises(UnknownCacheError):
        driver.prefill([1, 2], foreign)
    other.shutdown()


def test_released_cache(driver: Driver, vocab: int, bystander: Bystander) -> None:
    handle = _live(driver, 1130)
    driver.release(handle)
    with pytest.raises(UnknownCacheError):
        driver.decode(1 % vocab, handle)
    with pytest.raises(UnknownCacheError):
        driver.prefill([1 % vocab], handle)
    with pytest.raises(UnknownCacheError):
        driver.executor.truncate_kv(handle, 1)
    with pytest.raises(UnknownCacheError):
        driver.executor.forward_verify([DecodeInput(ids([1 % vocab]), handle)])
    driver.executor.release_cache(handle.cache_id)  # releasing twice is harmless


def test_prompt_over_capacity(driver: Driver, vocab: int, bystander: Bystander) -> None:
    executor = driver.executor
    limit = executor.kv_capacity() or executor.info().max_sequence_length
    with pytest.raises(CapacityError):
        driver.prefill(prompt(1140, limit + 1, vocab))
    handle = _live(driver, 1141)
    with pytest.raises(CapacityError):
        driver.prefill(prompt(1142, limit - handle.sequence_length + 1, vocab), handle)
    driver.decode(1 % vocab, handle)


def test_wrong_shapes(driver: Driver, vocab: int, bystander: Bystander) -> None:
    executor = driver.executor
    bad_prefills: dict[str, np.ndarray] = {
        "two sequences in one input": np.ones((2, 3), dtype=np.int64),
        "3-D ids": np.ones((1, 1, 3), dtype=np.int64),
        "float ids": np.ones((1, 3), dtype=np.float32),
        "empty prompt": np.zeros((1, 0), dtype=np.int64),
    }
    for what, array in bad_prefills.items():
        with pytest.raises(InvalidInputError):
            executor.prefill(PrefillInput(HostTensor(array)))
            pytest.fail(f"prefill accepted {what}")
    handle = _live(driver, 1150)
    with pytest.raises(InvalidInputError):
        executor.decode(DecodeInput(ids([1 % vocab, 2 % vocab]), handle))
    driver.decode(1 % vocab, handle)


def test_failed_batch_isolated(
    driver: Driver, vocab: int, tol_dtype: DataType, bystander: Bystander
) -> None:
    """One bad item fails the whole batch call; every sequence in it is left unchanged."""
    prompts = [prompt(1160 + i, 4 + i, vocab) for i in range(3)]
    handles = [driver.prefill(p)[1] for p in prompts]
    tokens = [1 % vocab, vocab, 2 % vocab]
    with pytest.raises(InvalidInputError):
        driver.executor.batch_decode(
            [DecodeInput(ids([t]), h) for t, h in zip(tokens, handles, strict=True)]
        )
    for i, (p, h) in enumerate(zip(prompts, handles, strict=True)):
        row, _ = driver.decode(3 % vocab, h)
        assert_close(row, driver.run(p, [3 % vocab])[-1], tol_dtype, f"batch item {i} afterwards")
