"""The CPU decode workspace: reused across steps, rebuilt on any change, same logits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from torch_tiny import TinyModel, prompt

from ferrum_core.llm.decoder import DecodeItem, UnifiedItem

ATOL = 1e-4


@pytest.mark.parametrize("family", ["llama_gqa", "mistral_window"])
def test_batched_decode_loop_matches_oracle(family: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(family)
    llm = model.build(block_size=4)
    assert llm.workspace is not None
    seqs = {f"s{i}": prompt(n, seed=30 + i) for i, n in enumerate((3, 9, 6))}
    for cache_id, tokens in seqs.items():
        llm.prefill(cache_id, tokens, 0)

    def step(ids: list[str], token: int) -> None:
        items = [DecodeItem(c, token, len(seqs[c])) for c in ids]
        rows = llm.decode_batch(items, False)
        for c, row in zip(ids, rows, strict=True):
            seqs[c] = [*seqs[c], token]
            np.testing.assert_allclose(row, model.logits(seqs[c]).numpy()[-1], atol=ATOL, rtol=0)

    for token in (11, 12, 13):  # same group: built once, then reused
        step(["s0", "s1", "s2"], token)
    metrics = llm.cache_metrics_snapshot()
    assert metrics["decode_workspace_rebuilds"] == 1
    assert metrics["decode_workspace_reuses"] == 2
    step(["s1", "s2"], 14)  # the group changed: rebuilt
    llm.truncate_kv("s1", 8)  # a member is truncated: rebuilt
    seqs["s1"] = seqs["s1"][:8]
    step(["s1", "s2"], 15)
    step(["s1", "s2"], 16)
    # A chunk joining the step does not disturb the decode group.
    fresh = prompt(5, seed=40)
    rows = llm.unified_forward(
        [UnifiedItem("s1", [17], len(seqs["s1"]), True), UnifiedItem("new", fresh, 0, True)]
    )
    seqs["s1"] = [*seqs["s1"], 17]
    np.testing.assert_allclose(rows[0], model.logits(seqs["s1"]).numpy()[-1], atol=ATOL, rtol=0)  # type: ignore[arg-type]
    np.testing.assert_allclose(rows[1], model.logits(fresh).numpy()[-1], atol=ATOL, rtol=0)  # type: ignore[arg-type]
    metrics = llm.cache_metrics_snapshot()
    # "s1" alone is a new group.
    assert metrics["decode_workspace_rebuilds"] == 4 and metrics["decode_workspace_reuses"] == 3


def test_over_budget_falls_back_to_gathering(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("qwen2")
    small, off = model.build(workspace_bytes=1), model.build(workspace_bytes=0)
    assert off.workspace is None
    tokens = prompt(7, seed=3)
    for llm in (small, off):
        llm.prefill("s", tokens, 0)
    for pos, token in enumerate((4, 5, 6), start=7):
        got = small.decode("s", token, pos)
        np.testing.assert_allclose(got, off.decode("s", token, pos), atol=ATOL, rtol=0)
    assert small.cache_metrics_snapshot()["decode_workspace_reuses"] == 0
