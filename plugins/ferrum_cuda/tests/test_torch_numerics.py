"""Logits of the torch model against transformers on the same weights (float32)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from ferrum_cuda.linear import onednn_available
from torch_tiny import FAMILIES, TinyModel, prompt

from ferrum_core.llm.decoder import DecodeItem, UnifiedItem

ATOL = 1e-4

pytestmark = pytest.mark.parametrize("family", sorted(FAMILIES))


def test_prefill_logits_match_every_position(family: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(family)
    tokens = prompt(13, seed=1)
    llm = model.build()
    got = llm.forward_verify("s", tokens, 0)
    np.testing.assert_allclose(got, model.logits(tokens).numpy(), atol=ATOL, rtol=0)


def test_prefill_then_decode_matches(family: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(family)
    tokens = prompt(20, seed=2)
    ref = model.logits(tokens).numpy()
    llm = model.build()
    np.testing.assert_allclose(llm.prefill("s", tokens[:9], 0), ref[8], atol=ATOL, rtol=0)
    for pos in range(9, 20):
        got = llm.decode("s", tokens[pos], pos)
        np.testing.assert_allclose(got, ref[pos], atol=ATOL, rtol=0)


def test_chunked_prefill_matches(family: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(family)
    tokens = prompt(17, seed=3)
    ref = model.logits(tokens).numpy()
    llm = model.build()
    assert llm.unified_forward([UnifiedItem("s", tokens[:6], 0, False)]) == [None]
    (last,) = llm.unified_forward([UnifiedItem("s", tokens[6:], 6, True)])
    assert last is not None
    np.testing.assert_allclose(last, ref[16], atol=ATOL, rtol=0)


def test_decode_batch_of_ragged_lengths(family: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(family)
    prompts = [prompt(n, seed=10 + n) for n in (2, 8, 11, 4)]
    llm = model.build()
    for i, p in enumerate(prompts):
        llm.prefill(f"s{i}", p[:-1], 0)
    items = [DecodeItem(f"s{i}", p[-1], len(p) - 1) for i, p in enumerate(prompts)]
    got = llm.decode_batch(items, False)
    for p, row in zip(prompts, got, strict=True):
        np.testing.assert_allclose(row, model.logits(p).numpy()[-1], atol=ATOL, rtol=0)


def test_plain_and_prepacked_gemms_agree(family: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(family)
    tokens = prompt(9, seed=4)
    packed, plain = model.build(), model.build(prepack=False)
    assert plain.weights.layers[0].qkv.packed is None
    if onednn_available():
        assert packed.weights.layers[0].qkv.packed is not None
    np.testing.assert_allclose(
        packed.forward_verify("s", tokens, 0), plain.forward_verify("s", tokens, 0), atol=ATOL
    )
