"""GGUF block types through ``linear``: the op computes with the file's own
weights (int4/int8 at accuracy_level 1 equals fp32 on the dequantised GGUF
weights within 1e-4), on ``MatMulNBits``'s prepacked form (uint8 zero points)."""

from __future__ import annotations

import numpy as np
import pytest
from ferrum_cpu.quant import linear
from ferrum_cpu.quant_gguf import GGUF_LAYOUTS
from test_quant_support import gguf_tensor, initializer, rel_err, run

from ferrum_core.errors import UnsupportedError
from ferrum_core.plugin import StoredTensor

SUPPORTED = list(GGUF_LAYOUTS)
MINIMUMS = {"Q4_1", "Q4_K", "Q5_1", "Q5_K"}
EIGHT_BIT = {"Q5_0", "Q5_1", "Q5_K", "Q8_0", "Q6_K"}
EXACT = 1e-4  # accuracy_level 1: fp32 activations, the GGUF's own weights
INT8_ACTIVATIONS = 3e-2  # accuracy_level 4: activations rounded to int8 per block


def k_for(kind: str) -> int:
    """A K that is not a multiple of 256 where the type allows it."""
    return 512 if kind.endswith("_K") else 96


@pytest.mark.parametrize("kind", SUPPORTED)
@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_level1_equals_fp32_on_dequantised_weights(kind: str, mode: str) -> None:
    k, n = k_for(kind), 40
    stored, weights = gguf_tensor(kind, n, k, seed=len(kind) + n)
    rng = np.random.default_rng(1)
    bias = rng.standard_normal(n).astype(np.float32)
    for rank, with_bias in ((2, True), (3, False), (3, True)):
        shape = (3, k) if rank == 2 else (2, 3, k)
        x = rng.standard_normal(shape).astype(np.float32)
        b = bias if with_bias else None
        nodes = linear("l0", "x", "y", stored, bias=b, mode=mode, accuracy_level=1)  # type: ignore[arg-type]
        want = x @ weights.T + (bias if with_bias else 0)
        assert rel_err(run(nodes, {"x": x}), want) < EXACT, (kind, rank, with_bias)


@pytest.mark.parametrize("kind", SUPPORTED)
def test_graph_is_matmul_nbits_on_the_prepacked_path(kind: str) -> None:
    """One ``MatMulNBits`` per weight (two 4-bit halves for 8 bits at level 1) with
    uint8 zero points or none (the operator's default): both are prepacked; a
    float zero point would not be. Minimums: the block sums are extra output
    columns of that same op, split off into one small term: a fp32 MatMul, or
    at level 4 for 4-bit codes an 8-bit MatMulNBits (default zero point, prepacked)."""
    k, n = k_for(kind), 24
    stored, _ = gguf_tensor(kind, n, k, seed=3)
    for level in (1, 4):
        nodes = linear("p", "x", "y", stored, bias=None, mode="int4", accuracy_level=level)
        weight_ops = [node for node in nodes.nodes
                      if node.op_type == "MatMulNBits" and node.name != "p.min_term"]
        split = kind in EIGHT_BIT and level == 1  # 8-bit codes as two exact 4-bit halves
        assert len(weight_ops) == (2 if split else 1)
        blocks = k // 32 if kind in MINIMUMS else 0
        for node in weight_ops:
            attrs = {a.name: a.i for a in node.attribute}
            assert node.domain == "com.microsoft"
            assert attrs["bits"] == (8 if kind in EIGHT_BIT and not split else 4)
            assert attrs["block_size"] == (16 if kind == "Q6_K" else 32)
            assert (attrs["K"], attrs["N"], attrs["accuracy_level"]) == (k, n + blocks, level)
            if len(node.input) > 3 and node.input[3]:
                zero_points = initializer(nodes, node.input[3])
                assert zero_points.dtype == np.uint8  # the prepacked (fast) path
                per_row = -(-(k // attrs["block_size"]) * attrs["bits"] // 8)
                assert zero_points.size == (n + blocks) * per_row
            assert initializer(nodes, node.input[2]).dtype == np.float32
        if not split and kind in {"Q4_0", "Q8_0"} | MINIMUMS:
            assert all(len(node.input) <= 3 or not node.input[3] for node in weight_ops)
        assert all(t.data_type != 10 for t in nodes.initializers)  # no float16 anywhere
        matmuls = [node for node in nodes.nodes if node.op_type == "MatMul"]
        if kind in MINIMUMS:
            (cut,) = [node for node in nodes.nodes if node.op_type == "Split"]
            assert list(initializer(nodes, cut.input[1])) == [n, blocks]
            (term,) = [node for node in nodes.nodes if node.name == "p.min_term"]
            assert term.input[0] == cut.output[1]
            if level == 1 or kind in EIGHT_BIT:  # 8-bit codes keep fp32 minimums
                assert matmuls == [term]
                assert initializer(nodes, term.input[1]).shape == (blocks, n)
            else:
                assert not matmuls and term.op_type == "MatMulNBits"
                attrs = {a.name: a.i for a in term.attribute}
                assert (attrs["bits"], attrs["K"], attrs["N"]) == (8, blocks, n)
                assert attrs["accuracy_level"] == 4 and len(term.input) == 3
        else:
            assert not matmuls
        assert nodes.nodes[-1].output[0] == "y"


@pytest.mark.parametrize("kind", sorted(MINIMUMS))
@pytest.mark.parametrize("level", [1, 4])
def test_block_sums_come_from_the_weight_op(kind: str, level: int) -> None:
    """The extra columns hold the per-block sums of ``x`` (exact at level 1, from
    the int8 activations at level 4)."""
    k = k_for(kind)
    stored, _ = gguf_tensor(kind, 8, k, seed=11)
    x = np.random.default_rng(7).standard_normal((2, 3, k)).astype(np.float32)
    nodes = linear("l", "x", "y", stored, bias=None, mode="int4", accuracy_level=level)
    sums = run(nodes, {"x": x}, out="l.block_sums")
    want = x.reshape(2, 3, k // 32, 32).sum(-1)
    assert rel_err(sums, want) < (1e-5 if level == 1 else INT8_ACTIVATIONS)


@pytest.mark.parametrize("kind", SUPPORTED)
def test_level4_int8_activations_within_tolerance(kind: str) -> None:
    k, n = k_for(kind), 32
    stored, weights = gguf_tensor(kind, n, k, seed=5)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    nodes = linear("l", "x", "y", stored, bias=bias, mode="int4", accuracy_level=4)
    got = run(nodes, {"x": x})
    want = x @ weights.T + bias
    err = rel_err(got, want)
    assert err < INT8_ACTIVATIONS, err
    assert err > 0  # int8 activations really are in use


def test_real_minimums_matter() -> None:
    """Q4_1 without its minimums term is far off: the term is really computed."""
    stored, weights = gguf_tensor("Q4_1", 16, 64, seed=9)
    nodes = linear("l", "x", "y", stored, bias=None, mode="int4")
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    for node in nodes.nodes:
        if node.op_type == "Add":
            node.input[1] = node.input[0]  # y = 2 * (d q) instead of d q + m S
    assert rel_err(run(nodes, {"x": x}) / 2, x @ weights.T) > 1e-2


@pytest.mark.parametrize("kind", ["Q2_K", "Q3_K", "IQ4_NL", "Q8_1"])
def test_unsupported_type_names_it(kind: str) -> None:
    data = np.zeros((8, 84), np.uint8)
    stored = StoredTensor("blk.3.ffn_down.weight", (8, 256), kind, data, 256, 84)
    with pytest.raises(UnsupportedError, match=kind) as caught:
        linear("l", "x", "y", stored, bias=None, mode="int4")
    assert "blk.3.ffn_down.weight" in str(caught.value)


def test_fp32_mode_dequantises_exactly() -> None:
    stored, weights = gguf_tensor("Q4_K", 8, 256, seed=4)
    x = np.random.default_rng(3).standard_normal((2, 256)).astype(np.float32)
    bias = np.arange(8, dtype=np.float32)
    nodes = linear("l", "x", "y", stored, bias=bias, mode="fp32")
    assert [node.op_type for node in nodes.nodes] == ["MatMul", "Add"]
    assert rel_err(run(nodes, {"x": x}), x @ weights.T + bias) < 1e-6


def test_names_are_prefixed_and_unique() -> None:
    stored, _ = gguf_tensor("Q8_0", 8, 64, seed=2)
    a = linear("layer0.q", "x", "ya", stored, bias=np.ones(8, np.float32), mode="int4")
    b = linear("layer0.k", "x", "yb", stored, bias=None, mode="int4")
    names = [t.name for t in a.initializers + b.initializers]
    names += [n.name for n in a.nodes + b.nodes]
    assert len(names) == len(set(names))
    assert all(name.startswith(("layer0.q.", "layer0.k.")) for name in names)


def test_fp32_mode_takes_types_with_no_nbits_form() -> None:
    """fp32 dequantises through gguf-py what int4/int8 refuse (Q2_K here)."""
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(6)
    raw = rng.integers(0, 256, size=(8, 1, 84), dtype=np.uint8)
    for offset in (80, 82):  # d and dmin
        fields = (rng.standard_normal((8, 1)) * 0.01).astype(np.float16)
        raw[:, :, offset : offset + 2] = fields.view(np.uint8).reshape(8, 1, 2)
    stored = StoredTensor("blk.0.attn_v.weight", (8, 256), "Q2_K", raw.reshape(8, 84), 256, 84)
    weights = quants.dequantize(stored.data, GGMLQuantizationType.Q2_K).reshape(8, 256)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    nodes = linear("l", "x", "y", stored, bias=None, mode="fp32")
    assert rel_err(run(nodes, {"x": x}), x @ weights.T) < 1e-6
    with pytest.raises(UnsupportedError, match="Q2_K"):
        linear("l", "x", "y", stored, bias=None, mode="int8")
