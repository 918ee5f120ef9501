"""Turn one logits row into one token: penalties, temperature, top-k/p, min-p, seeded draws.

Penalties apply in vLLM's order: the repetition penalty (prompt and output tokens),
then OpenAI's presence and frequency penalties (generated tokens only), then the
temperature and the filters.

The only engine module that touches arrays (numpy). Every random choice draws
exactly one number from the request's own generator, so a seed fixes the output
whatever else shares the batch, and speculative decoding (which samples the same
positions in the same order) reproduces plain decoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ferrum_core.engine.sampling_params import SamplingParams

__all__ = ["SampledToken", "SamplerState", "sample_token", "log_softmax", "child_seed",
           "penalized"]

_TOP_P_PROBE = 256  # candidates checked before falling back to a full-vocabulary sort


@dataclass(frozen=True, slots=True)
class SampledToken:
    token_id: int
    # the ``logprobs`` most likely tokens' log-probabilities, the chosen one always
    # included (when the request asks for logprobs)
    top_logprobs: dict[int, float] | None = None


@dataclass(slots=True)
class SamplerState:
    """Per-request sampling state: its generator, the tokens seen so far (prompt and
    output, for the repetition penalty) and the generated tokens' counts."""

    params: SamplingParams
    rng: np.random.Generator
    seen: set[int] = field(default_factory=set)
    counts: dict[int, int] = field(default_factory=dict)

    @classmethod
    def create(cls, params: SamplingParams, prompt_token_ids: Iterable[int],
               index: int = 0) -> SamplerState:
        """``index``: which of the ``n`` completions this state samples; completion 0
        uses ``seed`` itself (as ``n == 1`` does), completion ``i`` a seed derived
        from ``(seed, i)``."""
        rng = np.random.default_rng(child_seed(params.seed, index))
        seen = set(prompt_token_ids) if params.uses_penalty else set()
        return cls(params=params, rng=rng, seen=seen)

    def observe(self, token_id: int) -> None:
        if self.params.uses_penalty:
            self.seen.add(token_id)
        if self.params.uses_count_penalty:
            self.counts[token_id] = self.counts.get(token_id, 0) + 1


def child_seed(seed: int | None, index: int) -> int | list[int] | None:
    """The generator seed of completion ``index``: distinct per index, reproducible."""
    if seed is None or index == 0:
        return seed
    return [seed, index]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    out: np.ndarray = shifted - np.log(np.sum(np.exp(shifted)))
    return out


def sample_token(logits: np.ndarray, state: SamplerState) -> SampledToken:
    """Pick the next token from a 1-D logits row (not modified)."""
    params = state.params
    row = np.asarray(logits, dtype=np.float32).reshape(-1)
    scores = penalized(row, state)
    token = int(np.argmax(scores)) if params.greedy else _draw(scores, params, state.rng)
    state.observe(token)
    if params.logprobs is None:
        return SampledToken(token)
    return _with_logprobs(row, token, params.logprobs)


def penalized(row: np.ndarray, state: SamplerState) -> np.ndarray:
    """``row`` after the request's penalties (``row`` itself when none applies)."""
    params = state.params
    scores = _apply_repetition_penalty(row, state) if params.uses_penalty else row
    if params.uses_count_penalty and state.counts:
        scores = _apply_count_penalties(scores, state)
    return scores


def _apply_repetition_penalty(row: np.ndarray, state: SamplerState) -> np.ndarray:
    # HF/vLLM convention: shrink positive scores, grow negative ones.
    if not state.seen:
        return row
    scores = row.copy()
    ids = np.fromiter(state.seen, dtype=np.int64, count=len(state.seen))
    ids = ids[ids < scores.shape[0]]
    picked = scores[ids]
    penalty = np.float32(state.params.repetition_penalty)
    scores[ids] = np.where(picked > 0, picked / penalty, picked * penalty)
    return scores


def _apply_count_penalties(row: np.ndarray, state: SamplerState) -> np.ndarray:
    # OpenAI: logit[t] -= presence * (count[t] > 0) + frequency * count[t]
    scores = row.copy()
    ids = np.fromiter(state.counts.keys(), dtype=np.int64, count=len(state.counts))
    counts = np.fromiter(state.counts.values(), dtype=np.float32, count=len(state.counts))
    inside = ids < scores.shape[0]
    params = state.params
    scores[ids[inside]] -= (np.float32(params.presence_penalty)
                            + np.float32(params.frequency_penalty) * counts[inside])
    return scores


def _draw(scores: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    candidates, cand_scores = _top_k(scores, params.top_k)
    scaled = cand_scores.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        candidates, probs = _top_p(candidates, probs, params.top_p)
    if params.min_p > 0.0:
        keep = probs >= params.min_p * probs.max()
        candidates, probs = candidates[keep], probs[keep]
    cumulative = np.cumsum(probs)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(candidates[min(index, len(candidates) - 1)])


def _top_k(scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    vocab = scores.shape[0]
    if top_k <= 0 or top_k >= vocab:
        return np.arange(vocab), scores
    part = np.argpartition(-scores, top_k - 1)[:top_k]
    return part, scores[part]


def _top_p(
    candidates: np.ndarray, probs: np.ndarray, top_p: float
) -> tuple[np.ndarray, np.ndarray]:
    # The nucleus usually lies in the few most likely tokens: sort only those when
    # their mass already reaches top_p (exact, since the probe holds the true top).
    order: np.ndarray
    if len(probs) > _TOP_P_PROBE:
        probe = np.argpartition(-probs, _TOP_P_PROBE - 1)[:_TOP_P_PROBE]
        probe = probe[np.argsort(-probs[probe], kind="stable")]
        order = probe if probs[probe].sum() >= top_p else np.argsort(-probs, kind="stable")
    else:
        order = np.argsort(-probs, kind="stable")
    sorted_probs = probs[order]
    cumulative = np.cumsum(sorted_probs)
    # keep tokens until the mass *before* them reaches top_p (the first is always kept)
    keep = int(np.searchsorted(cumulative, top_p, side="left")) + 1
    keep = min(keep, len(order))
    return candidates[order[:keep]], sorted_probs[:keep]


def _with_logprobs(row: np.ndarray, token: int, top_n: int) -> SampledToken:
    logprobs = log_softmax(row)
    top: dict[int, float] = {}
    if top_n > 0:
        n = min(top_n, logprobs.shape[0])
        best = np.argpartition(-logprobs, n - 1)[:n]
        best = best[np.argsort(-logprobs[best], kind="stable")]
        top = {int(t): float(logprobs[t]) for t in best}
    top.setdefault(token, float(logprobs[token]))
    return SampledToken(token, top)
