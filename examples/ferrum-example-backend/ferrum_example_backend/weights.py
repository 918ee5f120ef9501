"""Weights of a Llama-family checkpoint, laid out for ``x @ W`` in float32."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from ferrum_core.errors import ModelLoadError
from ferrum_core.plugin import ModelConfig

__all__ = ["LayerWeights", "ModelWeights", "load_weights"]


class WeightSource(Protocol):
    """The part of ``ferrum_core.models``' weight source this backend uses."""

    def has(self, name: str) -> bool: ...

    def get(self, name: str) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class LayerWeights:
    input_norm: np.ndarray
    wq: np.ndarray  # [hidden, heads * head_dim]
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray  # [heads * head_dim, hidden]
    post_norm: np.ndarray
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    bo: np.ndarray | None = None
    b_gate: np.ndarray | None = None
    b_up: np.ndarray | None = None
    b_down: np.ndarray | None = None
    q_norm: np.ndarray | None = None  # Qwen3: per-head RMSNorm weights [head_dim]
    k_norm: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class ModelWeights:
    embed: np.ndarray  # [vocab, hidden]
    layers: tuple[LayerWeights, ...]
    final_norm: np.ndarray
    lm_head: np.ndarray  # [hidden, vocab]
    tied: bool  # lm_head is a view of embed

    @property
    def num_parameters(self) -> int:
        arrays = [self.embed, self.final_norm] + ([] if self.tied else [self.lm_head])
        for layer in self.layers:
            arrays.extend(getattr(layer, f.name) for f in fields(layer))
        return sum(a.size for a in arrays if a is not None)

    @property
    def nbytes(self) -> int:
        return 4 * self.num_parameters


class _Reader:
    def __init__(self, source: WeightSource) -> None:
        self.source = source

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if not self.source.has(name):
            raise ModelLoadError(f"missing weight {name!r}")
        array = np.asarray(self.source.get(name), dtype=np.float32)
        if array.shape != shape:
            raise ModelLoadError(f"weight {name!r} has shape {array.shape}, expected {shape}")
        return array

    def linear(self, name: str, out_dim: int, in_dim: int) -> np.ndarray:
        return np.ascontiguousarray(self.get(f"{name}.weight", (out_dim, in_dim)).T)

    def bias(self, name: str, dim: int, present: bool) -> np.ndarray | None:
        return self.get(f"{name}.bias", (dim,)) if present else None


def load_weights(config: ModelConfig, source: WeightSource) -> ModelWeights:
    read = _Reader(source)
    hidden, inter, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q_dim = config.num_attention_heads * hd
    kv_dim = config.num_key_value_heads * hd
    layers = []
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        attn, mlp = f"{p}.self_attn", f"{p}.mlp"
        layers.append(
            LayerWeights(
                input_norm=read.get(f"{p}.input_layernorm.weight", (hidden,)),
                wq=read.linear(f"{attn}.q_proj", q_dim, hidden),
                wk=read.linear(f"{attn}.k_proj", kv_dim, hidden),
                wv=read.linear(f"{attn}.v_proj", kv_dim, hidden),
                wo=read.linear(f"{attn}.o_proj", hidden, q_dim),
                post_norm=read.get(f"{p}.post_attention_layernorm.weight", (hidden,)),
                w_gate=read.linear(f"{mlp}.gate_proj", inter, hidden),
                w_up=read.linear(f"{mlp}.up_proj", inter, hidden),
                w_down=read.linear(f"{mlp}.down_proj", hidden, inter),
                bq=read.bias(f"{attn}.q_proj", q_dim, config.qkv_bias),
                bk=read.bias(f"{attn}.k_proj", kv_dim, config.qkv_bias),
                bv=read.bias(f"{attn}.v_proj", kv_dim, config.qkv_bias),
                bo=read.bias(f"{attn}.o_proj", hidden, config.o_bias),
                b_gate=read.bias(f"{mlp}.gate_proj", inter, config.mlp_bias),
                b_up=read.bias(f"{mlp}.up_proj", inter, config.mlp_bias),
                b_down=read.bias(f"{mlp}.down_proj", hidden, config.mlp_bias),
                q_norm=read.get(f"{attn}.q_norm.weight", (hd,)) if config.qk_norm else None,
                k_norm=read.get(f"{attn}.k_norm.weight", (hd,)) if config.qk_norm else None,
            )
        )
    embed = read.get("model.embed_tokens.weight", (config.vocab_size, hidden))
    tied = config.tie_word_embeddings or not source.has("lm_head.weight")
    # Tied: a view of the embedding, so the weights are stored once.
    lm_head = embed.T if tied else read.linear("lm_head", config.vocab_size, hidden)
    return ModelWeights(
        embed=embed,
        layers=tuple(layers),
        final_norm=read.get("model.norm.weight", (hidden,)),
        lm_head=lm_head,
        tied=tied,
    )
