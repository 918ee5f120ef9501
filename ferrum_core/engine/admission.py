"""Checks a request must pass before the engine admits it (typed, one-line errors)."""

from __future__ import annotations

from ferrum_core.engine.scheduler import PoolView, blocks_for
from ferrum_core.errors import CapacityError, InvalidInputError

__all__ = ["check_prompt", "check_stop_ids"]


def check_prompt(ids: tuple[int, ...], vocab_size: int, max_model_len: int,
                 pool: PoolView | None) -> None:
    """A non-empty prompt of in-vocabulary ids that leaves room to generate."""
    if not ids:
        raise InvalidInputError("empty prompt: at least one token is needed")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidInputError(
            f"token id {bad[0]} is outside the vocabulary (size {vocab_size})"
        )
    if len(ids) >= max_model_len:
        raise CapacityError(
            f"prompt of {len(ids)} tokens leaves no room to generate"
            f" (max_model_len {max_model_len})"
        )
    if pool is not None and blocks_for(len(ids) + 1, pool.block_size) > pool.total_blocks:
        raise CapacityError(
            f"prompt of {len(ids)} tokens needs more KV blocks than the pool has"
            f" ({pool.total_blocks} of {pool.block_size} tokens)"
        )


def check_stop_ids(stop_token_ids: tuple[int, ...], vocab_size: int) -> None:
    bad = [t for t in stop_token_ids if t >= vocab_size]
    if bad:
        raise InvalidInputError(
            f"stop_token_ids: {bad[0]} is outside the model's vocabulary"
            f" (size {vocab_size})"
        )
