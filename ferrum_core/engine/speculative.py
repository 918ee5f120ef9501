"""Speculative decoding on the protocol: a draft proposes, the target verifies in one forward.

`SpeculativePair(target, draft)` is a :class:`SpeculativeExecutor` that behaves as
its target for every ordinary call. Verification feeds ``[last, d1..dk]`` to the
target's ``forward_verify`` (row ``i`` predicts the token after ``d_i``), picks a
token per row until one differs from the draft, then rolls the target's KV back
with ``truncate_kv`` to the accepted prefix. The engine picks with its sampler, so
greedy output equals plain decoding and seeded sampling draws the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferrum_core.errors import InvalidInputError
from ferrum_core.protocol import (
    DecodeInput,
    DecodeOutput,
    ExecutorCapabilities,
    ExecutorStatus,
    KvCacheHandle,
    ModelExecutor,
    PrefillInput,
    PrefillOutput,
    SpeculativeDecodeOutput,
    SpeculativeExecutor,
    UnifiedBatch,
    UnifiedLogits,
)
from ferrum_core.tensor import HostTensor, tensor_to_tokens, token_ids
from ferrum_core.types import ModelInfo, TokenId

__all__ = ["SpeculativePair", "Verification", "TokenChooser", "threshold_chooser"]

TokenChooser = Callable[[int, np.ndarray], tuple[int, bool]]
"""``(row_index, logits_row) -> (token, keep_going)``."""


@dataclass(frozen=True, slots=True)
class Verification:
    matched: int  # leading chosen tokens equal to the draft (their KV is kept)
    kv_cache: KvCacheHandle  # target handle truncated to pos + 1 + matched
    rows: np.ndarray  # the target's logits, [k + 1, vocab]


def threshold_chooser(draft_tokens: Sequence[int], threshold: float) -> TokenChooser:
    """Accept a draft token that is the target's argmax or has probability >= threshold."""

    def choose(i: int, row: np.ndarray) -> tuple[int, bool]:
        best = int(np.argmax(row))
        if i >= len(draft_tokens):
            return best, False
        token = int(draft_tokens[i])
        if token == best:
            return token, True
        if 0.0 < threshold < 1.0:
            shifted = np.exp(row.astype(np.float64) - float(row[best]))
            if shifted[token] / shifted.sum() >= threshold:
                return token, True
        return best, False

    return choose


class SpeculativePair(SpeculativeExecutor):
    """A target executor with its draft; every ModelExecutor call goes to the target."""

    def __init__(self, target: ModelExecutor, draft: ModelExecutor) -> None:
        if draft.info().vocab_size > target.info().vocab_size:
            raise InvalidInputError(
                f"draft vocabulary ({draft.info().vocab_size}) is larger than the target's"
                f" ({target.info().vocab_size})"
            )
        self.target = target
        self.draft = draft

    def verify(
        self, input: DecodeInput, draft_tokens: Sequence[TokenId], choose: TokenChooser
    ) -> Verification:
        """One target forward over ``[input token, *draft_tokens]`` and the rollback."""
        (last,) = tensor_to_tokens(input.input_ids)[-1:]
        pos = input.kv_cache.sequence_length
        ids = [last, *draft_tokens]
        inputs = [
            DecodeInput(token_ids([t]), input.kv_cache,
                        input.position_ids, input.metadata)
            for t in ids
        ]
        outs = self.target.forward_verify(inputs)
        rows = np.stack([_row(out) for out in outs])
        matched = 0
        for i in range(len(ids)):
            token, keep_going = choose(i, rows[i])
            if i < len(draft_tokens) and token == draft_tokens[i] and matched == i:
                matched += 1
            if not keep_going or i == len(draft_tokens) or token != draft_tokens[i]:
                break
        handle = outs[-1].kv_cache
        new_len = pos + 1 + matched
        if handle.sequence_length > new_len:
            handle = self.target.truncate_kv(handle, new_len)
        return Verification(matched, handle, rows)

    def speculative_decode(
        self,
        input: DecodeInput,
        draft_tokens: Sequence[TokenId],
        acceptance_threshold: float,
    ) -> SpeculativeDecodeOutput:
        """Accept the longest draft prefix the target agrees with.

        A draft token is accepted when it is the target's most likely token, or
        when ``0 < acceptance_threshold < 1`` and the target gives it at least
        that probability (``1.0`` is exact greedy). ``next_logits`` are the
        target's logits after the last accepted token.
        """
        result = self.verify(input, draft_tokens, threshold_chooser(draft_tokens,
                                                                  acceptance_threshold))
        accepted = tuple(int(t) for t in draft_tokens[: result.matched])
        next_logits = HostTensor(np.ascontiguousarray(result.rows[result.matched][None, :]))
        return SpeculativeDecodeOutput(accepted, next_logits, result.kv_cache, result.matched)

    # --- everything else is the target's ---------------------------------------------
    def info(self) -> ModelInfo:
        return self.target.info()

    def supports_native_unified_decode(self) -> bool:
        return self.target.supports_native_unified_decode()

    def kv_capacity(self) -> int | None:
        return self.target.kv_capacity()

    def prefill(self, input: PrefillInput) -> PrefillOutput:
        return self.target.prefill(input)

    def batch_prefill(self, inputs: Sequence[PrefillInput]) -> list[PrefillOutput]:
        return self.target.batch_prefill(inputs)

    def decode(self, input: DecodeInput) -> DecodeOutput:
        return self.target.decode(input)

    def batch_decode(self, inputs: Sequence[DecodeInput]) -> list[DecodeOutput]:
        return self.target.batch_decode(inputs)

    def unified_decode(self, batch: UnifiedBatch) -> UnifiedLogits:
        return self.target.unified_decode(batch)

    def new_cache(self) -> KvCacheHandle:
        return self.target.new_cache()

    def truncate_kv(self, kv_cache: KvCacheHandle, new_len: int) -> KvCacheHandle:
        return self.target.truncate_kv(kv_cache, new_len)

    def forward_verify(self, inputs: Sequence[DecodeInput]) -> list[DecodeOutput]:
        return self.target.forward_verify(inputs)

    def capabilities(self) -> ExecutorCapabilities:
        caps = self.target.capabilities()
        return caps.model_copy(update={"supports_speculative_decoding": True})

    def status(self) -> ExecutorStatus:
        return self.target.status()

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        return self.target.cache_metrics_snapshot()

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        return self.target.lora_metrics_snapshot()

    def warmup(self) -> None:
        self.target.warmup()
        self.draft.warmup()

    def shutdown(self) -> None:
        self.target.shutdown()
        self.draft.shutdown()

    def release_cache(self, cache_id: str) -> None:
        self.target.release_cache(cache_id)


def _row(out: DecodeOutput) -> np.ndarray:
    array = np.asarray(out.logits.to_numpy(), dtype=np.float32)
    row: np.ndarray = array.reshape(-1, array.shape[-1])[-1]
    return row
