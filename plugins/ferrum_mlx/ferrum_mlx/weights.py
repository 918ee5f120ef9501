"""A Llama-family checkpoint as MLX arrays: dense in fp32/fp16/bf16, quantised in int4/int8.

In ``int4``/``int8`` every matrix of a quantised checkpoint stays as stored (a
GGUF's blocks, an MLX folder's packed words, the float matrices of either), so
``--dtype int4`` on the default model computes with its own Q4_1 and Q8_0
weights; the matrices of a float checkpoint are quantised with ``mx.quantize``
to the dtype's width (the embedding and output tables to 8 bits). Norms and
biases stay float32, as do the activations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from ferrum_core.plugin import DataType, ModelConfig, WeightSource
from ferrum_mlx.layers import Embedding, Linear, Sharded, fuse, shard
from ferrum_mlx.quant import AffineWeight, from_gguf, from_mlx_folder, quantize_float

__all__ = ["MX_DTYPES", "LayerWeights", "ModelWeights", "load_weights"]

MX_DTYPES = {DataType.FP32: mx.float32, DataType.FP16: mx.float16, DataType.BF16: mx.bfloat16,
             DataType.INT8: mx.float32, DataType.INT4: mx.float32}
"""The activation (compute) dtype of each Ferrum dtype."""

_BITS = {DataType.INT8: 8, DataType.INT4: 4}


@dataclass(frozen=True, slots=True)
class LayerWeights:
    input_norm: mx.array
    post_norm: mx.array
    qkv: tuple[Sharded, ...]  # (q, k, v), or one matrix with them stacked when stored alike
    o: Sharded
    gate_up: tuple[Sharded, ...]  # (gate, up), or one stacked matrix
    down: Sharded
    q_norm: mx.array | None = None  # Qwen3: per-head RMSNorm weights [head_dim]
    k_norm: mx.array | None = None


@dataclass(frozen=True, slots=True)
class ModelWeights:
    embed: Embedding
    layers: tuple[LayerWeights, ...]
    final_norm: mx.array
    lm_head: Sharded
    num_parameters: int
    nbytes: int
    sources: dict[str, int]  # how many matrices came from each storage ("Q4_1", "F32"...)


class _Loader:
    def __init__(self, source: WeightSource, dtype: DataType, group_size: int) -> None:
        self.source = source
        self.bits = _BITS.get(dtype)
        self.compute = MX_DTYPES[dtype]
        self.group_size = group_size
        self.gguf = bool(source.stored_from_gguf)
        # An MLX folder keeps the modules its config leaves in floats in floats.
        self.folder = not self.gguf and any(t.endswith("_MLX") for t in source.stored_types())
        self.parameters = 0
        self.nbytes = 0
        self.sources: dict[str, int] = {}

    def _count(self, name: str, kind: str, nbytes: int) -> None:
        self.parameters += math.prod(self.source.shape(name))
        self.nbytes += nbytes
        self.sources[kind] = self.sources.get(kind, 0) + 1

    def vector(self, name: str) -> mx.array:
        array = mx.array(np.asarray(self.source.get(name), np.float32))
        array = array.astype(mx.float32 if self.bits else self.compute)
        self._count(name, "F32", int(array.nbytes))
        return array

    def matrix(
        self, name: str, table: bool = False
    ) -> tuple[mx.array | None, AffineWeight | None]:
        """``table``: the embedding / output matrix, quantised from floats to 8 bits
        even for int4 (llama.cpp's 4-bit files keep it at 6 to 8 bits too)."""
        quant = self._quantised(name, 8 if table else self.bits) if self.bits else None
        if quant is not None:
            self._count(name, quant.source, quant.nbytes)
            return None, quant
        transposed = np.ascontiguousarray(np.asarray(self.source.get(name), np.float32).T)
        dense = mx.array(transposed).astype(self.compute)  # [in, out]: see Linear
        self._count(name, str(self.source.dtype(name)), int(dense.nbytes))
        return dense, None

    def _quantised(self, name: str, bits: int | None) -> AffineWeight | None:
        assert bits is not None
        if self.gguf:
            stored = self.source.stored(name)
            return from_gguf(stored, mx.float32) if stored.quantized else None
        folder = self.source.mlx_quantized(name)
        if folder is not None or self.folder:
            return None if folder is None else from_mlx_folder(folder, mx.float32)
        return quantize_float(name, self.source.get(name), bits, self.group_size, mx.float32)

    def linear(self, name: str, bias: bool, table: bool = False) -> Linear:
        dense, quant = self.matrix(f"{name}.weight", table)
        return Linear(dense, quant, self.vector(f"{name}.bias") if bias else None)


def load_weights(
    config: ModelConfig, source: WeightSource, dtype: DataType, *, group_size: int = 64,
    shards: int = 1,
) -> ModelWeights:
    """Read every tensor of ``config`` from ``source`` into MLX arrays for ``dtype``,
    each matrix as ``shards`` column shards (see :mod:`ferrum_mlx.layers`)."""
    read = _Loader(source, dtype, group_size)

    def cut(*parts: Linear) -> tuple[Sharded, ...]:
        return tuple(shard(p, shards) for p in parts)

    layers = []
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        attn, mlp = f"{p}.self_attn", f"{p}.mlp"
        q = read.linear(f"{attn}.q_proj", config.qkv_bias)
        k = read.linear(f"{attn}.k_proj", config.qkv_bias)
        v = read.linear(f"{attn}.v_proj", config.qkv_bias)
        gate = read.linear(f"{mlp}.gate_proj", config.mlp_bias)
        up = read.linear(f"{mlp}.up_proj", config.mlp_bias)
        layers.append(LayerWeights(
            input_norm=read.vector(f"{p}.input_layernorm.weight"),
            post_norm=read.vector(f"{p}.post_attention_layernorm.weight"),
            qkv=cut(*_fused(q, k, v)), o=cut(read.linear(f"{attn}.o_proj", config.o_bias))[0],
            gate_up=cut(*_fused(gate, up)),
            down=cut(read.linear(f"{mlp}.down_proj", config.mlp_bias))[0],
            q_norm=read.vector(f"{attn}.q_norm.weight") if config.qk_norm else None,
            k_norm=read.vector(f"{attn}.k_norm.weight") if config.qk_norm else None,
        ))  # fmt: skip
        mx.eval(_arrays(layers[-1]))  # the stacked / sharded copies replace their parts now
    embed = Embedding(cut(Linear(*read.matrix("model.embed_tokens.weight", table=True)))[0])
    tied = config.tie_word_embeddings or not source.has("lm_head.weight")
    lm_head = embed.as_linear() if tied else cut(read.linear("lm_head", False, table=True))[0]
    mx.eval(embed.table.arrays(), lm_head.arrays())
    final_norm = read.vector("model.norm.weight")
    return ModelWeights(embed, tuple(layers), final_norm, lm_head, read.parameters,
                        read.nbytes, read.sources)


def _arrays(layer: LayerWeights) -> list[mx.array]:
    out = [a for a in (layer.input_norm, layer.post_norm, layer.q_norm, layer.k_norm)
           if a is not None]
    for matrix in (*layer.qkv, layer.o, *layer.gate_up, layer.down):
        out.extend(matrix.arrays())
    return out


def _fused(*parts: Linear) -> tuple[Linear, ...]:
    joined = fuse(parts)
    return parts if joined is None else (joined,)


def describe(weights: ModelWeights) -> dict[str, Any]:
    """What the weights are stored as (for ``LlmRuntimeConfig.extra``)."""
    return {"weight_storage": dict(sorted(weights.sources.items()))}
