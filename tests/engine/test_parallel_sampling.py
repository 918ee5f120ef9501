"""``SamplingParams.n``: n completions of one prompt, through LLM, streams and AsyncLLM."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from ferrum_core.engine import AsyncLLM, SamplingParams, StreamDelta
from ferrum_core.errors import InvalidInputError

PROMPT = "The quick brown fox jumps"


def _sampled(n: int, seed: int | None = 11, **kw: Any) -> SamplingParams:
    return SamplingParams(n=n, seed=seed, temperature=1.5, max_tokens=12, ignore_eos=True, **kw)


def _by_index(deltas: list[StreamDelta]) -> dict[int, tuple[tuple[int, ...], str, list[str]]]:
    tokens: dict[int, list[int]] = defaultdict(list)
    text: dict[int, str] = defaultdict(str)
    reasons: dict[int, list[str]] = defaultdict(list)
    for d in deltas:
        tokens[d.index].extend(d.token_ids)
        text[d.index] += d.text
        if d.finish_reason is not None:
            reasons[d.index].append(d.finish_reason)
    return {i: (tuple(tokens[i]), text[i], reasons[i]) for i in tokens}


@pytest.fixture
def llm(make_llm: Callable[..., Any]) -> Any:
    return make_llm(num_kv_blocks=256, max_model_len=96)


def test_generate_returns_n_indexed_reproducible_different_completions(llm: Any) -> None:
    out = llm.generate(PROMPT, _sampled(4), use_tqdm=False)
    assert len(out) == 1
    completions = out[0].outputs
    assert [c.index for c in completions] == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" and len(c.token_ids) == 12 for c in completions)
    assert len({c.token_ids for c in completions}) == 4  # different draws
    again = llm.generate(PROMPT, _sampled(4), use_tqdm=False)[0].outputs
    assert [c.token_ids for c in again] == [c.token_ids for c in completions]
    single = llm.generate(PROMPT, _sampled(1), use_tqdm=False)[0].outputs
    assert single[0].token_ids == completions[0].token_ids  # completion 0 uses the seed itself
    assert out[0].metrics.num_generated_tokens == 48
    assert out[0].metrics.num_prompt_tokens == len(out[0].prompt_token_ids)


def test_unseeded_completions_differ_and_greedy_ones_agree(llm: Any) -> None:
    free = llm.generate(PROMPT, _sampled(3, seed=None), use_tqdm=False)[0].outputs
    assert len({c.token_ids for c in free}) == 3
    greedy = SamplingParams(n=3, temperature=0.0, max_tokens=8, ignore_eos=True)
    outs = llm.generate(PROMPT, greedy, use_tqdm=False)[0].outputs
    expected = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=8,
                                                   ignore_eos=True), use_tqdm=False)
    assert [c.token_ids for c in outs] == [expected[0].outputs[0].token_ids] * 3


def test_mixed_n_in_one_batch_keeps_prompt_order(llm: Any) -> None:
    params = [_sampled(2), _sampled(1), _sampled(3)]
    outs = llm.generate([PROMPT, "Hello", PROMPT], params, use_tqdm=False)
    assert [len(o.outputs) for o in outs] == [2, 1, 3]
    alone = [llm.generate(p, sp, use_tqdm=False)[0] for p, sp in
             zip([PROMPT, "Hello", PROMPT], params, strict=True)]
    for got, want in zip(outs, alone, strict=True):
        assert [c.token_ids for c in got.outputs] == [c.token_ids for c in want.outputs]


def test_stream_interleaves_indexed_deltas_until_all_finish(llm: Any) -> None:
    expected = llm.generate(PROMPT, _sampled(3), use_tqdm=False)[0].outputs
    deltas = list(llm.stream(PROMPT, _sampled(3)))
    got = _by_index(deltas)
    assert sorted(got) == [0, 1, 2]
    for c in expected:
        assert got[c.index] == (c.token_ids, c.text, ["length"])
    assert {d.request_id for d in deltas} == {deltas[0].request_id}


def test_async_generate_yields_indexed_deltas(llm: Any) -> None:
    expected = llm.generate(PROMPT, _sampled(3), use_tqdm=False)[0].outputs
    engine = AsyncLLM.from_llm(llm)

    async def main() -> list[StreamDelta]:
        return [d async for d in engine.generate(PROMPT, _sampled(3), request_id="par")]

    try:
        deltas = asyncio.run(main())
    finally:
        engine.close()
    got = _by_index(deltas)
    for c in expected:
        assert got[c.index] == (c.token_ids, c.text, ["length"])
    assert deltas[-1].finish_reason == "length"
    assert {d.request_id for d in deltas} == {"par"}


def test_abort_and_abandon_free_every_completion(llm: Any) -> None:
    engine = llm.engine
    start = engine.load().kv_blocks_free
    stream = llm.stream(PROMPT, SamplingParams(n=4, seed=1, max_tokens=60, ignore_eos=True))
    first = next(stream)
    assert engine.load().num_running == 4
    stream.close()
    assert not engine.has_request(first.request_id)
    assert engine.load().kv_blocks_free == start

    request_id = engine.add_request([5, 6, 7, 8, 9],  # no EOS: all three run when aborted
                                    SamplingParams(n=3, max_tokens=40, ignore_eos=True))
    engine.step()
    engine.abort_request(request_id)
    deltas = engine.step()
    assert sorted(d.index for d in deltas if d.finish_reason == "abort") == [0, 1, 2]
    assert engine.is_finished(request_id)
    assert [c.finish_reason for c in engine.pop_output(request_id).outputs] == ["abort"] * 3
    assert engine.load().kv_blocks_free == start


def test_ids_of_children_cannot_be_taken_twice(llm: Any) -> None:
    engine = llm.engine
    engine.add_request([5, 6, 7], SamplingParams(n=2), request_id="x")
    with pytest.raises(InvalidInputError, match="duplicate request id"):
        engine.add_request([5, 6, 7], SamplingParams(), request_id="x")
    with pytest.raises(InvalidInputError, match="duplicate request id"):
        engine.add_request([5, 6, 7], SamplingParams(), request_id="x#1")
    engine.abort_request("x")
    while engine.has_unfinished_requests():
        engine.step()
    assert len(engine.pop_output("x").outputs) == 2
