"""GGUF block types as ``MatMulNBits`` weights, without re-quantising.

Each supported type's blocks (``split_blocks``: ``scale * code + min`` per
group) are rewritten as unsigned codes with an integer uint8 zero point, plus,
for the types whose minimum is a free float (Q4_1, Q5_1, Q4_K, Q5_K), the
exact per-group minimums, applied by the caller as ``block sums of x @ mins.T``:

=====  ====  =====  ===========  ==========  ======================
type   bits  group  codes        zero point  minimums term
=====  ====  =====  ===========  ==========  ======================
Q4_0   4     32     q            8           none (min = -8 d)
Q4_1   4     32     q            0           m
Q4_K   4     32     q            0           -(dmin m)
Q5_0   8     32     q            16          none (min = -16 d)
Q5_1   8     32     q            0           m
Q5_K   8     32     q            0           -(dmin m)
Q8_0   8     32     q + 128      128         none
Q6_K   8     16     q + 32       32          none
=====  ====  =====  ===========  ==========  ======================

``scale * (code - zero_point)`` is exact in float32 for every row (the codes
are small integers, the scales float16 values times at most 8-bit integers),
so the operator computes with the GGUF's own weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ferrum_core.errors import UnsupportedError
from ferrum_core.plugin import StoredTensor, split_blocks

from .quant_pack import NBitsWeight

__all__ = ["GGUF_LAYOUTS", "GgufWeight", "gguf_weight"]

GGUF_LAYOUTS: dict[str, tuple[int, int, int, bool]] = {
    "Q4_0": (4, 0, 8, False),
    "Q4_1": (4, 0, 0, True),
    "Q4_K": (4, 0, 0, True),
    "Q5_0": (8, 0, 16, False),
    "Q5_1": (8, 0, 0, True),
    "Q5_K": (8, 0, 0, True),
    "Q8_0": (8, 128, 128, False),
    "Q6_K": (8, 32, 32, False),
}
"""type -> (bits, code offset, zero point, has a minimums term)."""


@dataclass(frozen=True, slots=True)
class GgufWeight:
    """``weight`` plus, when the type has free minimums, ``mins`` float32
    ``(N, K // group)`` such that ``W = weight.dequantize() + repeat(mins)``."""

    type: str
    weight: NBitsWeight
    mins: np.ndarray | None


def gguf_weight(stored: StoredTensor) -> GgufWeight:
    """The blocks of a 2-D block-quantised ``stored`` as a :class:`GgufWeight`.

    Raises :class:`UnsupportedError` naming the type and tensor when the type
    has no exact ``MatMulNBits`` form here."""
    layout = GGUF_LAYOUTS.get(stored.type)
    if layout is None:
        raise UnsupportedError(
            f"GGUF type {stored.type} of tensor {stored.name!r} has no exact MatMulNBits form "
            f"(ferrum-cpu runs {', '.join(GGUF_LAYOUTS)} as stored; use --dtype fp32)"
        )
    if len(stored.shape) != 2:
        raise UnsupportedError(
            f"tensor {stored.name!r} ({stored.type}) has shape {list(stored.shape)}; "
            "a quantised linear layer needs a 2-D weight"
        )
    bits, offset, zero_point, has_min = layout
    blocks = split_blocks(stored)
    codes = blocks.codes
    if offset:
        codes = (codes.astype(np.int16) + np.int16(offset)).astype(np.uint8)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    scales = np.ascontiguousarray(blocks.scales, dtype=np.float32)
    zeros = np.full(scales.shape, zero_point, dtype=np.uint8)
    mins = np.ascontiguousarray(blocks.mins, dtype=np.float32) if has_min else None
    return GgufWeight(stored.type, NBitsWeight(codes, scales, zeros, bits, stored.shape[1]), mins)
