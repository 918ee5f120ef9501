"""Linear and embedding layers as ONNX nodes, in fp32 or weight-only int8/int4.

:func:`linear` writes ``out = x @ W.T (+ bias)`` for a weight ``W[N, K]``
(Hugging Face orientation) and :func:`embedding` writes ``out = W[ids]``;
both return the :class:`Nodes` to add to a graph, every name prefixed by
``prefix``.

* ``fp32``: ``MatMul`` on the float32 weights (a GGUF block type dequantised
  exactly as ``gguf.quants.dequantize`` does), then ``Add`` of the bias.
* ``int4``/``int8`` from a GGUF block type: the tensor keeps its own codes and
  scales (:mod:`.quant_gguf`), one ``MatMulNBits`` with uint8 zero points, or
  none when they all equal the operator's default (the forms ONNX Runtime
  prepacks); Q4_1/Q4_K/Q5_1/Q5_K add their minimums as
  ``block sums of x @ mins.T`` (:mod:`.quant_mins`): the same ``MatMulNBits``
  also writes the block sums of ``x`` (one extra row per block), a ``Split``
  takes them off and a small ``MatMul`` + ``Add`` applies the minimums, exact
  in fp32 except at accuracy_level 4 with 4-bit codes (8-bit minimums).
* ``int4``/``int8`` from float weights (ndarray, F32/F16/BF16 tensors):
  quantised by ONNX Runtime's quantiser (:mod:`.quant_ort`), asymmetric.
* 8-bit codes at ``accuracy_level`` < 4 run as two exact 4-bit
  ``MatMulNBits`` (high and low nibbles, :func:`.quant_pack.split_nibbles`):
  MLAS has no fp32-activation 8-bit kernel and would dequantise the whole
  matrix on every call. At level 4 (int8 activations) the 8-bit kernel
  exists and is used as is.
* :func:`embedding`: ``GatherBlockQuantized`` over a GGUF table without free
  minimums (exact, a quarter of the memory), else ``Gather`` over float32.
  A tied LM head goes through :func:`linear` with the embedding's tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ferrum_core.errors import UnsupportedError
from ferrum_core.plugin import StoredTensor, to_float32

from .quant_gguf import GgufWeight, gguf_weight
from .quant_mins import centred, int8_minimums, min_term, with_block_sum_rows
from .quant_ort import ort_quantize
from .quant_pack import (
    INT8_ACTIVATIONS,
    MS_DOMAIN,
    NBitsWeight,
    float_initializer,
    matmul_nbits,
    pack_rows,
    split_nibbles,
)

__all__ = ["Mode", "Nodes", "embedding", "linear", "weight_float32"]

Mode = Literal["fp32", "int8", "int4"]
_MODES = ("fp32", "int8", "int4")


@dataclass(frozen=True, slots=True)
class Nodes:
    """Nodes (in execution order) and the initializers they read."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]


def weight_float32(weight: StoredTensor | np.ndarray) -> np.ndarray:
    """``weight`` as float32: block types dequantised bit-exactly (types that
    ``split_blocks`` does not know through ``gguf.quants``)."""
    floats: np.ndarray
    if not isinstance(weight, StoredTensor):
        floats = np.asarray(weight, dtype=np.float32)
        return floats
    try:
        floats = to_float32(weight)
        return floats
    except UnsupportedError:
        from gguf import GGMLQuantizationType, quants

        try:
            kind = GGMLQuantizationType[weight.type]
            array = quants.dequantize(np.asarray(weight.data), kind)
        except (KeyError, NotImplementedError):
            raise UnsupportedError(
                f"GGUF type {weight.type} of tensor {weight.name!r} cannot be dequantised"
            ) from None
        floats = np.asarray(array, dtype=np.float32).reshape(weight.shape)
        return floats


def _check(mode: str, weight: StoredTensor | np.ndarray, what: str) -> tuple[int, int]:
    if mode not in _MODES:
        raise UnsupportedError(f"{what}: dtype {mode!r} is not one of {', '.join(_MODES)}")
    shape = tuple(weight.shape)
    if len(shape) != 2:
        raise UnsupportedError(f"{what}: weight has shape {list(shape)}, not [out, in]")
    return int(shape[0]), int(shape[1])


def _nbits_parts(weight: NBitsWeight, accuracy_level: int) -> list[NBitsWeight]:
    if weight.bits == 8 and accuracy_level < INT8_ACTIVATIONS:
        return list(split_nibbles(weight))
    return [weight]


def _emit(
    prefix: str,
    x: str,
    out: str,
    weight: NBitsWeight,
    mins: np.ndarray | None,
    bias: np.ndarray | None,
    accuracy_level: int,
) -> Nodes:
    """``x @ W.T (+ bias)``; with ``mins`` (``(N, blocks)``) plus ``sums(x) @ mins.T``.

    With minimums the ``MatMulNBits`` gets one extra output column per block (its
    block sums) and :func:`.quant_mins.min_term` adds the minimums term."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    n = weight.n
    blocks = 0
    if mins is not None:
        if mins.shape != (n, weight.codes.shape[1]):
            raise ValueError(f"minimums {mins.shape} do not match the blocks of {prefix}")
        weight, mins = centred(weight, mins)
        weight = with_block_sum_rows(weight)
        blocks = mins.shape[1]
    bias_name: str | None = None
    if bias is not None:
        full = np.zeros(n + blocks, np.float32)
        full[:n] = np.asarray(bias, np.float32).reshape(n)
        bias_init = float_initializer(f"{prefix}.bias", full)
        inits.append(bias_init)
        bias_name = bias_init.name
    parts = _nbits_parts(weight, accuracy_level)
    terms: list[str] = []
    for index, part in enumerate(parts):
        name = f"{prefix}.matmul_nbits" + (f".{index}" if len(parts) > 1 else "")
        node, part_inits = matmul_nbits(
            name,
            x,
            name,
            part,
            accuracy_level=accuracy_level,
            bias=bias_name if index == 0 else None,
        )
        nodes.append(node)
        inits += part_inits
        terms.append(name)
    product = f"{prefix}.product" if mins is not None else out
    if len(terms) == 1:  # a single MatMulNBits writes the product itself
        nodes[-1].output[0] = product
    else:
        nodes.append(helper.make_node("Add", terms, [product], name=f"{prefix}.parts"))
    if mins is None:
        return Nodes(nodes, inits)
    int8 = int8_minimums(weight.bits, accuracy_level)
    term_nodes, term_inits = min_term(prefix, product, out, n, mins, int8=int8,
                                      accuracy_level=accuracy_level)
    return Nodes(nodes + term_nodes, inits + term_inits)


def linear(
    prefix: str,
    x: str,
    out: str,
    weight: StoredTensor | np.ndarray,
    *,
    bias: np.ndarray | None,
    mode: Mode,
    accuracy_level: int = 1,
    block_size: int = 32,
) -> Nodes:
    """``out = x @ W.T (+ bias)`` for ``weight`` ``W[N, K]``; ``x`` is
    ``[..., K]`` (rank 2 or 3), ``out`` ``[..., N]``. See the module docs for
    the forms per ``mode``; ``accuracy_level`` goes to ``MatMulNBits``
    (1: fp32 activations, exact; 4: int8 activations) and ``block_size`` is
    the quantiser's block for float weights (GGUF types keep their own).

    Raises :class:`UnsupportedError` naming the GGUF type and tensor for a
    block type with no exact ``MatMulNBits`` form."""
    n, _ = _check(mode, weight, f"linear {prefix}")
    if block_size < 16 or block_size & (block_size - 1):
        raise UnsupportedError(
            f"linear {prefix}: block_size {block_size} is not a power of two >= 16 "
            "(MatMulNBits' blocks)"
        )
    if accuracy_level not in range(5):
        raise UnsupportedError(
            f"linear {prefix}: accuracy_level {accuracy_level} is not 0-4 "
            "(1: fp32 activations, 4: int8 activations)"
        )
    if mode == "fp32":
        w_t = float_initializer(f"{prefix}.weight_t", weight_float32(weight).T)
        if bias is None:
            return Nodes([helper.make_node("MatMul", [x, w_t.name], [out], name=prefix)], [w_t])
        b = float_initializer(f"{prefix}.bias", np.asarray(bias).reshape(n))
        matmul = helper.make_node("MatMul", [x, w_t.name], [f"{prefix}.matmul"], name=prefix)
        add = helper.make_node("Add", [matmul.output[0], b.name], [out], name=f"{prefix}.bias_add")
        return Nodes([matmul, add], [w_t, b])
    if isinstance(weight, StoredTensor) and weight.quantized:
        gguf: GgufWeight = gguf_weight(weight)
        return _emit(prefix, x, out, gguf.weight, gguf.mins, bias, accuracy_level)
    bits = 4 if mode == "int4" else 8
    quantised = ort_quantize(weight_float32(weight), bits, block_size)
    return _emit(prefix, x, out, quantised, None, bias, accuracy_level)


def embedding(
    prefix: str,
    ids: str,
    out: str,
    weight: StoredTensor | np.ndarray,
    *,
    mode: Mode,
) -> Nodes:
    """``out = W[ids]`` for ``weight`` ``W[vocab, hidden]``; ``out`` is
    ``[*ids.shape, hidden]``.

    In ``int4``/``int8`` a GGUF block type without free minimums (Q4_0, Q5_0,
    Q8_0, Q6_K: the LM head's usual types) stays as stored, in a
    ``GatherBlockQuantized`` (exact: ``scale * (code - zero_point)`` in
    float32, bit-equal to the dequantised table, at a quarter of its memory
    or less; one row per token, so it costs no time). Everything else is a
    ``Gather`` over the exact float32 table (a lookup reads one row per
    token, so quantising float weights would only lose accuracy)."""
    _check(mode, weight, f"embedding {prefix}")
    if mode != "fp32" and isinstance(weight, StoredTensor) and weight.quantized:
        gguf = gguf_weight(weight)
        if gguf.mins is None:
            return _gather_blocks(prefix, ids, out, gguf.weight)
    table = float_initializer(f"{prefix}.weight", weight_float32(weight))
    node = helper.make_node("Gather", [table.name, ids], [out], name=prefix, axis=0)
    return Nodes([node], [table])


def _gather_blocks(prefix: str, ids: str, out: str, weight: NBitsWeight) -> Nodes:
    codes = numpy_helper.from_array(
        pack_rows(weight.codes.reshape(weight.n, -1), weight.bits), f"{prefix}.qweight"
    )
    scales = float_initializer(f"{prefix}.scales", weight.scales)
    zeros = numpy_helper.from_array(
        pack_rows(weight.zero_points, weight.bits), f"{prefix}.zero_points"
    )
    node = helper.make_node(
        "GatherBlockQuantized",
        [codes.name, ids, scales.name, zeros.name],
        [out],
        name=prefix,
        domain=MS_DOMAIN,
        gather_axis=0,
        quantize_axis=1,
        block_size=weight.block_size,
        bits=weight.bits,
    )
    return Nodes([node], [codes, scales, zeros])
