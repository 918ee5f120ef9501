"""The engine on a real backend (`torch`, tiny random Llama; transformers is the oracle)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ferrum_core.engine import LLM, SamplingParams

PROMPTS = [
    "Hello world",
    "Paris is the capital of",
    "def add(a, b):",
    "The quick brown fox jumps over the lazy dog. Hello world! How are you today?",
    "1234",
    "What is the answer?",
]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _tokens(outputs: list[Any]) -> list[tuple[int, ...]]:
    return [o.outputs[0].token_ids for o in outputs]


def _pool(llm: LLM) -> dict[str, Any]:
    snapshot = llm.registry.require("target").cache_metrics_snapshot()
    assert snapshot is not None
    return snapshot


def test_greedy_matches_transformers(make_llm: Callable[..., LLM], tiny_dirs: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    llm = make_llm()
    (ours,) = llm.generate([PROMPTS[3]], GREEDY, use_tqdm=False)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["target"], dtype=torch.float32).eval()
    # a plain greedy loop: transformers' generate(min_new_tokens=...) would mask EOS ids
    ids = list(ours.prompt_token_ids)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
    assert list(ours.outputs[0].token_ids) == ids[len(ours.prompt_token_ids) :]


def test_batched_and_chunked_greedy_equal_one_at_a_time(make_llm: Callable[..., LLM]) -> None:
    single = make_llm(max_num_seqs=1)
    reference = [_tokens(single.generate([p], GREEDY, use_tqdm=False))[0] for p in PROMPTS]
    batched = make_llm(max_num_seqs=8, max_num_batched_tokens=16)
    assert _tokens(batched.generate(PROMPTS, GREEDY, use_tqdm=False)) == reference
    # continuous: requests join while others decode
    engine = batched.engine
    tok = batched.tokenizer
    ids = [engine.add_request(tok.encode(p), GREEDY) for p in PROMPTS[:2]]
    for p in PROMPTS[2:]:
        engine.step()
        engine.step()
        ids.append(engine.add_request(tok.encode(p), GREEDY))
    while engine.has_unfinished_requests():
        engine.step()
    assert [engine.pop_output(i).outputs[0].token_ids for i in ids] == reference


def test_sixty_four_concurrent_requests_leave_the_pool_as_found(
    make_llm: Callable[..., LLM],
) -> None:
    llm = make_llm(max_num_seqs=64, num_kv_blocks=512)
    before = _pool(llm)
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(64)]
    params = SamplingParams(temperature=0.9, seed=3, max_tokens=16)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert len(outputs) == 64 and all(o.outputs[0].finish_reason for o in outputs)
    after = _pool(llm)
    assert after["kv_blocks_free"] == before["kv_blocks_free"] == before["kv_blocks_total"]
    assert after["live_caches"] == 0


def test_preemption_and_recompute_give_the_same_text(make_llm: Callable[..., LLM]) -> None:
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    reference = make_llm().generate(PROMPTS, params, use_tqdm=False)
    tight = make_llm(num_kv_blocks=20, max_num_seqs=8)
    outputs = tight.generate(PROMPTS, params, use_tqdm=False)
    assert tight.engine.num_preemptions > 0
    assert [o.outputs[0].text for o in outputs] == [o.outputs[0].text for o in reference]
    assert _pool(tight)["kv_blocks_free"] == 20


@pytest.mark.parametrize("draft", ["draft", "target"])
def test_speculative_greedy_equals_plain_greedy(
    make_llm: Callable[..., LLM], tiny_dirs: dict[str, Path], draft: str
) -> None:
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    plain = make_llm().generate(PROMPTS, params, use_tqdm=False)
    spec_llm = make_llm(speculative_model=str(tiny_dirs[draft]), num_speculative_tokens=3)
    assert sorted(spec_llm.registry.list_names()) == ["draft", "target"]
    spec = spec_llm.generate(PROMPTS, params, use_tqdm=False)
    assert _tokens(spec) == _tokens(plain)
    rate = spec_llm.stats()["spec_acceptance_rate"]
    assert rate is not None and 0.0 <= rate <= 1.0
    if draft == "target":
        assert rate > 0.9  # the same model agrees with itself (up to float ties)


def test_seeded_sampling_is_reproducible(make_llm: Callable[..., LLM]) -> None:
    llm = make_llm()
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=11, max_tokens=16,
                            ignore_eos=True)
    first = llm.generate(PROMPTS[:3], params, use_tqdm=False)
    again = llm.generate([PROMPTS[2], PROMPTS[0], PROMPTS[1]], params, use_tqdm=False)
    assert _tokens(first) == [_tokens(again)[i] for i in (1, 2, 0)]
    other = llm.generate(PROMPTS[:3], params.model_copy(update={"seed": 12}), use_tqdm=False)
    assert _tokens(other) != _tokens(first)


def test_stop_strings_and_streaming_match_the_final_text(make_llm: Callable[..., LLM]) -> None:
    llm = make_llm()
    (free,) = llm.generate([PROMPTS[0]], GREEDY, use_tqdm=False)
    text = free.outputs[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"pick a visible stop string from {text!r}"
    params = GREEDY.model_copy(update={"stop": (stop,)})
    (stopped,) = llm.generate([PROMPTS[0]], params, use_tqdm=False)
    assert stopped.outputs[0].finish_reason == "stop"
    assert stopped.outputs[0].text == text[: text.index(stop)]
    deltas = list(llm.stream(PROMPTS[0], params))
    assert "".join(d.text for d in deltas) == stopped.outputs[0].text
    assert deltas[-1].finish_reason == "stop"
    assert sum(len(d.token_ids) for d in deltas) == len(stopped.outputs[0].token_ids)


def test_chat_applies_the_template(make_llm: Callable[..., LLM]) -> None:
    llm = make_llm()
    messages = [{"role": "user", "content": "Hello world"}]
    (reply,) = llm.chat(messages, GREEDY, use_tqdm=False)
    prompt = llm.tokenizer.apply_chat_template(messages)
    assert reply.prompt_token_ids == tuple(llm.tokenizer.encode(prompt, add_special_tokens=False))
    (same,) = llm.generate([{"prompt_token_ids": list(reply.prompt_token_ids)}], GREEDY,
                           use_tqdm=False)
    assert same.outputs[0].token_ids == reply.outputs[0].token_ids


def test_logprobs_match_the_model_distribution(make_llm: Callable[..., LLM]) -> None:
    llm = make_llm()
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=5, ignore_eos=True)
    (out,) = llm.generate([PROMPTS[1]], params, use_tqdm=False)
    for token, position in zip(out.outputs[0].token_ids, out.outputs[0].logprobs or (),
                               strict=True):
        assert position[token] == max(position.values())
        assert float(np.exp(list(position.values())).sum()) <= 1.0 + 1e-5


def test_interleaved_streams_and_early_close(make_llm: Callable[..., LLM]) -> None:
    llm = make_llm()
    expected = [o.outputs[0].text for o in llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False)]
    first, second = llm.stream(PROMPTS[0], GREEDY), llm.stream(PROMPTS[1], GREEDY)
    texts = ["", ""]
    live = {0: first, 1: second}
    while live:
        for i, gen in list(live.items()):
            try:
                texts[i] += next(gen).text
            except StopIteration:
                del live[i]
    assert texts == expected
    abandoned = llm.stream(PROMPTS[3], GREEDY)
    next(abandoned)
    abandoned.close()  # aborts the request and frees its KV
    pool = _pool(llm)
    assert pool["live_caches"] == 0 and pool["kv_blocks_free"] == pool["kv_blocks_total"]
