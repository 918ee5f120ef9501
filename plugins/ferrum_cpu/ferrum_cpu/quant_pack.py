"""Block-quantised weights in the layout of ONNX Runtime's ``MatMulNBits``.

A :class:`NBitsWeight` is a weight ``W[N, K]`` (Hugging Face orientation) as
``W[n, k] = scales[n, b] * (codes[n, k] - zero_points[n, b])`` with
``b = k // block_size``: unsigned integer codes of ``bits`` bits, float32
scales and uint8 zero points, one per block of ``block_size`` elements along
K. :func:`matmul_nbits` writes it as one ``com.microsoft.MatMulNBits`` node
(codes packed two per byte for 4 bits, low nibble first; zero points packed
the same way), the layout ONNX Runtime prepacks for its MLAS kernels.

:func:`split_nibbles` rewrites an 8-bit weight as two exact 4-bit weights
(``codes = 16 * high + low``): MLAS has no fp32-activation kernel for 8 bits
(it dequantises the whole matrix on every call), but it has one for 4 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["NBitsWeight", "default_zero_point", "matmul_nbits", "pack_rows", "split_nibbles"]

MS_DOMAIN = "com.microsoft"
INT8_ACTIVATIONS = 4  # accuracy_level at which MLAS runs int8 x int8 kernels


@dataclass(frozen=True, slots=True)
class NBitsWeight:
    """``codes`` uint8 ``(N, blocks, block_size)``; ``scales`` float32 and
    ``zero_points`` uint8, both ``(N, blocks)``; ``k`` the columns of ``W``
    (the last block may be padded past it)."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    bits: int
    k: int

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.codes.shape[2])

    def dequantize(self) -> np.ndarray:
        """``W`` as float32 ``(N, K)`` (what the operator computes with)."""
        centred = self.codes.astype(np.float32) - self.zero_points[..., None].astype(np.float32)
        full = (self.scales[..., None] * centred).reshape(self.n, -1)
        return full[:, : self.k]


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 ``(..., L)`` -> ``(..., ceil(L * bits / 8))``: for 4 bits element
    ``2i`` in the low nibble of byte ``i`` and ``2i + 1`` in the high one (an
    odd tail is padded with 0); 8 bits as they are."""
    values = np.ascontiguousarray(values, dtype=np.uint8)
    if bits == 8:
        return values
    if bits != 4:
        raise ValueError(f"cannot pack {bits}-bit values")
    if values.shape[-1] % 2:
        pad = np.zeros((*values.shape[:-1], 1), dtype=np.uint8)
        values = np.concatenate([values, pad], axis=-1)
    return np.ascontiguousarray(values[..., 0::2] | (values[..., 1::2] << np.uint8(4)))


def split_nibbles(weight: NBitsWeight) -> tuple[NBitsWeight, NBitsWeight]:
    """An 8-bit weight as ``(high, low)`` 4-bit weights whose sum is exactly
    it: ``s (c - z) = 16 s (c_hi - z_hi) + s (c_lo - z_lo)`` with
    ``c = 16 c_hi + c_lo`` and ``z = 16 z_hi + z_lo``. ``16 s`` is exact in
    float32, so each product is the one the 8-bit weight would give."""
    if weight.bits != 8:
        raise ValueError("split_nibbles takes an 8-bit weight")
    four = np.uint8(4)
    high = NBitsWeight(
        weight.codes >> four,
        weight.scales * np.float32(16),
        weight.zero_points >> four,
        4,
        weight.k,
    )
    low = NBitsWeight(
        weight.codes & np.uint8(15), weight.scales, weight.zero_points & np.uint8(15), 4, weight.k
    )
    return high, low


def matmul_nbits(
    name: str,
    x: str,
    out: str,
    weight: NBitsWeight,
    *,
    accuracy_level: int,
    bias: str | None = None,
    zero_points: bool | None = None,
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """One ``MatMulNBits`` node computing ``out = x @ W.T (+ bias)`` and its
    initializers (``{name}.qweight``, ``.scales``, ``.zero_points``).

    ``zero_points=False`` leaves the input out (the operator then uses
    ``2 ** (bits - 1)``); it must equal every zero point of ``weight``.
    ``None`` (the default) leaves it out exactly when it may: both forms are
    prepacked, the default one reads no zero points."""
    default = default_zero_point(weight)
    if zero_points is None:
        zero_points = not default
    if not zero_points and not default:
        raise ValueError("the default zero point differs from the weight's")
    qweight = numpy_helper.from_array(pack_rows(weight.codes, weight.bits), f"{name}.qweight")
    scales = numpy_helper.from_array(
        np.ascontiguousarray(weight.scales, dtype=np.float32).reshape(-1), f"{name}.scales"
    )
    inits = [qweight, scales]
    inputs = [x, qweight.name, scales.name]
    if zero_points:
        packed = pack_rows(weight.zero_points, weight.bits).reshape(-1)
        zp = numpy_helper.from_array(packed, f"{name}.zero_points")
        inits.append(zp)
        inputs.append(zp.name)
    if bias is not None:
        inputs += [""] * (5 - len(inputs)) + [bias]
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        [out],
        name=name,
        domain=MS_DOMAIN,
        K=weight.k,
        N=weight.n,
        bits=weight.bits,
        block_size=weight.block_size,
        accuracy_level=accuracy_level,
    )
    return node, inits


def default_zero_point(weight: NBitsWeight) -> bool:
    """Whether every zero point of ``weight`` is the operator's default ``2 ** (bits - 1)``."""
    return bool(np.all(weight.zero_points == 1 << (weight.bits - 1)))


def float_initializer(name: str, array: np.ndarray) -> TensorProto:
    """A float32 initializer named ``name``."""
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)
