"""Pre-allocated KV: one array per K and V, ``[layers, slots, kv_heads, capacity, head_dim]``.

Each live sequence owns a slot; live slots are kept at ``0..n-1`` (a release
moves the last sequence into the hole, a copy once per release, never per
step), so the slots of a batch form one contiguous range and every layer's
``[lo:hi]`` slice is a single ``[B, kv_heads, capacity, head_dim]`` block that
``GroupQueryAttention`` reads and writes in place (past and present bound to
the same memory). The arrays grow (doubling slots or capacity) only when a
sequence needs room it does not have; a step never allocates KV-sized memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ferrum_core.errors import KvPoolExhaustedError

__all__ = ["KvPool"]


@dataclass(slots=True)
class _Seq:
    slot: int
    length: int


class KvPool:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, *, max_slots: int,
                 max_capacity: int, budget_bytes: int,
                 initial_capacity: int = 256) -> None:  # fmt: skip
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.max_slots, self.max_capacity = max_slots, max_capacity
        self.budget_bytes = budget_bytes
        self.capacity = min(initial_capacity, max_capacity)
        self.slots = 0
        self.keys = self._alloc(0, self.capacity)
        self.values = self._alloc(0, self.capacity)
        self.generation = 0  # bumped whenever the arrays move
        self._seqs: dict[str, _Seq] = {}
        self._order: list[str] = []  # cache id per slot

    def _alloc(self, slots: int, capacity: int) -> np.ndarray:
        return np.zeros((self.layers, slots, self.kv_heads, capacity, self.head_dim), np.float32)

    # -- bookkeeping ------------------------------------------------------------------
    def __contains__(self, cache_id: str) -> bool:
        return cache_id in self._seqs

    def __len__(self) -> int:
        return len(self._order)

    def length(self, cache_id: str) -> int:
        seq = self._seqs.get(cache_id)
        return 0 if seq is None else seq.length

    def slot(self, cache_id: str) -> int:
        return self._seqs[cache_id].slot

    def cache_id_at(self, slot: int) -> str:
        return self._order[slot]

    def set_length(self, cache_id: str, length: int) -> None:
        self._seqs[cache_id].length = length

    def reserve(self, needs: dict[str, int]) -> None:
        """Make room for each ``cache_id`` to hold ``needs[cache_id]`` rows; new ids get
        slots. Raises KvPoolExhaustedError before changing anything when it cannot."""
        new = [cid for cid in needs if cid not in self._seqs]
        if len(self._order) + len(new) > self.max_slots:
            raise KvPoolExhaustedError(
                f"{len(self._order) + len(new)} sequences need KV slots; the cpu backend "
                f"holds at most {self.max_slots}"
            )
        rows = max(needs.values(), default=0)
        if rows > self.max_capacity:
            raise KvPoolExhaustedError(
                f"a sequence needs {rows} KV rows; the buffer holds at most {self.max_capacity}"
            )
        slots = len(self._order) + len(new)
        if slots > self.slots or rows > self.capacity:
            grown_slots, grown_rows = self._sizes(max(slots, self.slots), max(rows, self.capacity))
            wanted = 2 * grown_slots * grown_rows * self.row_bytes
            if wanted > self.budget_bytes:
                raise KvPoolExhaustedError(
                    f"{slots} sequences of up to {rows} tokens need {wanted >> 20} MiB of KV; "
                    f"the cpu backend's budget is {self.budget_bytes >> 20} MiB"
                )
            self._grow(grown_slots, grown_rows)
        for cid in new:
            self._seqs[cid] = _Seq(len(self._order), 0)
            self._order.append(cid)

    @property
    def row_bytes(self) -> int:
        """Bytes of one position of one sequence in K (or V), over every layer."""
        return self.layers * self.kv_heads * self.head_dim * 4

    def _sizes(self, slots: int, rows: int) -> tuple[int, int]:
        new_slots = self.slots
        while new_slots < slots:
            new_slots = min(self.max_slots, max(1, new_slots * 2))
        capacity = self.capacity
        while capacity < rows:
            capacity = min(self.max_capacity, capacity * 2)
        return new_slots, capacity

    def _grow(self, new_slots: int, capacity: int) -> None:
        keys, values = self._alloc(new_slots, capacity), self._alloc(new_slots, capacity)
        used = len(self._order)
        keys[:, :used, :, : self.capacity] = self.keys[:, :used]
        values[:, :used, :, : self.capacity] = self.values[:, :used]
        self.keys, self.values = keys, values
        self.slots, self.capacity = new_slots, capacity
        self.generation += 1

    def release(self, cache_id: str) -> None:
        seq = self._seqs.pop(cache_id, None)
        if seq is None:
            return
        last = len(self._order) - 1
        if seq.slot != last:  # move the last sequence into the hole: slots stay 0..n-1
            moved = self._order[last]
            n = self._seqs[moved].length
            self.keys[:, seq.slot, :, :n] = self.keys[:, last, :, :n]
            self.values[:, seq.slot, :, :n] = self.values[:, last, :, :n]
            self._seqs[moved].slot = seq.slot
            self._order[seq.slot] = moved
        self._order.pop()

    def lengths(self, lo: int, hi: int) -> list[int]:
        return [self._seqs[self._order[s]].length for s in range(lo, hi)]

    def bytes_allocated(self) -> int:
        return int(self.keys.nbytes + self.values.nbytes)

    def bytes_used(self) -> int:
        return sum(s.length for s in self._seqs.values()) * 2 * self.row_bytes
