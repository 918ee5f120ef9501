"""CUDA graphs for pure-decode steps, captured lazily per (batch, key length) bucket.

A decode step launches hundreds of small kernels; replaying a captured graph
removes the launch overhead. A graph needs static shapes, so the batch is
padded to a bucket (padding rows write and read the pool's scratch block) and
the key length to a power-of-two number of blocks (masked). Only used on
CUDA, for steps where every item computes one token and no LoRA is active.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ferrum_cuda.attention import AttentionMetadata, DecodeGroup
from ferrum_cuda.batch import StepBatch, Work
from ferrum_cuda.transformer import Transformer

__all__ = ["DecodeGraphs"]


@dataclass(frozen=True, slots=True)
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    gather: torch.Tensor
    mask: torch.Tensor
    logits: torch.Tensor


def _batch_bucket(size: int) -> int:
    for bucket in (1, 2, 4, 8):
        if size <= bucket:
            return bucket
    return -(-size // 8) * 8


class DecodeGraphs:
    def __init__(self, transformer: Transformer, *, max_batch_size: int, max_graphs: int = 48):
        self.transformer = transformer
        self.max_batch_size = max_batch_size
        self.max_graphs = max_graphs
        self.block_size = transformer.pool.block_size
        self.max_blocks = -(-transformer.cfg.max_model_len // self.block_size)
        self.window = transformer.cfg.sliding_window
        self._graphs: dict[tuple[int, int], _Captured] = {}
        self._mempool = torch.cuda.graph_pool_handle()
        self.replays = 0

    def metrics(self) -> dict[str, int]:
        return {"cuda_graphs_captured": len(self._graphs), "cuda_graph_replays": self.replays}

    def accepts(self, works: Sequence[Work], counts: Sequence[int]) -> bool:
        return (
            0 < len(works) <= self.max_batch_size
            and all(n == 1 for n in counts)
            and all(w.want == "last" for w in works)
        )

    def run(self, step: StepBatch) -> torch.Tensor | None:
        """Logits for the batch, or ``None`` when no graph fits (run eagerly then)."""
        ids, spans = step.ids, step.spans
        if step.logit_rows != list(range(len(ids))):
            return None
        batch = _batch_bucket(len(ids))
        longest = max(s.length for s in spans)
        blocks = 1
        while blocks * self.block_size < longest:
            blocks *= 2
        blocks = min(blocks, self.max_blocks)
        key = (batch, blocks)
        captured = self._graphs.get(key)
        if captured is None:
            if len(self._graphs) >= self.max_graphs:
                return None
            captured = self._capture(batch, blocks)
            self._graphs[key] = captured
        self._fill(captured, step, blocks)
        captured.graph.replay()
        self.replays += 1
        return captured.logits[: len(ids)]

    def _fill(self, c: _Captured, step: StepBatch, blocks: int) -> None:
        ids, positions, slots, spans = step.ids, step.positions, step.slots, step.spans
        bs, pad = self.block_size, c.ids.shape[0] - len(ids)
        scratch = self.transformer.pool.scratch_slot
        scratch_block = scratch // bs
        tables = [
            list(s.block_table) + [scratch_block] * (blocks - len(s.block_table)) for s in spans
        ]
        tables += [[scratch_block] * blocks] * pad
        table = torch.tensor(tables, dtype=torch.long)
        gather = (table[:, :, None] * bs + torch.arange(bs)).reshape(len(tables), -1)
        lengths = torch.tensor([s.length for s in spans] + [1] * pad)[:, None]
        k_pos = torch.arange(blocks * bs)[None, :]
        allowed = k_pos < lengths
        if self.window is not None:
            allowed &= k_pos > lengths - 1 - self.window
        c.ids.copy_(torch.tensor(ids + [0] * pad), non_blocking=True)
        c.positions.copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        c.slots.copy_(torch.tensor(slots + [scratch] * pad), non_blocking=True)
        c.gather.copy_(gather, non_blocking=True)
        c.mask.copy_(allowed[:, None, None, :], non_blocking=True)

    def _call(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        gather: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        meta = AttentionMetadata(slots, DecodeGroup(ids.shape[0], gather, mask), ())
        return self.transformer.forward(ids, positions, meta)

    def _capture(self, batch: int, blocks: int) -> _Captured:
        device = self.transformer.pool.data.device
        width = blocks * self.block_size
        scratch = self.transformer.pool.scratch_slot
        ids = torch.zeros(batch, dtype=torch.long, device=device)
        positions = torch.zeros(batch, dtype=torch.long, device=device)
        slots = torch.full((batch,), scratch, dtype=torch.long, device=device)
        gather = torch.full((batch, width), scratch, dtype=torch.long, device=device)
        mask = torch.zeros((batch, 1, 1, width), dtype=torch.bool, device=device)
        mask[..., 0] = True
        args = (ids, positions, slots, gather, mask)
        # Warm up on a side stream (allocator and kernel selection), then capture.
        stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._call(*args)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._mempool):
            logits = self._call(*args)
        return _Captured(graph, ids, positions, slots, gather, mask, logits)
