"""Model weights as fused torch tensors: one q/k/v matrix and one gate/up matrix per layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ferrum_core.errors import ModelLoadError
from ferrum_core.plugin import ModelConfig
from ferrum_cuda.linear import Linear, chain_prefetch

__all__ = ["WeightReader", "LayerWeights", "ModelWeights", "load_weights"]


class WeightReader(Protocol):
    """The part of the model layer's ``WeightSource`` this backend reads."""

    def get(self, name: str) -> np.ndarray: ...

    def has(self, name: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    qkv: Linear  # [(heads + 2 * kv_heads) * head_dim, hidden]
    qk_norm: torch.Tensor | None  # [heads + kv_heads, head_dim]: q_norm then k_norm per head
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear  # [2 * intermediate, hidden]
    down: Linear


@dataclass(frozen=True, slots=True)
class ModelWeights:
    embed: torch.Tensor
    layers: tuple[LayerWeights, ...]
    final_norm: torch.Tensor
    lm_head: Linear  # over the embedding itself when tied
    num_parameters: int  # as in the checkpoint (a tied matrix counts once)
    num_bytes: int  # in memory, packed copies included


def load_weights(
    cfg: ModelConfig,
    source: WeightReader,
    dtype: torch.dtype,
    device: torch.device,
    *,
    prepack: bool = True,
) -> ModelWeights:
    """Read, fuse and (on the CPU) prepack the weights; ``prepack=False`` keeps plain F.linear."""
    counts = {"params": 0, "bytes": 0}

    def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if not source.has(name):
            raise ModelLoadError(f"weight {name!r} is missing")
        array = source.get(name)
        if tuple(array.shape) != shape:
            raise ModelLoadError(
                f"weight {name!r} has shape {list(array.shape)}, expected {list(shape)}"
            )
        # A private copy: the source may be a read-only memory map of the weight file.
        tensor = torch.from_numpy(np.array(array, copy=True)).to(device=device, dtype=dtype)
        counts["params"] += tensor.numel()
        counts["bytes"] += tensor.numel() * tensor.element_size()
        return tensor

    def linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear:
        return Linear(weight, bias, prepack=prepack)

    def maybe(name: str, shape: tuple[int, ...], wanted: bool) -> torch.Tensor | None:
        return get(name, shape) if wanted else None

    h, hd, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    nq, nkv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        att, mlp = p + "self_attn.", p + "mlp."
        qkv = torch.cat(
            [
                get(att + "q_proj.weight", (nq, h)),
                get(att + "k_proj.weight", (nkv, h)),
                get(att + "v_proj.weight", (nkv, h)),
            ]
        )
        qkv_bias = None
        if cfg.qkv_bias:
            qkv_bias = torch.cat(
                [
                    get(att + "q_proj.bias", (nq,)),
                    get(att + "k_proj.bias", (nkv,)),
                    get(att + "v_proj.bias", (nkv,)),
                ]
            )
        qk_norm = None
        if cfg.qk_norm:
            qk_norm = torch.cat(
                [
                    get(att + "q_norm.weight", (hd,)).expand(cfg.num_attention_heads, hd),
                    get(att + "k_norm.weight", (hd,)).expand(cfg.num_key_value_heads, hd),
                ]
            )
        gate_up = torch.cat(
            [get(mlp + "gate_proj.weight", (inter, h)), get(mlp + "up_proj.weight", (inter, h))]
        )
        gate_up_bias = None
        if cfg.mlp_bias:
            gate_up_bias = torch.cat(
                [get(mlp + "gate_proj.bias", (inter,)), get(mlp + "up_proj.bias", (inter,))]
            )
        layers.append(
            LayerWeights(
                input_norm=get(p + "input_layernorm.weight", (h,)),
                qkv=linear(qkv, qkv_bias),
                qk_norm=qk_norm,
                o=linear(
                    get(att + "o_proj.weight", (h, nq)),
                    maybe(att + "o_proj.bias", (h,), cfg.o_bias),
                ),
                post_norm=get(p + "post_attention_layernorm.weight", (h,)),
                gate_up=linear(gate_up, gate_up_bias),
                down=linear(
                    get(mlp + "down_proj.weight", (h, inter)),
                    maybe(mlp + "down_proj.bias", (h,), cfg.mlp_bias),
                ),
            )
        )
    embed = get("model.embed_tokens.weight", (cfg.vocab_size, h))
    head = embed if cfg.tie_word_embeddings else get("lm_head.weight", (cfg.vocab_size, h))
    final_norm = get("model.norm.weight", (h,))
    params = counts["params"]
    lm_head = linear(head)
    if lm_head.packed is not None and head is embed:
        counts["bytes"] += embed.numel() * embed.element_size()  # the embedding stays too
    linears = [lin for lw in layers for lin in (lw.qkv, lw.o, lw.gate_up, lw.down)]
    chain_prefetch([*linears, lm_head])
    return ModelWeights(
        embed=embed,
        layers=tuple(layers),
        final_norm=final_norm,
        lm_head=lm_head,
        num_parameters=params,
        num_bytes=counts["bytes"],
    )
