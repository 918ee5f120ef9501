"""Native unified decode: one ragged forward equals serial prefill/decode per sequence."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from torch_tiny import TinyModel, prompt

from ferrum_core.llm.decoder import DecodeItem, UnifiedItem

ATOL = 1e-4


@pytest.mark.parametrize("family", ["llama_gqa", "qwen3", "mistral_window"])
def test_mixed_batch_equals_serial(family: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(family)
    unified, serial = model.build(), model.build()
    assert unified.native_unified
    a, b, c, d, e = (prompt(n, seed=s) for n, s in ((9, 1), (5, 2), (7, 3), (10, 4), (1, 5)))
    for llm in (unified, serial):
        llm.prefill("a", a, 0)
        llm.prefill("b", b, 0)
    # Step 1: two decodes, a whole prompt, a first chunk, and a one-token prompt.
    got = unified.unified_forward(
        [
            UnifiedItem("a", [11], 9, True),
            UnifiedItem("c", c, 0, True),
            UnifiedItem("d", d[:6], 0, False),
            UnifiedItem("b", [12], 5, True),
            UnifiedItem("e", e, 0, True),
        ]
    )
    want = [
        serial.decode("a", 11, 9),
        serial.prefill("c", c, 0),
        None,
        serial.decode("b", 12, 5),
        serial.prefill("e", e, 0),
    ]
    serial.unified_forward([UnifiedItem("d", d[:6], 0, False)])
    assert got[2] is None
    for g, w in zip(got, want, strict=True):
        if w is not None:
            assert g is not None
            np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)
    # Step 2: the chunked prompt finishes next to decodes.
    got = unified.unified_forward(
        [UnifiedItem("c", [13], 7, True), UnifiedItem("d", d[6:], 6, True)]
    )
    want = [serial.decode("c", 13, 7), serial.prefill("d", d[6:], 6)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)  # type: ignore[arg-type]
    # And against the oracle directly.
    np.testing.assert_allclose(got[1], model.logits(d).numpy()[-1], atol=ATOL, rtol=0)  # type: ignore[arg-type]
    np.testing.assert_allclose(
        got[0],  # type: ignore[arg-type]
        model.logits([*c, 13]).numpy()[-1],
        atol=ATOL,
        rtol=0,
    )


def test_decode_batch_equals_decode(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("qwen2")
    llm = model.build()
    prompts = [prompt(n, seed=20 + n) for n in (3, 6, 9)]
    for i, p in enumerate(prompts):
        llm.prefill(f"s{i}", p, 0)
    batch = llm.decode_batch([DecodeItem(f"s{i}", 7, len(p)) for i, p in enumerate(prompts)], False)
    for p, row in zip(prompts, batch, strict=True):
        np.testing.assert_allclose(row, model.logits([*p, 7]).numpy()[-1], atol=ATOL, rtol=0)


def test_forward_verify_returns_every_position(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("llama_gqa")
    llm = model.build()
    tokens = prompt(12, seed=6)
    llm.prefill("s", tokens[:8], 0)
    got = llm.forward_verify("s", tokens[8:], 8)
    assert got.shape == (4, model.config.vocab_size)
    np.testing.assert_allclose(got, model.logits(tokens).numpy()[8:], atol=ATOL, rtol=0)
