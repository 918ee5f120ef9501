"""The minimums term of Q4_1-like types: exact in fp32 below accuracy_level 4,
8-bit minimums (a quarter of the bytes) at level 4."""

from __future__ import annotations

import numpy as np
import pytest
from ferrum_cpu.quant import Nodes
from ferrum_cpu.quant_mins import int8_rows, min_term
from test_quant_support import rel_err, run


def test_int8_rows_round_trip_within_half_a_scale() -> None:
    rng = np.random.default_rng(0)
    mins = (rng.standard_normal((7, 50)) * rng.random((7, 1)) * 3).astype(np.float32)
    mins[2] = 0  # an all-zero row keeps scale 1 and code 128
    weight = int8_rows(mins)
    assert weight.bits == 8 and weight.k == 50 and weight.block_size == 32
    assert weight.codes.shape == (7, 2, 32) and np.all(weight.zero_points == 128)
    back = weight.dequantize()
    assert back.shape == mins.shape
    bound = np.repeat(weight.scales, 32, axis=1)[:, :50] / 2
    assert np.all(np.abs(back - mins) <= bound * (1 + 1e-6))
    assert np.all(back[2] == 0)
    assert np.all(weight.codes[:, 1, 18:] == 128)  # the padded tail holds zeros


@pytest.mark.parametrize("level", [1, 4])
def test_min_term_adds_sums_times_minimums(level: int) -> None:
    """``out = main + sums @ mins.T``: exact at level 1; at level 4 within the
    8-bit rounding of the minimums and of the sums (and not exact)."""
    rng = np.random.default_rng(3)
    n, blocks = 40, 18
    mins = (rng.standard_normal((n, blocks)) * 0.05).astype(np.float32)
    product = rng.standard_normal((2, 3, n + blocks)).astype(np.float32)
    product[..., n:] *= 20  # block sums of 32 activations are large
    nodes, inits = min_term("p", "x", "y", n, mins, int8=level == 4, accuracy_level=level)
    got = run(Nodes(nodes, inits), {"x": product})
    want = product[..., :n] + product[..., n:] @ mins.T
    err = rel_err(got, want)
    if level == 1:
        assert err < 1e-6
    else:
        assert 0 < err < 1e-2, err
