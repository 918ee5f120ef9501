"""`OrtDecoderLLM`: the `DecoderOnlyLLM` over one ONNX Runtime session.

Every entry point (prefill, decode, decode_batch, unified_forward,
forward_verify) becomes a list of work items that :func:`plan_runs` packs into
as few session runs as the padding allows: a mixed batch of prefill chunks and
decode tokens over neighbouring slots is ONE run (``GroupQueryAttention`` takes
per-row ``query_seqlens`` and ``seqlens_k``), which is why ``native_unified``
is claimed. Lengths advance only after every run of a call succeeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferrum_core.errors import BackendError, InvalidInputError, UnsupportedError
from ferrum_core.plugin import ActiveLoraAdapter, DecodeItem, LlmRuntimeConfig, UnifiedItem
from ferrum_cpu.kv import KvPool
from ferrum_cpu.runner import Runner, SlotWork

__all__ = ["OrtDecoderLLM", "Piece", "plan_runs"]

MAX_GAP = 8  # idle slots a decode run may span before it is split in two


@dataclass(frozen=True, slots=True)
class Piece:
    cache_id: str
    tokens: Sequence[int]
    logits: str  # "last", "all" or "none"


def plan_runs(pieces: Sequence[tuple[int, Piece]]) -> list[list[tuple[int, Piece]]]:
    """Group ``(slot, piece)`` pairs into session runs over contiguous slot ranges.

    One run when the padded work (range x longest piece) stays within twice the
    real tokens; otherwise decode tokens run together (split where idle gaps are
    long) and each longer piece runs alone.
    """
    ordered = sorted(pieces, key=lambda sp: sp[0])
    lo, hi = ordered[0][0], ordered[-1][0] + 1
    longest = max(len(p.tokens) for _, p in ordered)
    real = sum(len(p.tokens) for _, p in ordered)
    if (hi - lo) * longest <= 2 * real + 8:
        return [ordered]
    runs: list[list[tuple[int, Piece]]] = []
    singles = [sp for sp in ordered if len(sp[1].tokens) == 1]
    current: list[tuple[int, Piece]] = []
    for sp in singles:
        if current and sp[0] - current[-1][0] > MAX_GAP:
            runs.append(current)
            current = []
        current.append(sp)
    if current:
        runs.append(current)
    runs.extend([sp] for sp in ordered if len(sp[1].tokens) > 1)
    return runs


class OrtDecoderLLM:
    """Model math over a KV pool of per-sequence slots (see ``DecoderOnlyLLM``)."""

    def __init__(self, runtime: LlmRuntimeConfig, runner: Runner, *, weights_bytes: int,
                 max_chunk: int) -> None:  # fmt: skip
        self._runtime = runtime
        self.runner = runner
        self.pool: KvPool = runner.pool
        self._weights_bytes = weights_bytes
        self._max_chunk = max_chunk

    # -- DecoderOnlyLLM ------------------------------------------------------------------
    @property
    def config(self) -> LlmRuntimeConfig:
        return self._runtime

    @property
    def native_unified(self) -> bool:
        return True

    def prefill(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        return _row(self._forward([(Piece(cache_id, tokens, "last"), start_pos)])[0])

    def decode(self, cache_id: str, token: int, pos: int) -> np.ndarray:
        return _row(self._forward([(Piece(cache_id, [token], "last"), pos)])[0])

    def decode_batch(self, items: Sequence[DecodeItem],
                     force_full_logits: bool) -> list[np.ndarray]:  # fmt: skip
        out = self._forward([(Piece(i.cache_id, [i.token], "last"), i.pos) for i in items])
        return [row for row in out if row is not None]

    def unified_forward(self, items: Sequence[UnifiedItem]) -> list[np.ndarray | None]:
        return self._forward([
            (Piece(i.cache_id, i.tokens, "last" if i.is_final_chunk else "none"), i.pos_offset)
            for i in items
        ])  # fmt: skip

    def forward_verify(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        return _row(self._forward([(Piece(cache_id, tokens, "all"), start_pos)])[0])

    def truncate_kv(self, cache_id: str, new_len: int) -> None:
        if cache_id in self.pool:
            self.pool.set_length(cache_id, min(self.pool.length(cache_id), max(0, new_len)))

    def release(self, cache_id: str) -> None:
        self.pool.release(cache_id)

    def kv_capacity(self) -> int:
        return self._runtime.max_seq_len

    def set_lora_adapter_for_cache(self, cache_id: str, adapter: ActiveLoraAdapter | None) -> None:
        if adapter is not None:
            raise UnsupportedError("the cpu backend does not support LoRA adapters")

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        return {
            "active_sequences": len(self.pool),
            "kv_slots_allocated": self.pool.slots,
            "kv_rows_per_slot": self.pool.capacity,
            "kv_bytes_allocated": self.pool.bytes_allocated(),
            "session_runs": self.runner.runs,
        }

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        return None

    def memory_usage_bytes(self) -> tuple[int, int]:
        return (self._weights_bytes + self.pool.bytes_allocated(),
                self._weights_bytes + self.pool.bytes_used())  # fmt: skip

    # -- the forward -------------------------------------------------------------------
    def _forward(self, items: Sequence[tuple[Piece, int]]) -> list[np.ndarray | None]:
        pool = self.pool
        for piece, start in items:
            if start != pool.length(piece.cache_id):
                raise InvalidInputError(
                    f"{piece.cache_id!r} holds {pool.length(piece.cache_id)} positions, "
                    f"asked to write at {start}"
                )
        fresh = [p.cache_id for p, _ in items if p.cache_id not in pool]
        before = {p.cache_id: start for p, start in items}
        try:
            results = self._rounds(items)
        except BaseException:
            for cid, length in before.items():
                if cid in fresh:
                    pool.release(cid)
                elif cid in pool:
                    pool.set_length(cid, length)
            raise
        return results

    def _rounds(self, items: Sequence[tuple[Piece, int]]) -> list[np.ndarray | None]:
        """Run chunks of at most ``max_chunk`` tokens, round by round; commit lengths."""
        pool, chunk = self.pool, self._max_chunk
        pool.reserve({p.cache_id: start + min(len(p.tokens), chunk) for p, start in items})
        results: list[np.ndarray | None] = [None] * len(items)
        offset = 0
        while True:
            live = [(i, p) for i, (p, _) in enumerate(items) if offset < len(p.tokens)]
            if not live:
                return results
            pieces = []
            for i, p in live:
                part = p.tokens[offset : offset + chunk]
                last = offset + chunk >= len(p.tokens)
                mode = p.logits if last or p.logits == "all" else "none"
                pieces.append((i, Piece(p.cache_id, part, mode)))
            outs: dict[str, np.ndarray] = {}
            for run in plan_runs([(pool.slot(p.cache_id), p) for _, p in pieces]):
                outs.update(self._run(run))
            for i, piece in pieces:
                got = outs.get(piece.cache_id)
                if got is not None:
                    prev = results[i]
                    results[i] = got if prev is None else np.concatenate([prev, got])
                pool.set_length(piece.cache_id, pool.length(piece.cache_id) + len(piece.tokens))
            offset += chunk

    def _run(self, run: list[tuple[int, Piece]]) -> dict[str, np.ndarray]:
        pool = self.pool
        lo, hi = run[0][0], run[-1][0] + 1
        seq = max(len(p.tokens) for _, p in run)
        need = max(pool.lengths(lo, hi)) + seq
        if need > pool.capacity:
            pool.reserve({pool.cache_id_at(lo): need})
        out = self.runner.run(lo, hi, [SlotWork(slot, p.tokens, p.logits) for slot, p in run])
        return {pool.cache_id_at(slot): out[slot] for slot in out}


def _row(logits: np.ndarray | None) -> np.ndarray:
    if logits is None:
        raise BackendError("the session returned no logits for an item that samples")
    return logits
