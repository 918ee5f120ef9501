"""The one-call fp32 decode step against the eager kernel-by-kernel forward and the oracle."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from ferrum_cuda.linear import panel_gemm_enabled
from ferrum_cuda.model import TorchDecoderLLM
from torch_tiny import TinyModel, prompt

from ferrum_core.llm.decoder import DecodeItem, UnifiedItem

pytestmark = pytest.mark.skipif(
    not panel_gemm_enabled(), reason="no AVX-512/AVX2 (or FERRUM_CPU_GEMM=0): no panel-packed model"
)


def _fused_steps(llm: TorchDecoderLLM) -> int:
    return int((llm.cache_metrics_snapshot() or {}).get("fused_decode_steps", -1))


@pytest.mark.parametrize("family", ["llama_gqa", "llama_tied_odd", "llama_mqa_bias", "qwen2",
                                    "mistral_window"])  # fmt: skip
def test_fused_step_equals_eager_step_and_oracle(
    family: str, tiny: Callable[[str], TinyModel]
) -> None:
    model = tiny(family)
    fused, eager = model.build(), model.build()
    if fused.kernels is None:
        pytest.skip("no C compiler: the fused kernels are off")
    assert fused.transformer.fused_step is not None
    eager.transformer.fused_step = None
    seqs = {f"s{i}": prompt(n, seed=70 + i) for i, n in enumerate((3, 12, 7, 1))}
    for llm in (fused, eager):
        llm.unified_forward([UnifiedItem(c, t, 0, True) for c, t in seqs.items()])
    for step, token in enumerate((31, 32, 33, 34, 35)):
        items = [DecodeItem(c, token + i, len(seqs[c])) for i, c in enumerate(seqs)]
        got, want = fused.decode_batch(items, False), eager.decode_batch(items, False)
        for (c, tok, _), a, b in zip(items, got, want, strict=True):
            seqs[c] = [*seqs[c], tok]
            np.testing.assert_array_equal(a, b)  # the same kernels in the same order
            np.testing.assert_allclose(a, model.logits(seqs[c]).numpy()[-1], atol=1e-4, rtol=0)
        # The first step builds the workspace (eager); every later one runs fused.
        assert _fused_steps(fused) == step
    # A group change rebuilds (eager), then the new group runs fused again.
    for expect in (4, 5):
        items = [DecodeItem(c, 40, len(seqs[c])) for c in ("s1", "s3")]
        rows = fused.decode_batch(items, False)
        for (c, _, _), row in zip(items, rows, strict=True):
            seqs[c] = [*seqs[c], 40]
            np.testing.assert_allclose(row, model.logits(seqs[c]).numpy()[-1], atol=1e-4, rtol=0)
        assert _fused_steps(fused) == expect


def test_models_the_kernels_do_not_cover_stay_eager(tiny: Callable[[str], TinyModel]) -> None:
    qwen3 = tiny("qwen3").build()  # per-head q/k norm has no fused kernel
    assert qwen3.transformer.fused_step is None
    assert "fused_decode_steps" not in (qwen3.cache_metrics_snapshot() or {})
    unfused = tiny("llama_gqa").build(fused_kernels=False)
    assert unfused.transformer.fused_step is None
