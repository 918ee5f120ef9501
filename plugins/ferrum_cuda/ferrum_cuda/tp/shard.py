"""Megatron sharding rules: which heads, rows and columns each rank holds.

q/k/v and gate/up are column-parallel (each rank computes its own heads and its
slice of the intermediate size), o and down row-parallel (partial sums, then an
all-reduce), the embedding and LM head vocabulary-parallel (the vocabulary padded
to a multiple of the size). KV heads split like the query heads, or, when there
are fewer KV heads than ranks, each rank keeps the one its query heads read (the
KV heads are replicated, as vLLM does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ferrum_core.errors import UnsupportedError
from ferrum_core.plugin import ModelConfig

__all__ = ["ShardPlan", "ShardedSource", "check_shardable", "parameter_count"]


def check_shardable(cfg: ModelConfig, size: int) -> None:
    """:class:`UnsupportedError` naming the numbers where ``cfg`` does not split ``size`` ways."""
    nh, nkv, inter = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    problems = []
    if nh % size:
        problems.append(f"{nh} attention heads are not a multiple of {size}")
    if nkv % size and size % nkv:
        problems.append(
            f"{nkv} KV heads neither split over {size} ranks nor divide {size} (replication)"
        )
    if inter % size:
        problems.append(f"intermediate size {inter} is not a multiple of {size}")
    if problems:
        raise UnsupportedError(
            f"tensor_parallel_size={size} does not fit this {cfg.model_type} model: "
            + "; ".join(problems)
        )


@dataclass(frozen=True, slots=True)
class ShardPlan:
    full: ModelConfig
    rank: int
    size: int

    @property
    def heads(self) -> int:
        return self.full.num_attention_heads // self.size

    @property
    def kv_heads(self) -> int:
        return max(1, self.full.num_key_value_heads // self.size)

    @property
    def first_kv_head(self) -> int:
        nkv = self.full.num_key_value_heads
        if nkv % self.size == 0:
            return self.rank * self.kv_heads
        return self.rank // (self.size // nkv)  # replicated: the head this rank's queries read

    @property
    def intermediate(self) -> int:
        return self.full.intermediate_size // self.size

    @property
    def vocab(self) -> int:
        """Rows of the embedding / LM head on each rank (padded vocabulary / size)."""
        return -(-self.full.vocab_size // self.size)

    def local_config(self) -> ModelConfig:
        """The shard as a model of its own: what the rank's layers and pool are built for."""
        return dataclasses.replace(
            self.full,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            intermediate_size=self.intermediate,
            vocab_size=self.vocab,
        )


class ShardedSource:
    """The rank's slices of a full weight source, under the full checkpoint's names."""

    def __init__(self, source: object, plan: ShardPlan) -> None:
        self._source = source
        self._plan = plan

    def has(self, name: str) -> bool:
        return bool(self._source.has(name))  # type: ignore[attr-defined]

    def get(self, name: str) -> np.ndarray:
        array: np.ndarray = self._source.get(name)  # type: ignore[attr-defined]
        p, cfg = self._plan, self._plan.full
        hd = cfg.head_dim
        leaf = name.rsplit(".", 2)[-2:]  # e.g. ["q_proj", "weight"]
        proj, kind = leaf[0], leaf[1]
        if proj == "q_proj":
            return _rows(array, p.rank * p.heads * hd, p.heads * hd)
        if proj in ("k_proj", "v_proj"):
            return _rows(array, p.first_kv_head * hd, p.kv_heads * hd)
        if proj in ("gate_proj", "up_proj"):
            return _rows(array, p.rank * p.intermediate, p.intermediate)
        if proj in ("o_proj", "down_proj"):
            if kind == "bias":  # added once, after the all-reduce: rank 0 holds it
                return array if p.rank == 0 else np.zeros_like(array)
            width = p.heads * hd if proj == "o_proj" else p.intermediate
            return np.ascontiguousarray(array[:, p.rank * width : (p.rank + 1) * width])
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            padded = np.zeros((p.vocab * p.size, array.shape[1]), dtype=array.dtype)
            padded[: array.shape[0]] = array
            return _rows(padded, p.rank * p.vocab, p.vocab)
        return array


def _rows(array: np.ndarray, start: int, count: int) -> np.ndarray:
    return np.ascontiguousarray(array[start : start + count])


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of the whole model as in its checkpoint (a tied matrix counts once)."""
    h, hd, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    nq, nkv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    layer = 2 * h + (nq + 2 * nkv) * h + nq * h + 3 * inter * h
    layer += (nq + 2 * nkv) * cfg.qkv_bias + h * cfg.o_bias + (2 * inter + h) * cfg.mlp_bias
    layer += 2 * hd * cfg.qk_norm
    heads = 1 if cfg.tie_word_embeddings else 2
    return cfg.num_hidden_layers * layer + heads * cfg.vocab_size * h + h
