"""A request's token stream as the scheduler sees it (no array library).

Invariant: the target executor holds KV for the first ``num_computed`` tokens
of ``prompt + output`` (the draft executor, with speculative decoding, for the
first ``draft_computed``); the rest (at least one while the sequence runs) is
fed next. A decode step feeds exactly one token, a prefill chunk several, and a
sequence preempted by recompute simply drops back to ``num_computed = 0``.

These two fields are the engine's only record of how long the sequence's KV
is: the runner stamps every handle it sends with them and keeps none of its
own, and the executor checks each claim against its cache table (a mismatch is
a typed error, never a silent disagreement). docs/architecture.md, "A
sequence's length", lists who holds what.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ferrum_core.kv.prefix_cache import block_hashes

__all__ = ["FinishReason", "SequenceStatus", "Sequence", "prefix_block_hashes"]


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


class SequenceStatus(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


def prefix_block_hashes(
    tokens: tuple[int, ...], block_size: int, salt: str | None = None
) -> tuple[int, ...]:
    """Chained hashes of the full blocks of ``tokens`` (a block's hash covers its whole
    prefix): the block manager's own chain (:func:`ferrum_core.kv.prefix_cache.block_hashes`).

    ``salt`` separates caches that must never share blocks (e.g. two LoRA adapters).
    """
    return tuple(block_hashes(tokens, block_size, salt))


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    metadata: Mapping[str, Any] = field(default_factory=dict)
    cache_salt: str | None = None
    output_token_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    draft_computed: int = 0
    num_preemptions: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    _prefix_hashes: dict[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def in_prefill(self) -> bool:
        """More than one token to feed: a prompt, or a recompute after preemption."""
        return self.num_uncomputed > 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    def token_slice(self, start: int, stop: int) -> tuple[int, ...]:
        """``(prompt + output)[start:stop]`` without building the whole list."""
        n_prompt = len(self.prompt_token_ids)
        if stop <= n_prompt:
            return self.prompt_token_ids[start:stop]
        head = self.prompt_token_ids[start:] if start < n_prompt else ()
        tail = self.output_token_ids[max(start - n_prompt, 0) : stop - n_prompt]
        return head + tuple(tail)

    def next_chunk(self, max_tokens: int) -> tuple[int, ...]:
        end = min(self.num_tokens, self.num_computed + max_tokens)
        return self.token_slice(self.num_computed, end)

    def prompt_block_hashes(self, block_size: int) -> tuple[int, ...]:
        cached = self._prefix_hashes.get(block_size)
        if cached is None:
            cached = prefix_block_hashes(self.prompt_token_ids, block_size, self.cache_salt)
            self._prefix_hashes[block_size] = cached
        return cached

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)

    def reset_for_recompute(self) -> None:
        self.num_computed = 0
        self.draft_computed = 0
        self.num_preemptions += 1
        self.status = SequenceStatus.WAITING

    def finish(self, reason: FinishReason) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
