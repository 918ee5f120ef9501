"""The free minimums of GGUF block types (Q4_1, Q4_K, Q5_1, Q5_K) on MLAS's fast path.

A block of such a type is ``w = s q + m``. ``MatMulNBits`` prepacks only uint8
zero points, so ``s q`` runs there and the minimums are a second term,
``sums(x) @ mins.T``, where ``sums`` are the per-block sums of ``x``:

* :func:`centred` moves zero point 0 to the operator's default (no zero-point
  input, centred codes) and folds the difference into the minimums;
* :func:`with_block_sum_rows` appends one output row per block to the main
  ``MatMulNBits`` whose product with ``x`` is that block's sum, so the sums come
  from the activations exactly as the weights see them;
* :func:`min_term` writes ``Split`` (product -> main, sums), the minimums term
  and the ``Add``. At accuracy_level < 4 the term is an exact fp32 ``MatMul``.
  At level 4 (int8 activations, already approximate) with 4-bit codes it is an
  8-bit ``MatMulNBits`` over :func:`int8_rows` of the minimums (block 32,
  symmetric): a quarter of the bytes of the fp32 minimums, which a memory-bound
  decode step reads on every token (bench/RESULTS.md, issue 13: 6.4 vs 6.9 ms
  per step, KL to fp32 0.0029 vs 0.0024 nats/token on the default model).
  8-bit codes (Q5_1, Q5_K) keep fp32 minimums: centred on 128, their minimums
  carry ``128 s`` that the codes' term cancels, so rounding them to 8 bits
  costs ~10x the error of the int8 activations (:func:`int8_minimums`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .quant_pack import INT8_ACTIVATIONS, NBitsWeight, float_initializer, matmul_nbits

__all__ = ["centred", "int8_minimums", "int8_rows", "min_term", "with_block_sum_rows"]

MINS_BLOCK = 32  # MLAS's int8-activation kernel is slower with blocks of 16 here


def centred(weight: NBitsWeight, mins: np.ndarray) -> tuple[NBitsWeight, np.ndarray]:
    """Zero points 0 (a type with free minimums) moved to the operator's default
    ``z = 2 ** (bits - 1)``: ``s q + m = s (q - z) + (m + z s)``, so no zero-point
    input is read and, with int8 activations, the codes the kernel multiplies are
    centred. ``z s`` is exact in float32; ``m + z s`` is one float32 rounding."""
    if np.any(weight.zero_points != 0):
        return weight, mins
    z = 1 << (weight.bits - 1)
    moved = NBitsWeight(weight.codes, weight.scales, np.full_like(weight.zero_points, z),
                        weight.bits, weight.k)  # fmt: skip
    return moved, (mins + np.float32(z) * weight.scales).astype(np.float32)


def with_block_sum_rows(weight: NBitsWeight) -> NBitsWeight:
    """``weight`` plus one row per block of K whose product with ``x`` is that
    block's sum of ``x`` (code ``z + 1`` in its block, ``z`` elsewhere, scale 1):
    the sums the minimums term needs come out of the same ``MatMulNBits``, from
    the activations exactly as the weights see them (fp32 at accuracy_level 1,
    int8 at 4, so the two terms stay consistent)."""
    blocks, size = weight.codes.shape[1], weight.block_size
    z = weight.zero_points.reshape(-1)[0] if weight.zero_points.size else 0
    if np.any(weight.zero_points != z):
        raise ValueError("block-sum rows need one zero point for the whole weight")
    codes = np.full((blocks, blocks, size), z, dtype=np.uint8)
    codes[np.arange(blocks), np.arange(blocks)] = z + 1
    return NBitsWeight(
        np.concatenate([weight.codes, codes]),
        np.concatenate([weight.scales, np.ones((blocks, blocks), np.float32)]),
        np.concatenate([weight.zero_points, np.full((blocks, blocks), z, np.uint8)]),
        weight.bits,
        weight.k,
    )


def int8_rows(matrix: np.ndarray, block: int = MINS_BLOCK) -> NBitsWeight:
    """``matrix`` ``(N, K)`` as a symmetric 8-bit weight: per block of ``block``
    along K, scale ``max|v| / 127`` and codes ``round(v / scale) + 128`` (the
    default zero point), the tail block padded with zeros. Each value is off by
    at most half its block's scale."""
    rows, k = matrix.shape
    padded = np.zeros((rows, -(-k // block) * block), np.float32)
    padded[:, :k] = matrix
    blocks = padded.reshape(rows, -1, block)
    scales = np.abs(blocks).max(axis=-1) / np.float32(127)
    scales = np.where(scales == 0, np.float32(1), scales).astype(np.float32)
    codes = np.clip(np.rint(blocks / scales[..., None]), -127, 127) + 128
    zero = np.full(scales.shape, 128, np.uint8)
    return NBitsWeight(codes.astype(np.uint8), scales, zero, 8, k)


Built = tuple[list[onnx.NodeProto], list[onnx.TensorProto]]


def int8_minimums(bits: int, accuracy_level: int) -> bool:
    """Whether the minimums term of a ``bits``-bit weight runs in 8 bits: at
    int8 activations and for 4-bit codes, whose centred minimums ``m + 8 s``
    stay small (8-bit codes carry ``m + 128 s``)."""
    return accuracy_level >= INT8_ACTIVATIONS and bits == 4


def min_term(prefix: str, product: str, out: str, n: int, mins: np.ndarray, *,
             int8: bool, accuracy_level: int) -> Built:  # fmt: skip
    """Nodes turning ``product`` (``[..., n + blocks]``: the main product, then the
    block sums) into ``out = main + sums @ mins.T``; ``mins`` is ``(n, blocks)``,
    in fp32 or (``int8``) as :func:`int8_rows` at ``accuracy_level``."""
    blocks = mins.shape[1]
    sizes = numpy_helper.from_array(np.array([n, blocks], np.int64), f"{prefix}.split_sizes")
    main, sums, term = f"{prefix}.main", f"{prefix}.block_sums", f"{prefix}.min_term"
    inits: list[onnx.TensorProto] = [sizes]
    nodes = [helper.make_node("Split", [product, sizes.name], [main, sums],
                              name=f"{prefix}.split", axis=-1)]  # fmt: skip
    if int8:
        node, term_inits = matmul_nbits(term, sums, term, int8_rows(mins),
                                        accuracy_level=accuracy_level)  # fmt: skip
        nodes.append(node)
        inits += term_inits
    else:
        mins_t = float_initializer(f"{prefix}.mins", np.ascontiguousarray(mins.T))
        nodes.append(helper.make_node("MatMul", [sums, mins_t.name], [term], name=term))
        inits.append(mins_t)
    nodes.append(helper.make_node("Add", [main, term], [out], name=f"{prefix}.sum"))
    return nodes, inits
