"""The collectives of one forward (the transformer's ``TpHook``) on one rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ferrum_cuda.tp.group import TpGroup

__all__ = ["TpOps"]


class TpOps:
    """Vocabulary-parallel embedding and logits, all-reduce of row-parallel outputs."""

    def __init__(self, group: TpGroup, vocab_per_rank: int, vocab_size: int) -> None:
        self.group = group
        self.vocab_per_rank = vocab_per_rank
        self.vocab_size = vocab_size  # the real one; the padding is cut off the logits
        self.all_reduces = 0  # counted for the benchmark

    def embed(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        local = ids - self.group.rank * self.vocab_per_rank
        mine = (local >= 0) & (local < self.vocab_per_rank)
        rows = F.embedding(local.clamp(0, self.vocab_per_rank - 1), table)
        return self.reduce(rows * mine.unsqueeze(1).to(rows.dtype))

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        self.all_reduces += 1
        return self.group.all_reduce(partial.contiguous())

    def logits(self, local: torch.Tensor) -> torch.Tensor:
        parts = self.group.all_gather(local.contiguous())
        return torch.cat(parts, dim=1)[:, : self.vocab_size]
