"""Time decode-shaped linear layers in the forms :mod:`.quant` could emit.

``python -m ferrum_cpu.quant_bench [--threads 1] [--layer]`` builds, for
``x[1, 576]`` and ``W[1536, 576]`` / ``W[49152, 576]`` (SmolLM2-135M's MLP
and LM head shapes), Q4_1 and Q8_0 blocks from random weights and times one
ONNX Runtime session per form (best of short interleaved rounds, microseconds
per call), with the error against ``x @ dequantised(W).T``. Not a test: the
figures back the choices in :mod:`.quant` (numbers in its report).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ferrum_core.plugin import StoredTensor

from .quant import Nodes, linear
from .quant_gguf import gguf_weight
from .quant_ort import ort_quantize
from .quant_pack import MS_DOMAIN, NBitsWeight, matmul_nbits, split_nibbles

K = 576


def model(nodes: Nodes, k: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes.nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        nodes.initializers,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, 1)]
    built = helper.make_model(graph, opset_imports=opsets)
    built.ir_version = 10
    return built


def stored(kind: str, n: int, seed: int) -> StoredTensor:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[kind]
    w = np.random.default_rng(seed).standard_normal((n, K)).astype(np.float32) * 0.05
    block, size = GGML_QUANT_SIZES[qtype]
    return StoredTensor(f"w{n}", (n, K), kind, quants.quantize(w, qtype), block, size)


def float_zp_q41(st: StoredTensor) -> Nodes:
    """Q4_1 as ``d (q - z)`` with a float zero point ``z = -m / d``."""
    g = gguf_weight(st)
    assert g.mins is not None
    w = g.weight
    zp = (-g.mins / np.where(w.scales == 0, 1, w.scales)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w.codes[..., 0::2] | (w.codes[..., 1::2] << 4), "qw"),
        numpy_helper.from_array(w.scales.reshape(-1), "sc"),
        numpy_helper.from_array(zp.reshape(-1), "zp"),
    ]
    node = helper.make_node(
        "MatMulNBits", ["x", "qw", "sc", "zp"], ["y"], domain=MS_DOMAIN,
        K=K, N=w.n, bits=4, block_size=32, accuracy_level=1,
    )  # fmt: skip
    return Nodes([node], inits)


def single(weight: NBitsWeight, level: int, zp: bool = True) -> Nodes:
    node, inits = matmul_nbits("mm", "x", "y", weight, accuracy_level=level, zero_points=zp)
    return Nodes([node], inits)


def split(weight: NBitsWeight, level: int) -> Nodes:
    hi, lo = split_nibbles(weight)
    a, ia = matmul_nbits("hi", "x", "hi", hi, accuracy_level=level)
    b, ib = matmul_nbits("lo", "x", "lo", lo, accuracy_level=level)
    return Nodes([a, b, helper.make_node("Add", ["hi", "lo"], ["y"])], ia + ib)


def reduce_sum_q41(st: StoredTensor, level: int) -> Nodes:
    """zp 0 + minimums with block sums by Reshape/ReduceSum (rank-2 x only)."""
    g = gguf_weight(st)
    assert g.mins is not None
    node, inits = matmul_nbits("mm", "x", "mm", g.weight, accuracy_level=level)
    shape = numpy_helper.from_array(np.array([-1, K // 32, 32], dtype=np.int64), "shape")
    axes = numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes")
    mins = numpy_helper.from_array(np.ascontiguousarray(g.mins.T), "mins")
    nodes = [
        node,
        helper.make_node("Reshape", ["x", "shape"], ["xr"]),
        helper.make_node("ReduceSum", ["xr", "axes"], ["sums"], keepdims=0),
        helper.make_node("MatMul", ["sums", "mins"], ["mt"]),
        helper.make_node("Add", ["mm", "mt"], ["y"]),
    ]
    return Nodes(nodes, [*inits, shape, axes, mins])


def forms(n: int, level: int) -> dict[str, tuple[Nodes, np.ndarray]]:
    """name -> (nodes, the weights the form computes with)."""
    q41, q80 = stored("Q4_1", n, 1), stored("Q8_0", n, 2)
    d41 = gguf_weight(q41).weight.dequantize() + np.repeat(gguf_weight(q41).mins, 32, axis=1)  # type: ignore[arg-type]
    d80 = gguf_weight(q80).weight.dequantize()
    requant = ort_quantize(d41, 4, 32)
    exact = linear("l", "x", "y", q41, bias=None, mode="int4", accuracy_level=level)
    out = {
        "Q4_1 exact: zp0 + minimums (ferrum)": (exact, d41),
        "Q4_1 exact: zp0 + minimums via ReduceSum": (reduce_sum_q41(q41, level), d41),
        "Q4_1 zp0 alone (no minimums: lower bound)": (single(gguf_weight(q41).weight, level), d41),
        "Q4_1 re-quantised asym uint8 zp (ORT)": (single(requant, level), d41),
        "Q8_0 as 8-bit, zp 128": (single(gguf_weight(q80).weight, level), d80),
        "Q8_0 as 2 x 4-bit nibbles": (split(gguf_weight(q80).weight, level), d80),
        "fp32 MatMul (dequantised Q4_1)": (linear("l", "x", "y", d41, bias=None, mode="fp32"), d41),
    }
    if level == 1:
        out["Q4_1 float zero point"] = (float_zp_q41(q41), d41)
    return out


# one SmolLM2-135M layer: name -> (rows, input); inputs x, a, m [1, 576] and h [1, 1536]
LAYERS = {
    "fused": {"qkv": (960, "x"), "o": (576, "a"), "gate_up": (3072, "m"), "down": (576, "h")},
    "unfused": {"q": (576, "x"), "k": (192, "x"), "v": (192, "x"), "o": (576, "a")}
    | {"gate": (1536, "m"), "up": (1536, "m"), "down": (576, "h")},
}


def layer_forms(layout: dict[str, tuple[int, str]], level: int) -> dict[str, Nodes]:
    """A layer's Q4_1 linears in each form, as one graph per form."""
    forms: dict[str, list[Nodes]] = {"exact": [], "zp0 alone": []}
    forms["re-quantised (ORT)"] = []
    for index, (name, (n, src)) in enumerate(layout.items()):
        k = 1536 if src == "h" else K
        q41 = stored("Q4_1", n, index)
        q41 = StoredTensor(name, (n, k), "Q4_1", stored_k(q41, k), 32, 20)
        g = gguf_weight(q41)
        assert g.mins is not None
        dense = g.weight.dequantize() + np.repeat(g.mins, 32, axis=1)
        args = {"bias": None, "mode": "int4", "accuracy_level": level}
        forms["exact"].append(linear(name, src, f"y_{name}", q41, **args))  # type: ignore[arg-type]
        for label, weight in (("zp0 alone", g.weight), ("re-quantised (ORT)", None)):
            weight = weight if weight is not None else ort_quantize(dense, 4, 32)
            node, inits = matmul_nbits(name, src, f"y_{name}", weight, accuracy_level=level)
            forms[label].append(Nodes([node], inits))
    return {
        label: Nodes(
            [n for part in parts for n in part.nodes],
            [t for part in parts for t in part.initializers],
        )
        for label, parts in forms.items()
    }


def stored_k(st: StoredTensor, k: int) -> np.ndarray:
    """Random Q4_1 bytes for ``(rows, k)`` (the shape's K may differ from 576)."""
    from gguf import GGMLQuantizationType, quants

    rows = st.shape[0]
    w = np.random.default_rng(k + rows).standard_normal((rows, k)).astype(np.float32) * 0.05
    return np.asarray(quants.quantize(w, GGMLQuantizationType.Q4_1))


def layer_model(nodes: Nodes, names: list[str]) -> onnx.ModelProto:
    sizes = {"x": K, "a": K, "m": K, "h": 1536}
    inputs = [
        helper.make_tensor_value_info(s, TensorProto.FLOAT, [1, 1, k]) for s, k in sizes.items()
    ]
    outputs = [helper.make_tensor_value_info(f"y_{n}", TensorProto.FLOAT, None) for n in names]
    graph = helper.make_graph(nodes.nodes, "layer", inputs, outputs, nodes.initializers)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, 1)]
    built = helper.make_model(graph, opset_imports=opsets)
    built.ir_version = 10
    return built


def time_sessions(
    runs: dict[str, Callable[[], object]], round_s: float, rounds: int, budget_s: float = 3.0
) -> dict[str, float]:
    """Best per-call time (us) of each run over interleaved rounds of about
    ``round_s`` seconds: on a shared machine other load only ever adds time,
    so short rounds and the minimum find the undisturbed figure. A run stops
    after ``rounds`` rounds or ``budget_s`` seconds, whichever comes first."""
    calls: dict[str, int] = {}
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        calls[name] = max(1, int(round_s / (time.perf_counter() - start)))
    samples: dict[str, list[float]] = {name: [] for name in runs}
    spent = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            if spent[name] > budget_s and len(samples[name]) >= 3:
                continue
            start = time.perf_counter()
            for _ in range(calls[name]):
                run()
            elapsed = time.perf_counter() - start
            spent[name] += elapsed
            samples[name].append(elapsed / calls[name] * 1e6)
    return {name: float(np.min(values)) for name, values in samples.items()}


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--round-ms", type=float, default=2.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--budget-s", type=float, default=3.0, help="time cap per form")
    parser.add_argument("--n", type=int, nargs="*", default=[1536, 49152])
    parser.add_argument("--layer", choices=list(LAYERS), help="time one layer's linears")
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((1, K)).astype(np.float32)
    print(f"onnxruntime {ort.__version__}, {args.threads} thread(s), x [1, {K}]")
    if args.layer:
        rng = np.random.default_rng(1)
        feeds = {s: rng.standard_normal((1, 1, 1536 if s == "h" else K)) for s in "xamh"}
        feeds = {s: array.astype(np.float32) for s, array in feeds.items()}
        layout = LAYERS[args.layer]
        layer_runs: dict[str, Callable[[], object]] = {}
        for label, nodes in layer_forms(layout, 4).items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            built = layer_model(nodes, list(layout)).SerializeToString()
            session = ort.InferenceSession(built, options)
            layer_runs[label] = partial(session.run, None, feeds)
        print(f"\none layer's {args.layer} Q4_1 linears {list(layout)}, accuracy_level 4")
        for name, us in time_sessions(
            layer_runs, args.round_ms / 1e3, args.rounds, args.budget_s
        ).items():
            print(f"  {name:<45} {us:9.1f} us")
        return
    for n in args.n:
        for level in (1, 4):
            runs: dict[str, Callable[[], object]] = {}
            errors: dict[str, float] = {}
            for name, (nodes, weights) in forms(n, level).items():
                options = ort.SessionOptions()
                options.intra_op_num_threads = args.threads
                session = ort.InferenceSession(model(nodes, K).SerializeToString(), options)
                y = session.run(None, {"x": x})[0]
                ref = x @ weights.T
                errors[name] = float(np.abs(y - ref).max() / np.abs(ref).max())
                runs[name] = partial(session.run, None, {"x": x})
            times = time_sessions(runs, args.round_ms / 1e3, args.rounds, args.budget_s)
            print(f"\nW [{n}, {K}], accuracy_level {level}")
            for name, us in times.items():
                print(f"  {name:<45} {us:9.1f} us   max rel err {errors[name]:.1e}")


if __name__ == "__main__":
    main()
