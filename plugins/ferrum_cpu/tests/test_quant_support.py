"""Shared by the quant tests: GGUF tensors built in memory, one-graph runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from ferrum_cpu.quant import Nodes
from onnx import TensorProto, helper, numpy_helper

from ferrum_core.plugin import StoredTensor

# byte offsets of the float16 fields in each block (d, and m / dmin)
F16_FIELDS = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}


def gguf_tensor(kind: str, rows: int, cols: int, seed: int) -> tuple[StoredTensor, np.ndarray]:
    """A ``kind`` tensor ``(rows, cols)`` and its float32 weights by
    ``gguf.quants.dequantize``. Types gguf-py can quantise quantise random
    weights; the others (K-quants) are random blocks with finite, realistic
    float16 fields."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[kind]
    block, size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((rows, cols)).astype(np.float32) * 0.1
    try:
        data = quants.quantize(weights, qtype)
    except NotImplementedError:
        raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
        for offset in F16_FIELDS.get(kind, (0,)):
            scale = (rng.standard_normal((rows, cols // block)) * 0.01).astype(np.float16)
            raw[:, :, offset : offset + 2] = scale.view(np.uint8).reshape(rows, -1, 2)
        data = raw.reshape(rows, -1)
    stored = StoredTensor(f"blk.0.{kind.lower()}.weight", (rows, cols), kind, data, block, size)
    dequantised = quants.dequantize(data, qtype).astype(np.float32).reshape(rows, cols)
    return stored, dequantised


def build(nodes: Nodes, inputs: dict[str, np.ndarray], out: str, rank: int) -> onnx.ModelProto:
    """A model of ``nodes`` with inputs of the given arrays' ranks (float32 or
    int64) and one float output ``out`` of ``rank`` dimensions."""
    values = []
    for name, array in inputs.items():
        kind = TensorProto.FLOAT if array.dtype == np.float32 else TensorProto.INT64
        dims = [f"{name}{i}" for i in range(array.ndim - 1)] + [array.shape[-1]]
        if kind == TensorProto.INT64:
            dims = [f"{name}{i}" for i in range(array.ndim)]
        values.append(helper.make_tensor_value_info(name, kind, dims))
    graph = helper.make_graph(
        nodes.nodes,
        "quant_test",
        values,
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [f"o{i}" for i in range(rank)])],
        nodes.initializers,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def run(nodes: Nodes, inputs: dict[str, np.ndarray], out: str = "y", rank: int = 0) -> np.ndarray:
    """Run ``nodes`` once in ONNX Runtime (CPU, one thread); ``out`` has
    ``rank`` dimensions (default: those of the first input)."""
    rank = rank or next(iter(inputs.values())).ndim
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = build(nodes, inputs, out, rank).SerializeToString()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run([out], inputs)[0]
    return result


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest error relative to the largest reference magnitude."""
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / np.abs(want).max())


def initializer(nodes: Nodes, name: str) -> np.ndarray:
    """The initializer ``name`` as an array."""
    for tensor in nodes.initializers:
        if tensor.name == name:
            array: np.ndarray = numpy_helper.to_array(tensor)
            return array
    raise KeyError(name)
