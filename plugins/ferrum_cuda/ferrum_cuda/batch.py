"""One step's work items flattened into the rows of a single ragged forward."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ferrum_core.plugin import AppendResult
from ferrum_cuda.attention import SeqSpan

__all__ = ["Want", "Work", "StepBatch"]

Want = Literal["last", "all", "none"]  # which logits an item needs


@dataclass(frozen=True, slots=True)
class Work:
    cache_id: str
    tokens: Sequence[int]
    start_pos: int
    want: Want

    @property
    def max_cached(self) -> int:
        """Leading tokens the prefix cache may serve: the rows whose logits are needed stay."""
        n = len(self.tokens)
        return {"last": n - 1, "all": 0, "none": n}[self.want]


@dataclass(frozen=True, slots=True)
class StepBatch:
    ids: list[int]
    positions: list[int]
    slots: list[int]
    spans: list[SeqSpan]  # in row order: single-row items first
    first_row: list[int]  # per work item (in the caller's order)
    counts: list[int]  # rows computed per work item
    logit_rows: list[int]  # rows whose logits are returned, in the caller's order
    copies: list[tuple[int, int]]  # copy-on-write block copies to do first

    @classmethod
    def build(cls, works: Sequence[Work], results: Sequence[AppendResult]) -> StepBatch:
        counts = [len(w.tokens) - r.num_cached for w, r in zip(works, results, strict=True)]
        # Single-row items first: they form the padded decode group of the attention.
        order = sorted(range(len(works)), key=lambda i: counts[i] != 1)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        spans: list[SeqSpan] = []
        first_row = [0] * len(works)
        for i in order:
            work, result, n = works[i], results[i], counts[i]
            first_row[i] = len(ids)
            ids.extend(work.tokens[result.num_cached :])
            start = work.start_pos + result.num_cached
            positions.extend(range(start, start + n))
            slots.extend(result.slots)
            spans.append(
                SeqSpan(n, work.start_pos + len(work.tokens), result.block_table, work.cache_id)
            )
        logit_rows: list[int] = []
        for i, work in enumerate(works):
            if work.want == "last":
                logit_rows.append(first_row[i] + counts[i] - 1)
            elif work.want == "all":
                logit_rows.extend(range(first_row[i], first_row[i] + counts[i]))
        copies = [pair for r in results for pair in r.copies]
        return cls(ids, positions, slots, spans, first_row, counts, logit_rows, copies)

    def split(self, works: Sequence[Work], logits: np.ndarray) -> list[np.ndarray | None]:
        """Per work item: its last row, all its rows, or ``None``; ``logits`` follows logit_rows."""
        out: list[np.ndarray | None] = []
        row = 0
        for count, work in zip(self.counts, works, strict=True):
            if work.want == "last":
                out.append(logits[row])
                row += 1
            elif work.want == "all":
                out.append(logits[row : row + count])
                row += count
            else:
                out.append(None)
        return out
