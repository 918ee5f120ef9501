"""Weights as MLX affine-quantised matrices: ``w = scales * codes + biases`` per group.

Three sources, one form (:class:`AffineWeight`, what ``mx.quantized_matmul`` takes):

* a GGUF tensor keeps its own type exactly. :func:`ferrum_core.plugin.split_blocks`
  gives per-group ``scales``, ``mins`` and integer ``codes``; MLX's affine form
  is the same equation with ``biases = mins``. Q4_0 (``mins = -8 d``), Q4_1,
  Q4_K's 32-wide sub-blocks: 4 bits, group 32; Q5_0 / Q5_1 / Q5_K: 5 bits;
  Q8_0's signed codes move to ``q + 128`` with ``biases = -128 d`` (exact in
  float32). Q6_K's 16-wide groups (and every other type) have no MLX form:
  an :class:`UnsupportedError` naming the type.
* an MLX folder's matrices (:meth:`WeightSource.mlx_quantized`) as stored.
* float weights, quantised here with ``mx.quantize`` (``--dtype int4`` / ``int8``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from ferrum_core.errors import UnsupportedError
from ferrum_core.plugin import StoredTensor, split_blocks

__all__ = ["GGUF_BITS", "AffineWeight", "from_gguf", "from_mlx_folder", "pack_codes",
           "quantize_float"]

GGUF_BITS = {"Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q5_0": 5, "Q5_1": 5, "Q5_K": 5, "Q8_0": 8}
"""GGUF block types with an exact MLX affine form, and their width in bits."""

GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True, slots=True)
class AffineWeight:
    """``weight`` uint32 ``[rows, cols * bits / 32]``, ``scales``/``biases`` ``[rows, groups]``."""

    weight: mx.array
    scales: mx.array
    biases: mx.array
    group_size: int
    bits: int
    source: str  # "Q4_1", "Q8_0", "Q4_MLX", "mx.quantize"...

    @property
    def shape(self) -> tuple[int, int]:
        rows, words = self.weight.shape
        return int(rows), int(words) * 32 // self.bits

    @property
    def nbytes(self) -> int:
        return int(self.weight.nbytes + self.scales.nbytes + self.biases.nbytes)

    def dequantize(self) -> mx.array:
        return mx.dequantize(self.weight, self.scales, self.biases,
                             group_size=self.group_size, bits=self.bits)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes ``[rows, cols]`` -> uint32 words ``[rows, cols * bits / 32]``:
    a little-endian bit stream along each row (MLX's layout for every width)."""
    rows, cols = codes.shape
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if bits == 8:
        packed = codes
    elif bits == 4:
        pairs = codes.reshape(rows, cols // 2, 2)
        packed = pairs[..., 0] | (pairs[..., 1] << np.uint8(4))
    else:
        stream = np.unpackbits(codes[..., None], axis=-1, bitorder="little")[..., :bits]
        packed = np.packbits(stream.reshape(rows, cols * bits), axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view(np.uint32).reshape(rows, cols * bits // 32)


def from_gguf(stored: StoredTensor, dtype: Any) -> AffineWeight:
    """A GGUF matrix in its own quantisation; scales and biases in ``dtype``."""
    bits = GGUF_BITS.get(stored.type)
    if bits is None or len(stored.shape) != 2:
        raise UnsupportedError(
            f"the mlx backend cannot express GGUF type {stored.type} of tensor "
            f"{stored.name!r} as an MLX affine-quantised matrix (it takes "
            f"{', '.join(GGUF_BITS)}; use --dtype fp32/fp16/bf16 to run it dequantised)"
        )
    blocks = split_blocks(stored)
    scales, mins, codes = blocks.scales, blocks.mins, blocks.codes
    if stored.type == "Q8_0":
        codes = (codes.astype(np.int16) + 128).astype(np.uint8)
        mins = scales * np.float32(-128.0)
    rows = stored.shape[0]
    packed = pack_codes(codes.reshape(rows, -1), bits)
    return AffineWeight(
        mx.array(packed), mx.array(scales).astype(dtype), mx.array(mins).astype(dtype),
        blocks.group_size, bits, stored.type,
    )


def from_mlx_folder(tensor: Any, dtype: Any) -> AffineWeight:
    """An :class:`~ferrum_core.models.mlx_quant.MlxQuantTensor` as stored."""
    return AffineWeight(
        mx.array(np.ascontiguousarray(tensor.weight)),
        mx.array(np.asarray(tensor.scales)).astype(dtype),
        mx.array(np.asarray(tensor.biases)).astype(dtype),
        int(tensor.group_size), int(tensor.bits), str(tensor.type),
    )


def quantize_float(
    name: str, array: np.ndarray, bits: int, group_size: int, dtype: Any
) -> AffineWeight:
    """``mx.quantize`` of a float matrix with ``group_size`` (or the largest of 64 / 32
    that divides its width); a width no group size divides is an UnsupportedError."""
    cols = int(array.shape[-1])
    choices = [group_size] + [g for g in (64, 32) if g < group_size]
    group = next((g for g in choices if cols % g == 0), None)
    if group is None or array.ndim != 2:
        raise UnsupportedError(
            f"the mlx backend cannot quantise tensor {name!r} (shape {list(array.shape)}) to "
            f"{bits} bits: MLX groups of {' or '.join(map(str, choices))} do not divide its "
            f"width {cols}"
        )
    weight, scales, biases = mx.quantize(mx.array(np.asarray(array, np.float32)),
                                         group_size=group, bits=bits)
    return AffineWeight(weight, scales.astype(dtype), biases.astype(dtype), group, bits,
                        "mx.quantize")
