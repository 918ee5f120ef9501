"""Continuous batching: who runs this step, and how many tokens each (no array library).

Each step spends a token budget. Running sequences go first in admission order
(a decode costs one token, an unfinished prompt takes what is left, so long
prompts are chunked); then waiting ones are admitted first come, first served
while a sequence slot, budget and, when the executor reports its pool, enough
free KV blocks remain. Blocks of a prompt prefix that a running sequence has
already computed are not charged again when the backend caches prefixes.
Preemption is by recompute: the newest running sequence gives up its KV and
goes back to the head of the queue, and admission pauses until a request
finishes (otherwise, without pool figures, it would be re-admitted into the
same shortage at once).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from ferrum_core.engine.sequence import Sequence, SequenceStatus
from ferrum_core.engine.work import Work
from ferrum_core.kv.pool_state import KvPoolState

__all__ = ["SchedulerConfig", "PoolView", "Scheduler", "blocks_for"]


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048


@dataclass(frozen=True, slots=True)
class PoolView:
    """The executor's paged KV pool at the start of a step."""

    free_blocks: int
    total_blocks: int
    block_size: int
    prefix_caching: bool = False

    @classmethod
    def of(cls, state: KvPoolState | None, prefix_caching: bool) -> PoolView | None:
        """The view of an executor's pool (``None``: it reports none)."""
        if state is None:
            return None
        return cls(state.blocks_free, state.blocks_total, state.block_size, prefix_caching)

    @property
    def watermark(self) -> int:
        # a little headroom so running decodes rarely hit an empty pool right after admission
        return max(1, self.total_blocks // 100)


class Scheduler:
    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.admission_paused = False

    def __iter__(self) -> Iterator[Sequence]:
        yield from self.running
        yield from self.waiting

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def schedule(self, pool: PoolView | None = None) -> list[Work]:
        """This step's work: one :meth:`Work.chunk` per scheduled sequence."""
        budget = self.config.max_num_batched_tokens
        free = pool.free_blocks if pool is not None else 0
        chunks: list[Work] = []
        for seq in self.running:
            if budget == 0:
                break
            n = min(seq.num_uncomputed, budget)
            budget -= n
            chunks.append(Work.chunk(seq, n))
            if pool is not None:
                grown = blocks_for(seq.num_computed + n, pool.block_size)
                free -= grown - blocks_for(seq.num_computed, pool.block_size)
        live_prefixes = self._live_prefix_blocks(pool)
        if self.admission_paused and self.running:
            return chunks
        self.admission_paused = False
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if pool is not None:
                need = self._blocks_to_admit(seq, pool, live_prefixes)
                # an empty engine always admits: the executor then reports what does not fit
                if self.running and need > free - pool.watermark:
                    break
                free -= need
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed, budget)
            budget -= n
            chunks.append(Work.chunk(seq, n))
        return chunks

    def _live_prefix_blocks(self, pool: PoolView | None) -> set[int]:
        if pool is None or not pool.prefix_caching or not self.waiting:
            return set()
        live: set[int] = set()
        for seq in self.running:
            computed = seq.num_computed // pool.block_size
            live.update(seq.prompt_block_hashes(pool.block_size)[:computed])
        return live

    @staticmethod
    def _blocks_to_admit(seq: Sequence, pool: PoolView, live: set[int]) -> int:
        shared = 0
        if live:
            for block_hash in seq.prompt_block_hashes(pool.block_size):
                if block_hash not in live:
                    break
                shared += 1
        return blocks_for(seq.num_tokens + 1, pool.block_size) - shared

    def preempt_newest(self) -> Sequence | None:
        """Send the most recently admitted running sequence back to the queue head."""
        if not self.running:
            return None
        victim = self.running.pop()
        victim.reset_for_recompute()
        self.admission_paused = True
        self.waiting.appendleft(victim)
        return victim

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
            self.admission_paused = False

    def remove(self, request_id: str) -> Sequence | None:
        """Take a request out of either queue (for abort); ``None`` if unknown."""
        for seq in self.running:
            if seq.request_id == request_id:
                self.running.remove(seq)
                self.admission_paused = False
                return seq
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return seq
        return None
