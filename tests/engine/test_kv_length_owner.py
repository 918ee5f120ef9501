"""A sequence's KV length has one owner (the engine's ``Sequence``); everyone else agrees.

After every engine step, through chunked prefill, speculative rejection (the
draft is rolled back), KV-pool exhaustion (the executor rolls the batch back and
the engine preempts), finishing and aborting, the executor's cache table and
the model's own KV hold exactly what ``Sequence.num_computed`` (target) and
``Sequence.draft_computed`` (draft) say, and nothing for a request that left.
"""

from __future__ import annotations

import pytest

from ferrum_core.engine import LLMEngine, SamplingParams
from ferrum_core.engine.runner import ExecutorRunner, Work
from ferrum_core.errors import KvPoolExhaustedError
from ferrum_core.llm.executor import LlmExecutor
from tests.engine.helpers import toy_engine
from tests.engine.toy import PagedToyLlm, toy_executor

PROMPTS = [[5, 9, 13], list(range(1, 20)), [42, 43], list(range(30, 41)), [8] * 9]


def _agree(engine: LLMEngine, runner: ExecutorRunner, executor: LlmExecutor,
           model: PagedToyLlm, draft: bool) -> None:
    live = set()
    for seq in engine.scheduler:
        cache_id = runner.cache_id(seq.request_id)
        owner = seq.draft_computed if draft else seq.num_computed
        if cache_id is None:
            assert owner == 0, f"{seq.request_id}: owner says {owner}, no cache"
            continue
        live.add(cache_id)
        held = (executor.cache_length(cache_id), len(model.history.get(cache_id, ())))
        assert held == (owner, owner), (
            f"{seq.request_id} ({'draft' if draft else 'target'}): owner says {owner},"
            f" executor and model hold {held}"
        )
    assert set(executor.live_caches()) == live  # nothing left behind by finished requests
    assert set(model.history) <= live


@pytest.mark.parametrize("unified", [True, False], ids=["unified", "fallback"])
def test_every_copy_follows_the_owner_step_by_step(unified: bool) -> None:
    executor, model = toy_executor(unified=unified, num_blocks=22, report_pool=False)
    draft_model = PagedToyLlm(noise=1.0, salt=3)
    draft = LlmExecutor(draft_model, model_id="draft")
    engine = toy_engine(executor, draft=draft, num_speculative_tokens=3,
                        max_num_batched_tokens=8)
    assert engine.draft_runner is not None
    params = SamplingParams(temperature=0, max_tokens=17, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in PROMPTS]
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        if steps == 12:
            engine.abort_request(ids[3])
        _agree(engine, engine.runner, executor, model, draft=False)
        _agree(engine, engine.draft_runner, draft, draft_model, draft=True)
    stats = engine.stats()
    assert engine.num_preemptions > 0  # the pool ran out: batches were rolled back
    assert 0 < stats["spec_accepted_tokens"] < stats["spec_proposed_tokens"]  # rejections
    assert engine.pop_output(ids[3]).outputs[0].finish_reason == "abort"
    assert not executor.live_caches() and not draft.live_caches() and not model.history


def test_fallback_step_that_runs_out_of_blocks_leaves_no_trace() -> None:
    """Without unified_decode a step is several executor calls; when a later one runs out
    of KV, the earlier ones are rolled back too, so the owners (not advanced) stay right."""
    executor, model = toy_executor(unified=False, num_blocks=5, block_size=4)
    runner = ExecutorRunner(executor)
    runner.run([Work("a", (1, 2, 3, 4), 0, True), Work("b", (5, 6, 7, 8), 0, True)])
    runner.run([Work("a", (9, 10, 11, 12), 4, False), Work("b", (13, 14, 15, 16), 4, False)])
    with pytest.raises(KvPoolExhaustedError):  # c's prompt fits, the decode group does not
        runner.run([Work("c", (20, 21, 22, 23), 0, True), Work("a", (24,), 8, True),
                    Work("b", (25,), 8, True)])
    assert runner.cache_id("c") is None
    held = {cid: executor.cache_length(cid) for cid in executor.live_caches()}
    assert held == {runner.cache_id("a"): 8, runner.cache_id("b"): 8}
    assert {k: len(v) for k, v in model.history.items()} == held
    runner.release("b")
    rows = runner.run([Work("a", (24,), 8, True), Work("c", (20, 21, 22, 23), 0, True)])
    assert all(row is not None for row in rows)  # goes on from the owners' lengths
