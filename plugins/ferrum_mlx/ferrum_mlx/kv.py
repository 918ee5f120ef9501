"""KV in one pool per model: per layer one slab ``[slots, kv_heads, capacity, head_dim]``,
a sequence owning one slot (row). Written in place by slice updates (a span) or one
scatter (a decode step of several sequences), never copied per token; the capacity
grows for every slot at once in steps of KV_STEP positions, the slots in steps of
SLOT_STEP. A decode step of B sequences reads their rows as one ``[B, ...]`` block (a
view when their slots are consecutive), so attention is one masked call per layer."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

__all__ = ["KV_STEP", "SLOT_STEP", "DecodeRows", "KvPool", "SequenceKv"]

KV_STEP = 256
"""Slabs grow by whole steps of this many positions."""
SLOT_STEP = 4
"""The pool grows by this many slots when every slot is taken."""


class KvPool:
    """Keys and values of every live sequence, per layer ``[slots, kv_heads, capacity, d]``."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: mx.Dtype) -> None:
        self.num_layers = num_layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.keys: list[mx.array] = []
        self.values: list[mx.array] = []
        self.slots = 0
        self.capacity = 0
        self.free: list[int] = []

    def _grow(self, slots: int, capacity: int) -> None:
        shape = (slots, self.kv_heads, capacity, self.head_dim)
        if not self.keys:
            self.keys = [mx.zeros(shape, self.dtype) for _ in range(self.num_layers)]
            self.values = [mx.zeros(shape, self.dtype) for _ in range(self.num_layers)]
        else:
            def grown(a: mx.array) -> mx.array:
                out = mx.zeros(shape, self.dtype)
                out[: self.slots, :, : self.capacity, :] = a
                return out

            self.keys = [grown(a) for a in self.keys]
            self.values = [grown(a) for a in self.values]
        self.free.extend(range(self.slots, slots))
        self.free.sort(reverse=True)  # pop() hands out the lowest free slot
        self.slots, self.capacity = slots, capacity

    def acquire(self) -> int:
        if not self.free:
            self._grow(self.slots + SLOT_STEP, max(self.capacity, KV_STEP))
        return self.free.pop()

    def release(self, slot: int) -> None:
        self.free.append(slot)
        self.free.sort(reverse=True)
        if len(self.free) == self.slots:  # nothing lives: give the memory back
            self.keys, self.values, self.slots, self.capacity, self.free = [], [], 0, 0, []

    def reserve(self, length: int, limit: int) -> None:
        """Room for ``length`` positions in every slot (a multiple of KV_STEP, at most
        ``limit``)."""
        if length <= self.capacity:
            return
        capacity = max(min(limit, -(-length // KV_STEP) * KV_STEP), length)
        self._grow(self.slots, capacity)

    def arrays(self) -> list[mx.array]:
        return [*self.keys, *self.values]

    def nbytes(self) -> int:
        return self.slots * self.bytes_per_slot()

    def bytes_per_slot(self) -> int:
        per_position = self.kv_heads * self.head_dim * self.dtype.size
        return 2 * self.num_layers * self.capacity * per_position

    def write(
        self, layer: int, slot: int, start: int, keys: mx.array, values: mx.array
    ) -> tuple[mx.array, mx.array]:
        """Store ``[1, kv_heads, n, head_dim]`` at ``start``; return positions ``0..start+n``."""
        end = start + int(keys.shape[2])
        rows = slice(slot, slot + 1)
        self.keys[layer][rows, :, start:end, :] = keys.astype(self.dtype)
        self.values[layer][rows, :, start:end, :] = values.astype(self.dtype)
        return self.keys[layer][rows, :, :end, :], self.values[layer][rows, :, :end, :]

    def write_rows(self, layer: int, group: DecodeRows, keys: mx.array, values: mx.array
                   ) -> tuple[mx.array, mx.array]:  # fmt: skip
        """One token per sequence of ``group``: ``[B, kv_heads, head_dim]`` at each one's
        position (one scatter); return their rows ``[B, kv_heads, length, d]`` (a view of
        the slab when their slots are consecutive)."""
        heads = mx.arange(self.kv_heads)[None, :]
        where = (group.slots[:, None], heads, group.positions[:, None])
        self.keys[layer][where] = keys.astype(self.dtype)
        self.values[layer][where] = values.astype(self.dtype)
        if group.first is not None:
            rows = slice(group.first, group.first + int(group.slots.shape[0]))
            return (self.keys[layer][rows, :, : group.length, :],
                    self.values[layer][rows, :, : group.length, :])
        return (self.keys[layer][group.slots, :, : group.length, :],
                self.values[layer][group.slots, :, : group.length, :])


@dataclass(frozen=True, slots=True)
class DecodeRows:
    """A decode step of B sequences in slot order: their ``slots`` and ``positions``
    (int32 ``[B]``), ``first`` slot when they are consecutive, the ``length`` of the
    longest after this token, the attention ``mask`` ``[B, 1, 1, length]``, and
    ``order`` / ``inverse`` (int32 ``[B]``) from the batch's order to slot order and
    back (``None``: the batch is in slot order)."""

    slots: mx.array
    positions: mx.array
    first: int | None
    length: int
    mask: mx.array
    order: mx.array | None
    inverse: mx.array | None


class SequenceKv:
    """One sequence's slot in the pool and how many positions it holds."""

    def __init__(self, pool: KvPool, slot: int) -> None:
        self.pool = pool
        self.slot = slot
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.pool.capacity

    def bytes_allocated(self) -> int:
        return self.pool.bytes_per_slot()

    def bytes_used(self) -> int:
        return self.bytes_allocated() * self.length // max(1, self.capacity)
