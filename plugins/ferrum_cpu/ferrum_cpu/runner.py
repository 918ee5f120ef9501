"""One ONNX Runtime session and the I/O bindings that drive it over the KV pool.

A run covers the contiguous slot range ``[lo, hi)`` of :class:`KvPool`: each
slot gets a right-padded row of new tokens (none for an idle slot), and
``GroupQueryAttention`` appends them to the slot's KV in place. Bindings are
built once per shape (range, padded length, logit rows) and reused while the
pool's arrays stay where they are: a steady decode step writes a few ints into
bound arrays and calls ``run_with_iobinding``; no tensor is allocated or copied
apart from the logits ORT writes into a bound buffer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferrum_cpu.kv import KvPool

__all__ = ["Runner", "SlotWork"]

_MAX_BINDINGS = 64


@dataclass(frozen=True, slots=True)
class SlotWork:
    """New tokens for one slot and which of their logits to return (``last``/``all``/``none``)."""

    slot: int
    tokens: Sequence[int]
    logits: str = "last"


class _Binding:
    def __init__(self, runner: Runner, lo: int, batch: int, seq: int, rows: int) -> None:
        pool = runner.pool
        self.io = runner.session.io_binding()
        self.input_ids = np.zeros((batch, seq), np.int64)
        self.seqlens_k = np.zeros(batch, np.int32)
        self.total = np.zeros((), np.int32)
        self.query_seqlens = np.zeros(batch, np.int32)
        self.logit_rows = np.zeros(rows, np.int64)
        self.logits = np.zeros((rows, runner.vocab), np.float32)
        for name, array in (("input_ids", self.input_ids), ("seqlens_k", self.seqlens_k),
                            ("total_seq_len", self.total), ("query_seqlens", self.query_seqlens),
                            ("logit_rows", self.logit_rows), ("cos_cache", runner.cos),
                            ("sin_cache", runner.sin)):  # fmt: skip
            self._bind(name, array, output=False)
        self._bind("logits", self.logits, output=True)
        shape = [batch, pool.kv_heads, pool.capacity, pool.head_dim]
        for layer in range(pool.layers):
            for kind, store in (("key", pool.keys), ("value", pool.values)):
                ptr = store[layer, lo].ctypes.data if batch else store.ctypes.data
                self.io.bind_input(f"past_{kind}.{layer}", "cpu", 0, np.float32, shape, ptr)
                self.io.bind_output(f"present_{kind}.{layer}", "cpu", 0, np.float32, shape, ptr)

    def _bind(self, name: str, array: np.ndarray, *, output: bool) -> None:
        bind = self.io.bind_output if output else self.io.bind_input
        bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)


class Runner:
    def __init__(self, session: Any, pool: KvPool, vocab: int, cos: np.ndarray,
                 sin: np.ndarray) -> None:  # fmt: skip
        self.session = session
        self.pool = pool
        self.vocab = vocab
        self.cos = np.ascontiguousarray(cos, np.float32)
        self.sin = np.ascontiguousarray(sin, np.float32)
        self._bindings: OrderedDict[tuple[int, ...], _Binding] = OrderedDict()
        self.runs = 0

    def _binding(self, lo: int, batch: int, seq: int, rows: int) -> _Binding:
        key = (lo, batch, seq, rows, self.pool.generation, self.pool.capacity)
        found = self._bindings.get(key)
        if found is not None:
            self._bindings.move_to_end(key)
            return found
        binding = _Binding(self, lo, batch, seq, rows)
        self._bindings[key] = binding
        while len(self._bindings) > _MAX_BINDINGS:
            self._bindings.popitem(last=False)
        return binding

    def clear(self) -> None:
        self._bindings.clear()

    def run(self, lo: int, hi: int, work: Sequence[SlotWork]) -> dict[int, np.ndarray]:
        """One session run over slots ``[lo, hi)``; lengths in the pool are NOT advanced.

        Returns, per slot that asked for logits, ``[vocab]`` (``last``) or
        ``[n, vocab]`` (``all``) float32 arrays (copies).
        """
        pool = self.pool
        by_slot = {w.slot: w for w in work}
        seq = max(len(w.tokens) for w in work)
        rows = sum(len(w.tokens) if w.logits == "all" else 1 for w in work if w.logits != "none")
        batch = hi - lo
        b = self._binding(lo, batch, seq, max(rows, 1))
        lengths = pool.lengths(lo, hi)
        b.input_ids.fill(0)
        picks: list[tuple[int, int, int]] = []  # slot, first row, count
        row = 0
        for i, past in enumerate(lengths):
            w = by_slot.get(lo + i)
            if w is None:
                b.query_seqlens[i] = 0
                b.seqlens_k[i] = max(past, 1) - 1
                continue
            n = len(w.tokens)
            b.input_ids[i, :n] = w.tokens
            b.query_seqlens[i] = n
            b.seqlens_k[i] = past + n - 1
            if w.logits == "last":
                b.logit_rows[row] = i * seq + n - 1
                picks.append((w.slot, row, 1))
                row += 1
            elif w.logits == "all":
                b.logit_rows[row : row + n] = np.arange(i * seq, i * seq + n)
                picks.append((w.slot, row, n))
                row += n
        if row == 0:
            b.logit_rows[0] = 0
        b.total[...] = int(b.seqlens_k.max()) + 1
        self.session.run_with_iobinding(b.io)
        self.runs += 1
        out: dict[int, np.ndarray] = {}
        for slot, first, count in picks:
            w = by_slot[slot]
            block = b.logits[first : first + count]
            out[slot] = block[0].copy() if w.logits == "last" else block.copy()
        return out
