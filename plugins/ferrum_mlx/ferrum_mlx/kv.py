"""Per-sequence KV slabs that grow in steps: one pre-allocated buffer per layer,
written in place by slice updates, never copied per token."""

from __future__ import annotations

import mlx.core as mx

__all__ = ["KV_STEP", "SequenceKv"]

KV_STEP = 256
"""Slabs grow by whole steps of this many positions."""


class SequenceKv:
    """One sequence's keys and values, per layer ``[1, kv_heads, capacity, head_dim]``."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: mx.Dtype) -> None:
        self.num_layers = num_layers
        self.shape = (1, kv_heads, 0, head_dim)
        self.dtype = dtype
        self.keys: list[mx.array] = []
        self.values: list[mx.array] = []
        self.length = 0
        self.capacity = 0

    def reserve(self, length: int, limit: int) -> None:
        """Room for ``length`` positions (capacity a multiple of KV_STEP, at most ``limit``)."""
        if length <= self.capacity:
            return
        capacity = min(limit, -(-length // KV_STEP) * KV_STEP)
        capacity = max(capacity, length)
        kv_heads, head_dim = self.shape[1], self.shape[3]
        grown = (1, kv_heads, capacity, head_dim)
        if not self.keys:
            self.keys = [mx.zeros(grown, self.dtype) for _ in range(self.num_layers)]
            self.values = [mx.zeros(grown, self.dtype) for _ in range(self.num_layers)]
        else:
            pad = mx.zeros((1, kv_heads, capacity - self.capacity, head_dim), self.dtype)
            self.keys = [mx.concatenate([k, pad], axis=2) for k in self.keys]
            self.values = [mx.concatenate([v, pad], axis=2) for v in self.values]
        self.capacity = capacity

    def write(
        self, layer: int, start: int, keys: mx.array, values: mx.array
    ) -> tuple[mx.array, mx.array]:
        """Store ``[1, kv_heads, n, head_dim]`` at ``start``; return positions ``0..start+n``."""
        end = start + int(keys.shape[2])
        self.keys[layer][:, :, start:end, :] = keys.astype(self.dtype)
        self.values[layer][:, :, start:end, :] = values.astype(self.dtype)
        return self.keys[layer][:, :, :end, :], self.values[layer][:, :, :end, :]

    def arrays(self) -> list[mx.array]:
        return [*self.keys, *self.values]

    def bytes_allocated(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays())

    def bytes_used(self) -> int:
        return self.bytes_allocated() * self.length // max(1, self.capacity)
