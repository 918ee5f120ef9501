"""CUDA graphs for pure-decode steps, captured lazily per (batch, key length) bucket.

A decode step launches hundreds of small kernels; replaying a captured graph
removes the launch overhead. A graph needs static shapes, so the batch is
padded to a bucket (padding rows write and read the pool's scratch block) and
the key length to a power-of-two number of blocks (masked). Only used on
CUDA, for steps where every item computes one token and no LoRA is active.

The static-shape part (buckets, static buffers, the padded forward) does not
depend on the capture: a *capturer* turns a bucket's forward into its replay.
On CUDA it records a ``torch.cuda.CUDAGraph``; elsewhere (:func:`eager_replay`)
the replay is the same forward run eagerly on the same static buffers, which
is how the CPU tests check the padding logic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ferrum_core.errors import UnsupportedError
from ferrum_cuda.attention import AttentionMetadata, DecodeGroup
from ferrum_cuda.batch import StepBatch, Work
from ferrum_cuda.transformer import Transformer

__all__ = ["Capturer", "CudaGraphCapturer", "DecodeGraphs", "eager_replay"]

Replay = Callable[[], torch.Tensor]  # runs a bucket's forward, returns its logits
Capturer = Callable[[Replay], Replay]  # a bucket's forward -> its replay


def eager_replay(forward: Replay) -> Replay:
    """No capture: each replay runs the static-shape forward eagerly."""
    return forward


class CudaGraphCapturer:
    """Warms a forward up on a side stream, then records it into a CUDA graph."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._mempool = torch.cuda.graph_pool_handle()  # shared by every bucket's graph

    def __call__(self, forward: Replay) -> Replay:
        device = self.device
        # Warm up on a side stream (allocator and kernel selection), then capture.
        stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                forward()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._mempool):
            logits = forward()

        def replay() -> torch.Tensor:
            graph.replay()
            return logits

        return replay


@dataclass(frozen=True, slots=True)
class _Static:
    """One bucket's input buffers (filled in place each step) and its replay."""

    ids: torch.Tensor  # [B]
    positions: torch.Tensor  # [B]
    slots: torch.Tensor  # [B]
    gather: torch.Tensor  # [B, L]
    mask: torch.Tensor  # [B, 1, 1, L]
    replay: Replay


def _batch_bucket(size: int) -> int:
    for bucket in (1, 2, 4, 8):
        if size <= bucket:
            return bucket
    return -(-size // 8) * 8


def _key_blocks(longest: int, block_size: int, max_blocks: int) -> int:
    """Blocks of keys for a bucket: the next power of two, capped at a sequence's maximum."""
    blocks = 1
    while blocks * block_size < longest:
        blocks *= 2
    return min(blocks, max_blocks)


class DecodeGraphs:
    def __init__(
        self,
        transformer: Transformer,
        *,
        max_batch_size: int,
        max_graphs: int = 48,
        capturer: Capturer | None = None,
    ) -> None:
        self.transformer = transformer
        self.max_batch_size = max_batch_size
        self.max_graphs = max_graphs
        self.block_size = transformer.pool.block_size
        self.max_blocks = -(-transformer.cfg.max_model_len // self.block_size)
        self.window = transformer.cfg.sliding_window
        self.device = transformer.pool.data.device
        if capturer is None:
            if self.device.type != "cuda":
                raise UnsupportedError("CUDA graphs need a CUDA device (elsewhere: eager_replay)")
            capturer = CudaGraphCapturer(self.device)
        self.capturer = capturer
        self._graphs: dict[tuple[int, int], _Static] = {}
        self.replays = 0

    def metrics(self) -> dict[str, int]:
        return {"cuda_graphs_captured": len(self._graphs), "cuda_graph_replays": self.replays}

    def accepts(
        self, works: Sequence[Work], counts: Sequence[int], lora: object | None = None
    ) -> bool:
        """Pure decode steps only: one computed token per item, no adapter, not over max."""
        return (
            lora is None
            and 0 < len(works) <= self.max_batch_size
            and all(n == 1 for n in counts)
            and all(w.want == "last" for w in works)
        )

    def run(self, step: StepBatch) -> torch.Tensor | None:
        """Logits for the batch, or ``None`` when no graph fits (run eagerly then)."""
        ids, spans = step.ids, step.spans
        if step.logit_rows != list(range(len(ids))):
            return None
        longest = max(s.length for s in spans)
        blocks = _key_blocks(longest, self.block_size, self.max_blocks)
        if longest > blocks * self.block_size:  # past max_model_len: no bucket holds it
            return None
        key = (_batch_bucket(len(ids)), blocks)
        static = self._graphs.get(key)
        if static is None:
            if len(self._graphs) >= self.max_graphs:
                return None
            static = self._capture(*key)
            self._graphs[key] = static
        self._fill(static, step, blocks)
        logits = static.replay()
        self.replays += 1
        return logits[: len(ids)]

    def _fill(self, s: _Static, step: StepBatch, blocks: int) -> None:
        ids, positions, slots, spans = step.ids, step.positions, step.slots, step.spans
        bs, pad = self.block_size, s.ids.shape[0] - len(ids)
        scratch = self.transformer.pool.scratch_slot
        scratch_block = scratch // bs
        tables = [
            list(sp.block_table[:blocks]) + [scratch_block] * (blocks - len(sp.block_table))
            for sp in spans
        ]
        tables += [[scratch_block] * blocks] * pad
        table = torch.tensor(tables, dtype=torch.long)
        gather = (table[:, :, None] * bs + torch.arange(bs)).reshape(len(tables), -1)
        lengths = torch.tensor([sp.length for sp in spans] + [1] * pad)[:, None]
        k_pos = torch.arange(blocks * bs)[None, :]
        allowed = k_pos < lengths
        if self.window is not None:
            allowed &= k_pos > lengths - 1 - self.window
        # Masked keys read the row's first slot (written: position 0, or the scratch slot
        # a padding row writes first): unwritten pool memory (NaN, inf) would otherwise
        # leak through the softmax's zero weights, as in the eager decode group.
        gather = torch.where(allowed, gather, gather[:, :1])
        s.ids.copy_(torch.tensor(ids + [0] * pad), non_blocking=True)
        s.positions.copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        s.slots.copy_(torch.tensor(slots + [scratch] * pad), non_blocking=True)
        s.gather.copy_(gather, non_blocking=True)
        s.mask.copy_(allowed[:, None, None, :], non_blocking=True)

    def _capture(self, batch: int, blocks: int) -> _Static:
        device, width = self.device, blocks * self.block_size
        scratch = self.transformer.pool.scratch_slot
        ids = torch.zeros(batch, dtype=torch.long, device=device)
        positions = torch.zeros(batch, dtype=torch.long, device=device)
        slots = torch.full((batch,), scratch, dtype=torch.long, device=device)
        gather = torch.full((batch, width), scratch, dtype=torch.long, device=device)
        mask = torch.zeros((batch, 1, 1, width), dtype=torch.bool, device=device)
        mask[..., 0] = True

        def forward() -> torch.Tensor:
            meta = AttentionMetadata(slots, DecodeGroup(batch, gather, mask), ())
            return self.transformer.forward(ids, positions, meta)

        return _Static(ids, positions, slots, gather, mask, self.capturer(forward))
