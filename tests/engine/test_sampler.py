"""The sampler on hand-made logits: each filter keeps exactly the tokens it should."""

from __future__ import annotations

import math

import numpy as np

from ferrum_core.engine.sampler import (
    SamplerState,
    child_seed,
    log_softmax,
    penalized,
    sample_token,
)
from ferrum_core.engine.sampling_params import SamplingParams


def _draws(logits: np.ndarray, n: int = 400, **kwargs: object) -> set[int]:
    state = SamplerState.create(SamplingParams(seed=1, **kwargs), [])
    return {sample_token(logits, state).token_id for _ in range(n)}


LOGITS = np.log(np.array([0.05, 0.4, 0.3, 0.15, 0.1], dtype=np.float32))


def test_greedy_picks_argmax_without_touching_the_rng() -> None:
    state = SamplerState.create(SamplingParams(temperature=0, seed=3), [])
    before = state.rng.bit_generator.state
    assert sample_token(LOGITS, state).token_id == 1
    assert state.rng.bit_generator.state == before


def test_plain_sampling_reaches_every_token() -> None:
    assert _draws(LOGITS, n=2000) == {0, 1, 2, 3, 4}


def test_top_k_keeps_the_k_best() -> None:
    assert _draws(LOGITS, top_k=2) == {1, 2}


def test_top_p_keeps_the_smallest_nucleus() -> None:
    # 0.4 + 0.3 = 0.7 < 0.75, so the 0.15 token is needed too
    assert _draws(LOGITS, top_p=0.75) == {1, 2, 3}
    assert _draws(LOGITS, top_p=0.4) == {1}


def test_top_p_on_a_large_vocabulary_matches_the_full_sort() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(5000).astype(np.float32) * 0.2  # flat: nucleus is wide
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    cut = int(np.searchsorted(np.cumsum(probs[order]), 0.5)) + 1
    allowed = set(order[:cut].tolist())
    assert _draws(logits, n=3000, top_p=0.5) <= allowed


def test_min_p_drops_tokens_below_a_fraction_of_the_best() -> None:
    # threshold 0.5 * 0.4 = 0.2: keeps 0.4 and 0.3
    assert _draws(LOGITS, min_p=0.5) == {1, 2}


def test_low_temperature_concentrates_on_the_best() -> None:
    assert _draws(LOGITS, temperature=0.01) == {1}


def test_repetition_penalty_discourages_seen_tokens() -> None:
    logits = np.array([1.0, 1.2, -0.5], dtype=np.float32)
    state = SamplerState.create(SamplingParams(temperature=0, repetition_penalty=2.0), [1])
    # token 1: 1.2 / 2 = 0.6 < 1.0, so token 0 wins
    assert sample_token(logits, state).token_id == 0
    # token 0 is now seen too: 0.5 vs 0.6 -> token 1
    assert sample_token(logits, state).token_id == 1


def test_same_seed_same_draws_and_different_seed_differs() -> None:
    logits = np.random.default_rng(5).standard_normal(1000).astype(np.float32)

    def run(seed: int) -> list[int]:
        state = SamplerState.create(SamplingParams(seed=seed), [])
        return [sample_token(logits, state).token_id for _ in range(30)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_logprobs_are_normalised_and_include_the_sampled_token() -> None:
    state = SamplerState.create(SamplingParams(temperature=0, logprobs=2), [])
    picked = sample_token(LOGITS, state)
    assert picked.top_logprobs is not None
    assert list(picked.top_logprobs) == [1, 2]
    assert math.isclose(picked.top_logprobs[1], math.log(0.4), rel_tol=1e-5)
    assert picked.token_id == 1
    assert math.isclose(float(np.exp(log_softmax(LOGITS)).sum()), 1.0, rel_tol=1e-9)


def test_logprobs_add_the_sampled_token_when_outside_the_top() -> None:
    state = SamplerState.create(SamplingParams(temperature=0, logprobs=1,
                                               repetition_penalty=10.0), [1])
    picked = sample_token(LOGITS, state)  # the penalty makes token 2 win
    assert picked.token_id == 2
    assert picked.top_logprobs is not None and set(picked.top_logprobs) == {1, 2}


def test_presence_and_frequency_penalties_match_openais_formula() -> None:
    params = SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=0.25)
    state = SamplerState.create(params, [3, 3, 4])  # prompt tokens never count
    row = np.array([2.0, 1.0, 0.5, 0.0, -1.0], dtype=np.float32)
    assert np.array_equal(penalized(row, state), row)
    for token in (0, 0, 0, 2):
        state.observe(token)
    # logit[t] -= presence * (count[t] > 0) + frequency * count[t]
    expected = row - np.array([0.5 + 0.25 * 3, 0.0, 0.5 + 0.25 * 1, 0.0, 0.0], dtype=np.float32)
    np.testing.assert_allclose(penalized(row, state), expected, rtol=0, atol=1e-6)
    assert np.array_equal(row, [2.0, 1.0, 0.5, 0.0, -1.0])  # the input row is untouched


def test_negative_penalties_encourage_repeats_and_steer_greedy_choice() -> None:
    row = np.array([1.0, 1.1, 0.0], dtype=np.float32)
    state = SamplerState.create(SamplingParams(temperature=0, frequency_penalty=0.2), [0])
    assert sample_token(row, state).token_id == 1  # the prompt's token 0 does not count
    assert sample_token(row, state).token_id == 0  # 1.1 - 0.2 = 0.9 < 1.0
    # both generated once: 0.8 vs 0.9 -> 1; then 0.8 vs 1.1 - 0.4 = 0.7 -> 0
    assert [sample_token(row, state).token_id for _ in range(2)] == [1, 0]
    keen = SamplerState.create(SamplingParams(temperature=0, presence_penalty=-2.0), [])
    first = sample_token(np.array([1.0, 1.1, 0.0], dtype=np.float32), keen).token_id
    assert first == 1
    assert {sample_token(row, keen).token_id for _ in range(5)} == {1}


def test_penalties_stack_after_the_repetition_penalty() -> None:
    params = SamplingParams(temperature=0, repetition_penalty=2.0, presence_penalty=1.0)
    state = SamplerState.create(params, [1])
    state.observe(0)
    row = np.array([3.0, 3.0, 0.0], dtype=np.float32)
    # token 0: 3 / 2 - 1 = 0.5 (seen and generated); token 1: 3 / 2 (prompt only)
    np.testing.assert_allclose(penalized(row, state), [0.5, 1.5, 0.0], atol=1e-6)


def test_child_seeds_differ_per_index_and_repeat() -> None:
    logits = np.random.default_rng(5).standard_normal(1000).astype(np.float32)

    def run(seed: int | None, index: int) -> list[int]:
        state = SamplerState.create(SamplingParams(seed=seed), [], index)
        return [sample_token(logits, state).token_id for _ in range(20)]

    plain = SamplerState.create(SamplingParams(seed=7), [])
    assert run(7, 0) == [sample_token(logits, plain).token_id for _ in range(20)]
    assert run(7, 1) == run(7, 1)
    assert len({tuple(run(7, i)) for i in range(4)}) == 4
    assert child_seed(7, 0) == 7 and child_seed(None, 3) is None
