"""Float weights quantised by ONNX Runtime's own block quantiser.

``onnxruntime.capi._pybind_state.quantize_matmul_{4,8}bits`` are the MLAS
round-to-nearest routines behind ``onnxruntime.quantization``'s
``MatMulNBitsQuantizer`` (its ``DefaultWeightOnlyQuantizer``). They quantise
``W.T`` (``K x N``) per column in blocks along K; asymmetric, so each block
gets a uint8 zero point (the operator's prepacked fast path takes uint8 zero
points; asymmetric is the more accurate of the two at no speed cost).
"""

from __future__ import annotations

import numpy as np

from .quant_pack import NBitsWeight

__all__ = ["ort_quantize"]


def _unpack_nibbles(packed: np.ndarray, length: int) -> np.ndarray:
    """``(..., L / 2)`` bytes -> ``(..., length)`` codes, low nibble first."""
    codes = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=np.uint8)
    codes[..., 0::2] = packed & np.uint8(15)
    codes[..., 1::2] = packed >> np.uint8(4)
    return codes[..., :length]


def ort_quantize(weight: np.ndarray, bits: int, block_size: int) -> NBitsWeight:
    """``weight`` float ``(N, K)`` as an asymmetric ``bits``-bit
    :class:`NBitsWeight` with blocks of ``block_size`` along K (the last block
    zero-padded when ``block_size`` does not divide K)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    rows, k = weight.shape
    transposed = np.ascontiguousarray(np.asarray(weight, dtype=np.float32).T)  # (K, N)
    blocks = -(-k // block_size)
    per_byte = 8 // bits
    packed = np.zeros((rows, blocks, block_size // per_byte), dtype=np.uint8)
    scales = np.zeros((rows, blocks), dtype=np.float32)
    zp_packed = np.zeros((rows, -(-blocks // per_byte)), dtype=np.uint8)
    quantize = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    quantize(packed, transposed, scales, zp_packed, block_size, rows, k, False)
    if bits == 4:
        codes = _unpack_nibbles(packed, block_size)
        zero_points = _unpack_nibbles(zp_packed, blocks)
    else:
        codes, zero_points = packed, zp_packed
    return NBitsWeight(codes, scales, zero_points, bits, k)
