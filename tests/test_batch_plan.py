"""`plan_batch`: the one prefill / decode split the runner and LlmExecutor share."""

from __future__ import annotations

import numpy as np

from ferrum_core.batch_plan import BatchPlan, plan_batch
from ferrum_core.engine.runner import ExecutorRunner, Work
from ferrum_core.llm import LlmExecutor
from ferrum_core.protocol import DecodeInput, ModelExecutor, UnifiedBatch
from ferrum_core.protocol.executor import UnifiedLogits
from ferrum_core.protocol.io import PrefillInput, PrefillOutput
from tests.doubles import ToyLlm, history_logits


def test_plan_splits_one_token_continuations_from_everything_else() -> None:
    items = [
        (3, True, 0),  # a prompt
        (1, True, 5),  # a decode
        (1, True, 0),  # a one-token prompt: a prefill, it starts a cache
        (1, False, 4),  # a non-final one-token chunk: nothing to sample, a prefill
        (2, True, 7),  # a two-token continuation
        (1, True, 9),  # another decode
    ]
    assert plan_batch(items) == BatchPlan(prefills=(0, 2, 3, 4), decodes=(1, 5))
    assert plan_batch([]) == BatchPlan((), ())


class _NoUnified(ModelExecutor):
    """An LlmExecutor seen through the reference's defaults only (no unified_decode),
    so the runner's own fallback path runs."""

    def __init__(self) -> None:
        self.inner = LlmExecutor(ToyLlm(native=False))
        self.decode_batches: list[int] = []

    def unified_decode(self, batch: UnifiedBatch) -> UnifiedLogits:
        return super().unified_decode(batch)  # the protocol default: unsupported

    def prefill(self, input: PrefillInput) -> PrefillOutput:
        return self.inner.prefill(input)

    def decode(self, input: DecodeInput):  # type: ignore[no-untyped-def]
        return self.inner.decode(input)

    def batch_decode(self, inputs):  # type: ignore[no-untyped-def]
        self.decode_batches.append(len(inputs))
        return self.inner.batch_decode(inputs)

    def truncate_kv(self, kv_cache, new_len):  # type: ignore[no-untyped-def]
        return self.inner.truncate_kv(kv_cache, new_len)

    def info(self):  # type: ignore[no-untyped-def]
        return self.inner.info()

    def capabilities(self):  # type: ignore[no-untyped-def]
        return self.inner.capabilities()

    def status(self):  # type: ignore[no-untyped-def]
        return self.inner.status()


def test_runner_fallback_follows_the_plan() -> None:
    executor = _NoUnified()
    runner = ExecutorRunner(executor)
    rows = runner.run([Work("a", (1, 2), 0, True), Work("b", (3,), 0, True)])
    assert runner.unified is False and executor.decode_batches == []  # both were prompts
    np.testing.assert_allclose(rows[1], history_logits([3]))
    rows = runner.run([Work("a", (4,), 2, True), Work("c", (5, 6), 0, True),
                       Work("b", (7,), 1, True)])
    assert executor.decode_batches == [2]  # a and b in one decode group, c a prefill
    np.testing.assert_allclose(rows[0], history_logits([1, 2, 4]))
    np.testing.assert_allclose(rows[1], history_logits([5, 6]))
    np.testing.assert_allclose(rows[2], history_logits([3, 7]))
