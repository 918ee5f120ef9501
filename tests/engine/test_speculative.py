"""Speculative decoding on the toy model: same output as plain decoding, acceptance reported."""

from __future__ import annotations

import numpy as np
import pytest

from ferrum_core.engine import SamplingParams, SpeculativePair
from ferrum_core.llm.executor import LlmExecutor
from ferrum_core.protocol import DecodeInput, PrefillInput
from ferrum_core.tensor import HostTensor
from tests.engine.helpers import run_all, texts, toy_engine
from tests.engine.toy import PagedToyLlm, toy_executor

PROMPTS = [[5, 9, 13], list(range(1, 20)), [42, 43], list(range(30, 41)), [8] * 9]


def _draft(noise: float) -> LlmExecutor:
    return LlmExecutor(PagedToyLlm(noise=noise, salt=3), model_id="draft")


@pytest.mark.parametrize("k", [1, 3, 6])
def test_speculative_greedy_equals_plain_greedy(k: int) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=17, ignore_eos=True)
    plain = run_all(toy_engine(toy_executor()[0]), PROMPTS, greedy)
    executor, model = toy_executor()
    engine = toy_engine(executor, draft=_draft(noise=1.5), num_speculative_tokens=k,
                        max_num_batched_tokens=8)
    spec = run_all(engine, PROMPTS, greedy)
    assert texts(spec) == texts(plain)
    stats = engine.stats()
    assert 0.0 < stats["spec_acceptance_rate"] < 1.0
    assert model.calls["forward_verify"] > 0
    assert all(len(o.outputs[0].token_ids) == 17 for o in spec)
    assert spec[1].metrics.acceptance_rate is not None
    assert model.free_blocks() == model.num_blocks and not executor.live_caches()


def test_a_perfect_draft_is_always_accepted() -> None:
    greedy = SamplingParams(temperature=0, max_tokens=13, ignore_eos=True)
    engine = toy_engine(toy_executor()[0], draft=_draft(noise=0.0), num_speculative_tokens=4)
    run_all(engine, PROMPTS, greedy)
    assert engine.stats()["spec_acceptance_rate"] == 1.0


def test_seeded_sampling_is_the_same_with_and_without_a_draft() -> None:
    sampled = SamplingParams(temperature=0.7, top_k=20, seed=99, max_tokens=15, ignore_eos=True)
    plain = run_all(toy_engine(toy_executor()[0]), PROMPTS, sampled)
    spec = run_all(toy_engine(toy_executor()[0], draft=_draft(noise=0.5)), PROMPTS, sampled)
    assert texts(spec) == texts(plain)


def test_speculation_survives_preemption() -> None:
    greedy = SamplingParams(temperature=0, max_tokens=17, ignore_eos=True)
    plain = run_all(toy_engine(toy_executor()[0]), PROMPTS, greedy)
    executor, model = toy_executor(num_blocks=22, report_pool=False)
    engine = toy_engine(executor, draft=_draft(noise=1.0), num_speculative_tokens=3)
    assert texts(run_all(engine, PROMPTS, greedy)) == texts(plain)
    assert engine.num_preemptions > 0
    assert model.free_blocks() == model.num_blocks


def test_speculative_decode_accepts_the_agreeing_prefix_and_rolls_back() -> None:
    target, model = toy_executor()
    pair = SpeculativePair(target, _draft(noise=0.0))
    prompt = HostTensor(np.asarray([PROMPTS[1]], dtype=np.int64))
    # the true greedy continuation, decoded one token at a time on its own cache
    out = target.prefill(PrefillInput(prompt))
    handle, logits, truth = out.kv_cache, out.logits.to_numpy()[0, -1], []
    for _ in range(5):
        truth.append(int(np.argmax(logits)))
        step = target.decode(DecodeInput(HostTensor(np.asarray([[truth[-1]]])), handle))
        handle, logits = step.kv_cache, step.logits.to_numpy()[0]
    start = target.prefill(PrefillInput(prompt)).kv_cache
    first = DecodeInput(HostTensor(np.asarray([[truth[0]]])), start)

    agreed = pair.speculative_decode(first, truth[1:4], acceptance_threshold=1.0)
    assert agreed.accepted_tokens == tuple(truth[1:4]) and agreed.acceptance_count == 3
    assert agreed.kv_cache.sequence_length == len(PROMPTS[1]) + 4
    assert int(np.argmax(agreed.next_logits.to_numpy()[0])) == truth[4]

    fresh = target.prefill(PrefillInput(prompt)).kv_cache
    wrong = (truth[2] + 1) % 101
    partial = pair.speculative_decode(
        DecodeInput(HostTensor(np.asarray([[truth[0]]])), fresh), [truth[1], wrong, 7], 1.0
    )
    assert partial.accepted_tokens == (truth[1],) and partial.acceptance_count == 1
    assert partial.kv_cache.sequence_length == len(PROMPTS[1]) + 2
    assert len(model.history[partial.kv_cache.cache_id]) == len(PROMPTS[1]) + 2
    assert int(np.argmax(partial.next_logits.to_numpy()[0])) == truth[2]
    assert pair.capabilities().supports_speculative_decoding
