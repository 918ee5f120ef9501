"""``forward_verify`` (speculative decoding's verifier) equals sequential decodes."""

from __future__ import annotations

from ferrum_core.conformance.harness import Driver, ids, logits_rows, prompt
from ferrum_core.conformance.oracle import assert_close

from ferrum_core.protocol import DecodeInput
from ferrum_core.types import DataType


def test_matches_sequential(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    tokens = prompt(300, 7, vocab)
    draft = prompt(301, 4, vocab)
    after = prompt(302, 1, vocab)[0]
    _, handle = driver.prefill(tokens)
    outs = driver.executor.forward_verify([DecodeInput(ids([t]), handle) for t in draft])
    assert len(outs) == len(draft), f"{len(outs)} outputs for {len(draft)} tokens"
    for out in outs:
        driver.track(out.kv_cache)
    want = driver.run(tokens, [*draft, after])
    for i, out in enumerate(outs):
        assert out.kv_cache.sequence_length == len(tokens) + i + 1, f"handle length at {i}"
        rows = logits_rows(out.logits)
        assert rows.shape == (1, vocab), f"row {i} has shape {rows.shape}"
        assert_close(rows[0], want[i + 1], tol_dtype, f"forward_verify position {i}")
    row, _ = driver.decode(after, outs[-1].kv_cache)
    assert_close(row, want[-1], tol_dtype, "decode after forward_verify")
