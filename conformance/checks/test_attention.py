"""Every declared attention mechanism is exercised, not only compared with a declaration.

For MULTI_HEAD / MULTI_QUERY / GROUPED_QUERY / SLIDING_WINDOW the backend runs a
golden model of that shape (prefill, then decode steps; for the sliding window the
prompt and every step reach past the window) and meets the run dtype's tolerance.
PAGED requires the pool counters in ``cache_metrics_snapshot()`` and that they move
when sequences come and go.
"""

from __future__ import annotations

import math

import pytest
from ferrum_core.conformance.fixtures import GoldenExecutor
from ferrum_core.conformance.harness import Driver, prompt, snapshot
from ferrum_core.conformance.oracle import (
    assert_close,
    golden_model,
    golden_models,
    numeric_goldens,
    tolerance_note,
)

from ferrum_core.protocol import AttentionType, ExecutorCapabilities, ModelExecutor
from ferrum_core.types import DataType

SHAPES = (AttentionType.MULTI_HEAD, AttentionType.MULTI_QUERY, AttentionType.GROUPED_QUERY,
          AttentionType.SLIDING_WINDOW)
POOL_KEYS = ("kv_blocks_total", "kv_blocks_free", "block_size")


def _declared(static_caps: ExecutorCapabilities | None, executor: ModelExecutor) -> set[str]:
    kinds = {a.value for a in executor.capabilities().attention_mechanisms}
    if static_caps is not None:
        kinds |= {a.value for a in static_caps.attention_mechanisms}
    return kinds


def _golden_of(kind: AttentionType, dtype: DataType) -> str | None:
    """The golden of that shape: among the run dtype's goldens first, else any float one.

    Plain MHA / MQA / GQA take a golden without a sliding window."""
    def fits(name: str) -> bool:
        shape = golden_model(name).attention
        if kind == AttentionType.SLIDING_WINDOW:
            return kind in shape
        return kind in shape and AttentionType.SLIDING_WINDOW not in shape

    for names in (numeric_goldens(dtype), sorted(golden_models())):
        found = [name for name in names if fits(name)]
        if found:
            return found[0]
    return None


@pytest.mark.parametrize("kind", [k.value for k in SHAPES])
def test_mechanism(kind: str, static_caps: ExecutorCapabilities | None, executor: ModelExecutor,
                   golden_executor: GoldenExecutor, default_dtype: DataType) -> None:
    """A declared mechanism runs a golden model of its shape and matches the oracle."""
    if kind not in _declared(static_caps, executor):
        pytest.skip(f"{kind} is not declared")
    name = _golden_of(AttentionType(kind), default_dtype)
    if name is None:
        pytest.fail(f"the suite ships no golden model with {kind} attention")
    golden = golden_model(name)
    drv = Driver(golden_executor(name, default_dtype))
    note = f"{kind} on golden {name}, {tolerance_note(default_dtype)}"
    try:
        row, handle = drv.prefill(golden.prompt_ids)
        assert_close(row, golden.prefill_logits[-1], default_dtype, f"{note}: prefill")
        for step, token in enumerate(golden.decode_ids):
            row, handle = drv.decode(token, handle)
            assert_close(row, golden.decode_logits[step], default_dtype,
                         f"{note}: decode step {step}")
    finally:
        drv.close()


def test_paged(static_caps: ExecutorCapabilities | None, driver: Driver, vocab: int) -> None:
    """Declared paged attention: pool counters exist; sequences take blocks and give them back."""
    executor = driver.executor
    if AttentionType.PAGED.value not in _declared(static_caps, executor):
        pytest.skip("paged is not declared")
    snap = snapshot(executor)
    missing = [key for key in POOL_KEYS if key not in snap]
    assert not missing, f"paged attention is declared; cache_metrics_snapshot() lacks {missing}"
    block, free = snap["block_size"], snap["kv_blocks_free"]
    assert isinstance(block, int) and block >= 1, f"block_size {block!r}"
    lengths = (2 * block + 1, block + 2)
    handles = [driver.prefill(prompt(2000 + i, n, vocab))[1] for i, n in enumerate(lengths)]
    taken = free - snapshot(executor)["kv_blocks_free"]
    need = sum(math.ceil(n / block) for n in lengths)
    assert taken >= need, (
        f"two sequences of {list(lengths)} tokens took {taken} blocks of {block}; need {need}"
    )
    driver.release(handles[0])
    partly = snapshot(executor)["kv_blocks_free"]
    assert partly > free - taken, "releasing a sequence returned no block"
    driver.release(handles[1])
    assert snapshot(executor)["kv_blocks_free"] == free, "the pool did not get every block back"
