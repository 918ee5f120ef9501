"""Nodes of one decoder layer: projections, ``GroupQueryAttention``, SwiGLU MLP, norms.

Norms use ONNX Runtime's ``SimplifiedLayerNormalization`` (RMSNorm) and
``SkipSimplifiedLayerNormalization`` (residual add + RMSNorm in one kernel);
attention is ``com.microsoft.GroupQueryAttention`` over a shared past/present
KV buffer with the rotary embedding applied inside the operator. Projections
that read the same input (q/k/v, gate/up) run as one matrix where the weights
allow it (see :mod:`ferrum_cpu.weights`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from ferrum_cpu.linear import Mode, Nodes, linear

if TYPE_CHECKING:
    from ferrum_core.plugin import ModelConfig
    from ferrum_cpu.weights import Projection

__all__ = ["GraphParts", "LinearOptions", "attention_block", "attention_head_dim", "mlp_block",
           "project", "rms_norm", "skip_rms_norm"]

MS = "com.microsoft"


@dataclass(slots=True)
class GraphParts:
    """Accumulates nodes and initializers while a graph is built."""

    nodes: list[NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)

    def add(self, built: Nodes) -> None:
        self.nodes.extend(built.nodes)
        self.initializers.extend(built.initializers)

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str,
             **attrs: Any) -> None:  # fmt: skip
        domain = MS if op in _CONTRIB else ""
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))


_CONTRIB = {"SkipSimplifiedLayerNormalization", "GroupQueryAttention"}


@dataclass(frozen=True, slots=True)
class LinearOptions:
    mode: Mode
    accuracy_level: int
    block_size: int


def rms_norm(parts: GraphParts, name: str, x: str, weight: np.ndarray, eps: float,
             out: str) -> None:  # fmt: skip
    gamma = parts.const(f"{name}.weight", np.asarray(weight, np.float32))
    parts.node("SimplifiedLayerNormalization", [x, gamma], [out], name, axis=-1,
               epsilon=float(eps), stash_type=1)


def skip_rms_norm(parts: GraphParts, name: str, x: str, skip: str, weight: np.ndarray,
                  eps: float, out: str, residual_out: str) -> None:  # fmt: skip
    """``residual_out = x + skip``; ``out = rms_norm(residual_out)``."""
    gamma = parts.const(f"{name}.weight", np.asarray(weight, np.float32))
    outputs = [out, "", "", residual_out] if residual_out else [out]
    parts.node("SkipSimplifiedLayerNormalization", [x, skip, gamma], outputs, name,
               epsilon=float(eps))


def project(parts: GraphParts, prefix: str, h: str, proj: Projection, opts: LinearOptions,
            names: list[str] | None = None) -> list[str]:  # fmt: skip
    """One output per part of ``proj`` (named ``names`` when given): one matrix and a
    Split when fused, else one matrix each."""
    lin: dict[str, Any] = dict(mode=opts.mode, accuracy_level=opts.accuracy_level,
                               block_size=opts.block_size)
    outs = names or [f"{prefix}.{part}" for part in proj.parts]
    if proj.fused is not None:
        weight, bias = proj.fused
        parts.add(linear(f"{prefix}.fused", h, f"{prefix}.fused_out", weight, bias=bias, **lin))
        sizes = parts.const(f"{prefix}.split", np.array(proj.rows, np.int64))
        parts.node("Split", [f"{prefix}.fused_out", sizes], outs, f"{prefix}.split", axis=-1)
        return outs
    for out, part, (weight, bias) in zip(outs, proj.parts, proj.separate, strict=True):
        parts.add(linear(f"{prefix}.{part}_proj", h, out, weight, bias=bias, **lin))
    return outs


def attention_block(
    parts: GraphParts, cfg: ModelConfig, layer: int, h: str, out: str, qkv: Projection,
    o_proj: Projection, qk_norm: tuple[np.ndarray, np.ndarray] | None, opts: LinearOptions,
) -> None:  # fmt: skip
    """``out = o_proj(GQA(q, k, v))``; writes the layer's KV into its shared buffers."""
    p = f"layers.{layer}.attn"
    hd = cfg.head_dim
    padded = attention_head_dim(hd)
    if qkv.fused is not None and qk_norm is None and padded == hd:
        # packed QKV straight into the operator: no Split
        weight, bias = qkv.fused
        parts.add(linear(f"{p}.qkv_proj", h, f"{p}.qkv", weight, bias=bias,
                         mode=opts.mode, accuracy_level=opts.accuracy_level,
                         block_size=opts.block_size))
        q, k, v = f"{p}.qkv", "", ""
    else:
        q, k, v = project(parts, p, h, qkv, opts)
    if qk_norm is not None:  # Qwen3: per-head RMSNorm on q and k before the rotary embedding
        heads = parts.const(f"{p}.heads_shape", np.array([0, 0, -1, hd], np.int64))
        flat = parts.const(f"{p}.flat_shape", np.array([0, 0, -1], np.int64))
        normed = []
        for which, x, weight in (("q", q, qk_norm[0]), ("k", k, qk_norm[1])):
            parts.node("Reshape", [x, heads], [f"{x}_heads"], f"{p}.{which}_heads")
            rms_norm(parts, f"{p}.{which}_norm", f"{x}_heads", weight, cfg.rms_norm_eps,
                     f"{x}_normed")
            parts.node("Reshape", [f"{x}_normed", flat], [f"{x}_n"], f"{p}.{which}_flat")
            normed.append(f"{x}_n")
        q, k = normed
    if padded != hd:
        q, k, v = (_pad_heads(parts, f"{p}.{n}_pad", x, hd, padded, rotary=n != "v")
                   for n, x in (("q", q), ("k", k), ("v", v)))
    window = int(cfg.sliding_window) if cfg.sliding_window else -1
    parts.node(
        "GroupQueryAttention",
        [q, k, v, f"past_key.{layer}", f"past_value.{layer}", "seqlens_k", "total_seq_len",
         "cos_cache", "sin_cache", "", "", "", "", "", "", "", "query_seqlens"],
        [f"{p}.out", f"present_key.{layer}", f"present_value.{layer}"],
        f"{p}.gqa", num_heads=cfg.num_attention_heads, kv_num_heads=cfg.num_key_value_heads,
        do_rotary=1, rotary_interleaved=0, local_window_size=window, scale=float(hd) ** -0.5,
    )
    attn_out = f"{p}.out"
    if padded != hd:
        attn_out = _unpad_heads(parts, f"{p}.out_unpad", attn_out, hd, padded)
    project(parts, f"{p}.o", attn_out, o_proj, opts, [out])


def attention_head_dim(head_dim: int) -> int:
    """The head size ``GroupQueryAttention`` runs with: ONNX Runtime's CPU kernel wants a
    multiple of 16, so smaller or odd sizes are zero-padded (exact: see ``_pad_heads``)."""
    return -(-head_dim // 16) * 16


def _pad_heads(parts: GraphParts, name: str, x: str, hd: int, padded: int, *,
               rotary: bool) -> str:  # fmt: skip
    """Zero-pad every head of ``x`` ``[B, S, heads * hd]`` to ``padded`` dims.

    For q/k each rotary half is padded on its own (``[a, 0, b, 0]``) so rotate-half
    still pairs dimension ``i`` with ``i + hd / 2``; the padded dimensions meet
    cos = 1, sin = 0 and stay zero, so scores (with the scale of ``hd``) are exact.
    V is padded at the end and the padding sliced off the output.
    """
    halves = 2 if rotary else 1
    shape = parts.const(f"{name}.shape", np.array([0, 0, -1, halves, hd // halves], np.int64))
    extra = (padded - hd) // halves
    pads = parts.const(f"{name}.pads", np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, extra], np.int64))
    flat = parts.const(f"{name}.flat", np.array([0, 0, -1], np.int64))
    parts.node("Reshape", [x, shape], [f"{name}.split"], f"{name}.reshape")
    parts.node("Pad", [f"{name}.split", pads], [f"{name}.padded"], f"{name}.pad")
    parts.node("Reshape", [f"{name}.padded", flat], [name], f"{name}.flat")
    return name


def _unpad_heads(parts: GraphParts, name: str, x: str, hd: int, padded: int) -> str:
    shape = parts.const(f"{name}.shape", np.array([0, 0, -1, padded], np.int64))
    starts = parts.const(f"{name}.starts", np.array([0], np.int64))
    ends = parts.const(f"{name}.ends", np.array([hd], np.int64))
    axes = parts.const(f"{name}.axes", np.array([3], np.int64))
    flat = parts.const(f"{name}.flat", np.array([0, 0, -1], np.int64))
    parts.node("Reshape", [x, shape], [f"{name}.heads"], f"{name}.reshape")
    parts.node("Slice", [f"{name}.heads", starts, ends, axes], [f"{name}.sliced"], f"{name}.slice")
    parts.node("Reshape", [f"{name}.sliced", flat], [name], f"{name}.flat")
    return name


def mlp_block(parts: GraphParts, layer: int, h: str, out: str, gate_up: Projection,
              down: Projection, opts: LinearOptions) -> None:  # fmt: skip
    """``out = down(silu(gate(h)) * up(h))``."""
    p = f"layers.{layer}.mlp"
    gate, up = project(parts, p, h, gate_up, opts)
    parts.node("Sigmoid", [gate], [f"{p}.sig"], f"{p}.sigmoid")
    parts.node("Mul", [gate, f"{p}.sig"], [f"{p}.silu"], f"{p}.silu")
    parts.node("Mul", [f"{p}.silu", up], [f"{p}.act"], f"{p}.act")
    project(parts, f"{p}.down", f"{p}.act", down, opts, [out])
