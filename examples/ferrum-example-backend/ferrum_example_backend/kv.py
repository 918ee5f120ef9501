"""Contiguous per-sequence KV buffers that grow by doubling (no paging, no sharing)."""

from __future__ import annotations

import numpy as np

__all__ = ["SequenceKv"]


class SequenceKv:
    """One sequence's keys and values: per layer ``[kv_heads, capacity, head_dim]``."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, initial: int = 16) -> None:
        shape = (kv_heads, initial, head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(num_layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(num_layers)]
        self.length = 0

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[1])

    def reserve(self, length: int) -> None:
        if length <= self.capacity:
            return
        new_cap = max(length, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                grown = np.zeros((old.shape[0], new_cap, old.shape[2]), np.float32)
                grown[:, : self.length] = old[:, : self.length]
                store[i] = grown

    def write(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store ``k``/``v`` of shape ``[n, kv_heads, head_dim]`` at positions ``start..``."""
        end = start + k.shape[0]
        self.keys[layer][:, start:end] = k.transpose(1, 0, 2)
        self.values[layer][:, start:end] = v.transpose(1, 0, 2)

    def view(self, layer: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        return self.keys[layer][:, :length], self.values[layer][:, :length]

    def bytes_allocated(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)

    def bytes_used(self) -> int:
        return self.bytes_allocated() * self.length // max(1, self.capacity)
