"""The decoder as one ONNX graph, built from the model layer's weights (no torch export).

Inputs (``B`` sequences of ``S`` padded tokens, ``R`` rows that need logits):

* ``input_ids`` int64 ``[B, S]``; ``query_seqlens`` int32 ``[B]`` (valid tokens
  per row, 0 for an idle row); ``seqlens_k`` int32 ``[B]`` (tokens held after
  the step, minus one); ``total_seq_len`` int32 scalar (an upper bound of those);
* ``logit_rows`` int64 ``[R]``: flat ``b * S + s`` rows whose logits are wanted;
* ``cos_cache`` / ``sin_cache`` float ``[positions, head_dim / 2]``;
* ``past_key.{i}`` / ``past_value.{i}`` float ``[B, kv_heads, capacity, head_dim]``,
  bound to the same memory as the outputs ``present_key.{i}`` / ``present_value.{i}``.

Output ``logits`` float ``[R, vocab]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ferrum_core.errors import UnsupportedError
from ferrum_core.plugin import ModelConfig, WeightSource
from ferrum_cpu.blocks import (
    GraphParts,
    LinearOptions,
    attention_block,
    attention_head_dim,
    mlp_block,
    rms_norm,
    skip_rms_norm,
)
from ferrum_cpu.linear import Mode, embedding, linear
from ferrum_cpu.weights import ModelWeights

__all__ = ["GRAPH_VERSION", "MODEL_TYPES", "GraphOptions", "build_graph", "check_supported"]

GRAPH_VERSION = 6  # bump when the graph built from the same weights changes
# The builder's own sources are part of the cache key too, so that a change that forgets
# the bump above still builds anew instead of loading a graph the code no longer makes.
_BUILDER_MODULES = ("graph", "blocks", "linear", "weights", "quant", "quant_gguf",
                    "quant_mins", "quant_pack", "quant_ort")
BUILDER_DIGEST = hashlib.sha256(
    b"".join(Path(__file__).with_name(f"{name}.py").read_bytes() for name in _BUILDER_MODULES)
).hexdigest()[:16]
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ACTIVATIONS = ("silu", "swish")
OPSET = 21


@dataclass(frozen=True, slots=True)
class GraphOptions:
    mode: Mode = "fp32"
    accuracy_level: int = 1
    block_size: int = 32

    def key(self) -> dict[str, object]:
        """What the built graph depends on: ``accuracy_level`` and ``block_size``
        only shape quantised linears, so an fp32 graph is one cache entry."""
        key: dict[str, object] = {"mode": self.mode, "graph_version": GRAPH_VERSION,
                                  "builder": BUILDER_DIGEST}
        if self.mode != "fp32":
            key.update(accuracy_level=self.accuracy_level, block_size=self.block_size)
        return key


def check_supported(cfg: ModelConfig) -> None:
    """An UnsupportedError naming what the graph builder cannot express."""
    if cfg.model_type not in MODEL_TYPES:
        raise UnsupportedError(
            f"model type {cfg.model_type!r} is not supported by the cpu backend's graph "
            f"builder (supported: {', '.join(MODEL_TYPES)})"
        )
    if cfg.hidden_act not in ACTIVATIONS:
        raise UnsupportedError(
            f"hidden_act {cfg.hidden_act!r} is not supported by the cpu backend "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    if cfg.head_dim % 2:
        raise UnsupportedError(f"head_dim {cfg.head_dim} is odd; rotary needs an even head_dim")


def _io(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def build_graph(
    cfg: ModelConfig, source: WeightSource, options: GraphOptions,
    progress: Callable[[int], None] | None = None,
) -> onnx.ModelProto:  # fmt: skip
    """The whole decoder; ``progress(1)`` is called once per layer built."""
    check_supported(cfg)
    w = ModelWeights(source, options.mode)
    opts = LinearOptions(options.mode, options.accuracy_level, options.block_size)
    parts = GraphParts()
    eps = cfg.rms_norm_eps
    embed_name = "model.embed_tokens.weight"
    parts.add(embedding("embed", "input_ids", "embedded", w.matrix(embed_name), mode=options.mode))
    x, residual = "embedded", ""
    for i in range(cfg.num_hidden_layers):
        lp = f"model.layers.{i}"
        h = f"layers.{i}.h_attn"
        if i == 0:
            rms_norm(parts, f"layers.{i}.input_norm", x, w.vector(f"{lp}.input_layernorm.weight"),
                     eps, h)
            residual = x
        else:
            skip_rms_norm(parts, f"layers.{i}.input_norm", x, residual,
                          w.vector(f"{lp}.input_layernorm.weight"), eps, h,
                          f"layers.{i}.resid_attn")
            residual = f"layers.{i}.resid_attn"
        attn = f"model.layers.{i}.self_attn"
        qk_norm = None
        if cfg.qk_norm:
            qk_norm = (w.vector(f"{attn}.q_norm.weight"), w.vector(f"{attn}.k_norm.weight"))
        attention_block(
            parts, cfg, i, h, f"layers.{i}.attn_out",
            w.projection(attn, ("q", "k", "v"), bias=cfg.qkv_bias),
            w.projection(attn, ("o",), bias=cfg.o_bias), qk_norm, opts,
        )
        h2 = f"layers.{i}.h_mlp"
        skip_rms_norm(parts, f"layers.{i}.post_norm", f"layers.{i}.attn_out", residual,
                      w.vector(f"{lp}.post_attention_layernorm.weight"), eps, h2,
                      f"layers.{i}.resid_mlp")
        residual = f"layers.{i}.resid_mlp"
        mlp = f"model.layers.{i}.mlp"
        mlp_block(parts, i, h2, f"layers.{i}.mlp_out",
                  w.projection(mlp, ("gate", "up"), bias=cfg.mlp_bias),
                  w.projection(mlp, ("down",), bias=cfg.mlp_bias), opts)
        x = f"layers.{i}.mlp_out"
        if progress is not None:
            progress(1)
    skip_rms_norm(parts, "final_norm", x, residual, w.vector("model.norm.weight"), eps,
                  "final_hidden", "")
    flat = parts.const("hidden_flat_shape", np.array([-1, cfg.hidden_size], np.int64))
    parts.node("Reshape", ["final_hidden", flat], ["hidden_rows"], "hidden_rows")
    parts.node("Gather", ["hidden_rows", "logit_rows"], ["picked"], "pick_rows", axis=0)
    head = "lm_head.weight" if source.has("lm_head.weight") else embed_name
    if options.mode == "fp32" and head == embed_name:
        # tied: read the embedding table itself ([vocab, hidden]) instead of a transposed copy
        parts.node("Gemm", ["picked", "embed.weight"], ["logits"], "lm_head", transB=1)
    else:
        parts.add(linear("lm_head", "picked", "logits", w.matrix(head), bias=None,
                         mode=options.mode, accuracy_level=options.accuracy_level,
                         block_size=options.block_size))
    return _model(cfg, parts)


def _model(cfg: ModelConfig, parts: GraphParts) -> onnx.ModelProto:
    f32, i32, i64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
    hd = attention_head_dim(cfg.head_dim)
    kv_shape: list[int | str] = ["batch", cfg.num_key_value_heads, "capacity", hd]
    inputs = [
        _io("input_ids", i64, ["batch", "seq"]),
        _io("seqlens_k", i32, ["batch"]),
        _io("total_seq_len", i32, []),
        _io("query_seqlens", i32, ["batch"]),
        _io("logit_rows", i64, ["rows"]),
        _io("cos_cache", f32, ["positions", hd // 2]),
        _io("sin_cache", f32, ["positions", hd // 2]),
    ]
    outputs = [_io("logits", f32, ["rows", cfg.vocab_size])]
    for i in range(cfg.num_hidden_layers):
        inputs += [_io(f"past_key.{i}", f32, kv_shape), _io(f"past_value.{i}", f32, kv_shape)]
        outputs += [_io(f"present_key.{i}", f32, kv_shape),
                    _io(f"present_value.{i}", f32, kv_shape)]
    graph = helper.make_graph(parts.nodes, "ferrum_cpu_decoder", inputs, outputs,
                              initializer=parts.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="ferrum-cpu",
    )
    model.ir_version = 10
    return model
