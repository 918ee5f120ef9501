"""ONNX Runtime's CPU matmul kernels by weight format and row count (issue 13).

Why the ``cpu`` backend's 16-row decode step scales as it does: one session
per weight format, each a chain of ``--layers`` x (576 -> 1536 -> 576)
projections (the default model's MLP widths, random weights, 2 threads), timed
at M = 1, 4, 8 and 16 rows of activations:

* ``fp32``: ``MatMul`` (MLAS SGEMM);
* ``nb4-l4`` / ``nb4-l1`` / ``nb8-l4``: ``MatMulNBits`` (block 32) with int8
  activations (accuracy_level 4) or fp32 activations (level 1), as the
  backend builds them (:func:`ferrum_cpu.quant_pack.matmul_nbits`);
* ``int8-gemm``: ``DynamicQuantizeMatMul``: per-tensor uint8 activations x
  per-column int8 weights (MLAS QGEMM), the kernel a batched int8 path would use.

Run (not part of the test run)::

    .venv/bin/python bench/cpu_kernels.py
    .venv/bin/python bench/cpu_kernels.py --formats nb4-l4,int8-gemm --rows 1,16
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

FORMATS = ("fp32", "nb4-l4", "nb4-l1", "nb8-l4", "int8-gemm")
HIDDEN, INTERMEDIATE = 576, 1536


def chain(kind: str, layers: int, rng: np.random.Generator) -> bytes:
    from ferrum_cpu.quant_pack import NBitsWeight, matmul_nbits

    nodes, inits = [], []
    current = "x"
    for layer in range(layers):
        for part, (k, n) in enumerate(((HIDDEN, INTERMEDIATE), (INTERMEDIATE, HIDDEN))):
            out, name = f"t{layer}_{part}", f"w{layer}_{part}"
            if kind == "fp32":
                w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
                inits.append(numpy_helper.from_array(w, name))
                nodes.append(helper.make_node("MatMul", [current, name], [out]))
            elif kind.startswith("nb"):
                bits, level = int(kind[2]), int(kind[-1])
                codes = rng.integers(0, 1 << bits, (n, k // 32, 32)).astype(np.uint8)
                zero = np.full((n, k // 32), 1 << (bits - 1), np.uint8)
                scales = (rng.random((n, k // 32)) * 0.01).astype(np.float32)
                node, node_inits = matmul_nbits(name, current, out,
                                                NBitsWeight(codes, scales, zero, bits, k),
                                                accuracy_level=level)  # fmt: skip
                nodes.append(node)
                inits += node_inits
            else:
                codes8 = rng.integers(-127, 128, (k, n)).astype(np.int8)
                scale = (rng.random(n) * 1e-3).astype(np.float32)
                inits += [numpy_helper.from_array(codes8, name),
                          numpy_helper.from_array(scale, f"{name}.scale")]
                nodes.append(helper.make_node("DynamicQuantizeMatMul",
                                              [current, name, f"{name}.scale"], [out],
                                              domain="com.microsoft"))  # fmt: skip
            current = out
    graph = helper.make_graph(
        nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", HIDDEN])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["M", HIDDEN])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"comma-separated subset of {', '.join(FORMATS)}")
    parser.add_argument("--rows", default="1,4,8,16")
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown formats {unknown}; choose from {', '.join(FORMATS)}")
    rows = [int(r) for r in args.rows.split(",")]

    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weights = args.layers * 2 * HIDDEN * INTERMEDIATE
    print(f"ms per chain of {args.layers} x ({HIDDEN} -> {INTERMEDIATE} -> {HIDDEN}) "
          f"({weights / 1e6:.1f}M weights), {args.threads} threads, median of {args.runs}")
    print(f"{'format':<10}" + "".join(f"{f'M={m}':>9}" for m in rows))
    for kind in formats:
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(chain(kind, args.layers, rng), options,
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        cells = []
        for m in rows:
            x = (rng.standard_normal((m, HIDDEN)) * 0.1).astype(np.float32)
            for _ in range(3):
                session.run(None, {"x": x})
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                session.run(None, {"x": x})
                times.append(time.perf_counter() - start)
            cells.append(f"{1000 * statistics.median(times):>9.2f}")
        print(f"{kind:<10}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
