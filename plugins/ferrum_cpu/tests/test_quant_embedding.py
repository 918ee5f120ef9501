"""``embedding``: exact rows in every mode; GGUF types without free minimums
stay quantised in a ``GatherBlockQuantized``."""

from __future__ import annotations

import numpy as np
import pytest
from ferrum_cpu.quant import embedding, linear
from test_quant_support import gguf_tensor, run

IDS = np.array([[0, 7, 3], [31, 7, 1]], dtype=np.int64)


@pytest.mark.parametrize("kind", ["Q4_0", "Q5_0", "Q8_0", "Q6_K", "Q4_1", "Q4_K", "Q5_K"])
@pytest.mark.parametrize("mode", ["fp32", "int4"])
def test_embedding_rows_equal_dequantised_table(kind: str, mode: str) -> None:
    cols = 256 if kind.endswith("_K") else 96
    stored, table = gguf_tensor(kind, 32, cols, seed=11)
    nodes = embedding("embed", "ids", "y", stored, mode=mode)  # type: ignore[arg-type]
    quantised = mode != "fp32" and kind in ("Q4_0", "Q5_0", "Q8_0", "Q6_K")
    assert [n.op_type for n in nodes.nodes] == ["GatherBlockQuantized" if quantised else "Gather"]
    for ids in (IDS, IDS[0]):
        got = run(nodes, {"ids": ids}, rank=ids.ndim + 1)
        np.testing.assert_array_equal(got, table[ids])


def test_float_table_and_tied_head() -> None:
    """A float table is gathered as is; the tied LM head (the embedding's
    tensor through ``linear``) matches fp32 on the dequantised weights."""
    table = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    nodes = embedding("embed", "ids", "y", table, mode="int4")
    np.testing.assert_array_equal(run(nodes, {"ids": IDS}, rank=3), table[IDS])
    stored, weights = gguf_tensor("Q8_0", 32, 64, seed=5)
    hidden = np.random.default_rng(1).standard_normal((1, 2, 64)).astype(np.float32)
    head = linear("lm_head", "x", "y", stored, bias=None, mode="int4")
    got = run(head, {"x": hidden})
    assert float(np.abs(got - hidden @ weights.T).max() / np.abs(got).max()) < 1e-4
