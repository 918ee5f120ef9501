"""Float weights (fp32/bf16 Hugging Face arrays, F32/F16/BF16 tensors) through
``linear``: fp32 exact, int8/int4 quantised by ONNX Runtime's quantiser."""

from __future__ import annotations

import numpy as np
import pytest
from ferrum_cpu.quant import linear
from ferrum_cpu.quant_ort import ort_quantize
from test_quant_support import initializer, rel_err, run

from ferrum_core.errors import UnsupportedError
from ferrum_core.plugin import StoredTensor

# Error of the quantised weights against fp32 (largest error / largest output),
# random normal weights, random normal x; measured 6.5e-2 (int4) and 3.3e-3
# (int8) at K=256.
AGAINST_FP32 = {"int4": 0.12, "int8": 1e-2}
BITS = {"int4": 4, "int8": 8}


def weights(n: int, k: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, k)) * 0.05).astype(np.float32)


def test_fp32_is_matmul_on_the_weights() -> None:
    w = weights(24, 40, 0)
    bias = np.linspace(-1, 1, 24, dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((2, 3, 40)).astype(np.float32)
    nodes = linear("l", "x", "y", w, bias=bias, mode="fp32")
    assert [node.op_type for node in nodes.nodes] == ["MatMul", "Add"]
    assert rel_err(run(nodes, {"x": x}), x @ w.T + bias) < 1e-6
    no_bias = linear("l", "x", "y", w, bias=None, mode="fp32")
    assert [node.op_type for node in no_bias.nodes] == ["MatMul"]


@pytest.mark.parametrize("mode", ["int4", "int8"])
@pytest.mark.parametrize(("k", "block_size"), [(256, 32), (40, 32), (64, 16), (256, 128)])
def test_quantised_float_weights(mode: str, k: int, block_size: int) -> None:
    n = 48
    w = weights(n, k, k + block_size)
    rng = np.random.default_rng(3)
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    own = ort_quantize(w, BITS[mode], block_size).dequantize()  # what the op must use
    for level, exact in ((1, 1e-4), (4, 1e-2)):
        nodes = linear(
            "l", "x", "y", w, bias=bias, mode=mode, accuracy_level=level, block_size=block_size
        )  # type: ignore[arg-type]
        got = run(nodes, {"x": x})
        assert rel_err(got, x @ own.T + bias) < exact, (level, rel_err(got, x @ own.T + bias))
        assert rel_err(got, x @ w.T + bias) < AGAINST_FP32[mode]
        for node in nodes.nodes:
            assert node.op_type in ("MatMulNBits", "Add")
            if node.op_type == "MatMulNBits":
                assert initializer(nodes, node.input[3]).dtype == np.uint8
                assert {a.name: a.i for a in node.attribute}["block_size"] == block_size


def test_rank2_and_float_tensors_follow_the_array_path() -> None:
    w = weights(16, 64, 7)
    bf16_bits = (w.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    as_bf16 = (bf16_bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    f16 = w.astype(np.float16)
    x = np.random.default_rng(4).standard_normal((5, 64)).astype(np.float32)
    for stored, floats in (
        (StoredTensor("w.bf16", (16, 64), "BF16", bf16_bits, 1, 2), as_bf16),
        (StoredTensor("w.f16", (16, 64), "F16", f16, 1, 2), f16.astype(np.float32)),
        (StoredTensor("w.f32", (16, 64), "F32", w, 1, 4), w),
    ):
        own = ort_quantize(floats, 4, 32).dequantize()
        nodes = linear("l", "x", "y", stored, bias=None, mode="int4")
        assert rel_err(run(nodes, {"x": x}), x @ own.T) < 1e-4, stored.type
        exact = linear("l", "x", "y", stored, bias=None, mode="fp32")
        assert rel_err(run(exact, {"x": x}), x @ floats.T) < 1e-6, stored.type


def test_bad_arguments_are_typed_errors() -> None:
    with pytest.raises(UnsupportedError, match="fp16"):
        linear("l", "x", "y", weights(4, 32, 0), bias=None, mode="fp16")  # type: ignore[arg-type]
    for block_size in (8, 48):
        with pytest.raises(UnsupportedError, match=f"block_size {block_size}"):
            linear("l", "x", "y", weights(4, 64, 0), bias=None, mode="int4", block_size=block_size)
    with pytest.raises(UnsupportedError, match="accuracy_level 7"):
        linear("l", "x", "y", weights(4, 64, 0), bias=None, mode="int8", accuracy_level=7)
    with pytest.raises(UnsupportedError, match=r"\[32\]"):
        linear("l", "x", "y", np.zeros(32, np.float32), bias=None, mode="int4")
