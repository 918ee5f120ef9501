"""Continuous batching on the toy model behind the real LlmExecutor.

The toy's logits depend on each sequence's whole history, so equal outputs mean
positions, chunks, preemption and rollback were all handled exactly.
"""

from __future__ import annotations

import pytest

from ferrum_core.engine import SamplingParams
from ferrum_core.errors import CapacityError, InvalidInputError
from tests.engine.helpers import one_at_a_time, run_all, texts, toy_engine
from tests.engine.toy import toy_executor

PROMPTS = [[5, 9, 13], list(range(1, 20)), [42], list(range(30, 41)), [7, 7, 7, 7, 7, 7],
           list(range(50, 75))]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def reference() -> list:
    executor, _ = toy_executor()
    return texts(one_at_a_time(toy_engine(executor, max_num_seqs=1), PROMPTS, GREEDY))


@pytest.mark.parametrize("budget", [1, 5, 64, 2048])
def test_batched_greedy_equals_one_at_a_time(reference: list, budget: int) -> None:
    executor, model = toy_executor()
    engine = toy_engine(executor, max_num_seqs=8, max_num_batched_tokens=budget)
    assert texts(run_all(engine, PROMPTS, GREEDY)) == reference
    assert engine.runner.unified is True
    assert model.free_blocks() == model.num_blocks and not executor.live_caches()


def test_requests_joining_mid_flight_get_the_same_outputs(reference: list) -> None:
    executor, _ = toy_executor()
    engine = toy_engine(executor, max_num_seqs=4, max_num_batched_tokens=9)
    ids = [engine.add_request(p, GREEDY) for p in PROMPTS[:2]]
    for extra in PROMPTS[2:]:
        for _ in range(3):
            engine.step()
        ids.append(engine.add_request(extra, GREEDY))
    while engine.has_unfinished_requests():
        engine.step()
    assert texts([engine.pop_output(i) for i in ids]) == reference


def test_prefill_decode_fallback_without_unified_support(reference: list) -> None:
    executor, _model = toy_executor(unified=False)
    engine = toy_engine(executor, max_num_seqs=8, max_num_batched_tokens=7)
    assert texts(run_all(engine, PROMPTS, GREEDY)) == reference
    assert engine.runner.unified is False
    assert engine.runner.calls["prefill"] > 0 and engine.runner.calls["decode"] > 0
    assert not executor.live_caches()


@pytest.mark.parametrize("report_pool", [True, False])
def test_preemption_by_recompute_gives_the_same_text(reference: list, report_pool: bool) -> None:
    # 6 sequences reach up to 37 tokens: far more than 24 blocks of 4 hold at once
    executor, model = toy_executor(num_blocks=24, report_pool=report_pool)
    engine = toy_engine(executor, max_num_seqs=8, max_num_batched_tokens=16)
    outputs = run_all(engine, PROMPTS, GREEDY)
    assert texts(outputs) == reference
    assert engine.num_preemptions > 0
    assert sum(o.metrics.num_preemptions for o in outputs) == engine.num_preemptions
    assert model.free_blocks() == model.num_blocks and not executor.live_caches()


def test_sixty_four_concurrent_requests_return_the_pool_to_its_start() -> None:
    executor, model = toy_executor(num_blocks=200)
    engine = toy_engine(executor, max_num_seqs=64, max_num_batched_tokens=128)
    prompts = [[(i * 7 + j) % 100 + 1 for j in range(3 + i % 9)] for i in range(64)]
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=10)
    outputs = run_all(engine, prompts, params)
    assert len(outputs) == 64 and all(o.outputs[0].finish_reason for o in outputs)
    assert model.free_blocks() == model.num_blocks
    assert not executor.live_caches() and not engine.runner.live_keys


def test_abort_frees_the_cache_and_reports_abort() -> None:
    executor, model = toy_executor()
    engine = toy_engine(executor)
    keep = engine.add_request(PROMPTS[1], GREEDY)
    drop = engine.add_request(PROMPTS[3], GREEDY)
    engine.step()
    engine.step()
    engine.abort_request(drop)
    deltas = engine.step()
    assert any(d.request_id == drop and d.finish_reason == "abort" for d in deltas)
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.pop_output(drop).outputs[0].finish_reason == "abort"
    assert engine.pop_output(keep).outputs[0].finish_reason == "length"
    assert model.free_blocks() == model.num_blocks


def test_context_limit_ends_with_length_and_long_prompts_are_refused() -> None:
    executor, _ = toy_executor(max_seq_len=16)
    engine = toy_engine(executor)
    (out,) = run_all(engine, [list(range(1, 11))], SamplingParams(temperature=0, max_tokens=50,
                                                                  ignore_eos=True))
    assert out.outputs[0].finish_reason == "length"
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 16
    with pytest.raises(CapacityError):
        engine.add_request(list(range(1, 17)), GREEDY)
    with pytest.raises(InvalidInputError):
        engine.add_request([], GREEDY)
    with pytest.raises(InvalidInputError):
        engine.add_request([1, 5000], GREEDY)


def test_prefix_aware_admission_runs_shared_prompts_together() -> None:
    shared = list(range(1, 41))  # 10 full blocks
    prompts = [[*shared, 60 + i] for i in range(4)]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)

    def peak_running(prefix_caching: bool) -> int:
        executor, _ = toy_executor(num_blocks=30, prefix_caching=prefix_caching)
        engine = toy_engine(executor, max_num_seqs=8, enable_prefix_caching=True)
        for p in prompts:
            engine.add_request(p, params)
        peak = 0
        while engine.has_unfinished_requests():
            engine.step()
            peak = max(peak, len(engine.scheduler.running))
        return peak

    assert peak_running(prefix_caching=True) == 4
    assert peak_running(prefix_caching=False) < 4
