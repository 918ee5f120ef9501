"""The one call site for weight matrices in the graph: plain fp32 here, or
:mod:`ferrum_cpu.quant` (``MatMulNBits`` / ``GatherBlockQuantized``) once present.

Every linear layer and the embedding go through :func:`linear` and
:func:`embedding`, so the quantised builders replace the fp32 ones in one place.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from ferrum_core.errors import UnsupportedError

if TYPE_CHECKING:
    from ferrum_core.plugin import StoredTensor

__all__ = ["Mode", "Nodes", "embedding", "linear", "quant_available"]

Mode = Literal["fp32", "int8", "int4"]


@dataclass(frozen=True, slots=True)
class Nodes:
    """Nodes and the initializers they read (the shape :mod:`ferrum_cpu.quant` returns)."""

    nodes: list[NodeProto]
    initializers: list[TensorProto]


def quant_available() -> bool:
    """Whether the quantised builders (:mod:`ferrum_cpu.quant`) are installed."""
    return importlib.util.find_spec("ferrum_cpu.quant") is not None


def _floats(weight: StoredTensor | np.ndarray) -> np.ndarray:
    if isinstance(weight, np.ndarray):
        return np.asarray(weight, dtype=np.float32)
    from ferrum_core.plugin import split_blocks

    if weight.quantized:
        return split_blocks(weight).dequantize()
    return np.asarray(weight.data, dtype=np.float32).reshape(weight.shape)


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
    """``out = x @ weight.T (+ bias)``; ``weight`` in Hugging Face orientation ``[out, in]``."""
    if mode != "fp32":
        if not quant_available():
            raise UnsupportedError(
                f"dtype {mode} needs ferrum_cpu.quant (the quantised-linear builders), "
                "which is not installed"
            )
        from ferrum_cpu import quant

        built = quant.linear(prefix, x, out, weight, bias=bias, mode=mode,
                             accuracy_level=accuracy_level, block_size=block_size)
        return Nodes(list(built.nodes), list(built.initializers))
    w = np.ascontiguousarray(_floats(weight).T)
    inits = [numpy_helper.from_array(w, f"{prefix}.weight_t")]
    if bias is None:
        return Nodes([helper.make_node("MatMul", [x, inits[0].name], [out], name=prefix)], inits)
    inits.append(numpy_helper.from_array(np.asarray(bias, np.float32), f"{prefix}.bias"))
    nodes = [
        helper.make_node("MatMul", [x, inits[0].name], [f"{prefix}.mm"], name=prefix),
        helper.make_node("Add", [f"{prefix}.mm", inits[1].name], [out], name=f"{prefix}.add"),
    ]
    return Nodes(nodes, inits)


def embedding(
    prefix: str, ids: str, out: str, weight: StoredTensor | np.ndarray, *, mode: Mode
) -> Nodes:
    """``out = weight[ids]`` (rows of ``[vocab, hidden]``)."""
    if mode != "fp32" and quant_available():
        from ferrum_cpu import quant

        built = quant.embedding(prefix, ids, out, weight, mode=mode)
        return Nodes(list(built.nodes), list(built.initializers))
    table = numpy_helper.from_array(np.ascontiguousarray(_floats(weight)), f"{prefix}.weight")
    node = helper.make_node("Gather", [table.name, ids], [out], name=prefix, axis=0)
    return Nodes([node], [table])
