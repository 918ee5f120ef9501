"""Per-request behaviour on the toy model: seeds, stops, streaming, logprobs, LoRA metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferrum_core.engine import LoRARequest, SamplingParams
from ferrum_core.errors import InvalidInputError, UnsupportedError
from ferrum_core.llm.metadata import LORA_ADAPTER_KEY, LORA_PATH_KEY
from tests.engine.helpers import run_all, texts, toy_engine
from tests.engine.toy import EOS, PagedToyLlm, toy_executor

PROMPTS = [[5, 9, 13], list(range(1, 20)), [42, 43], list(range(30, 41))]


def test_same_seed_same_output_whatever_the_batch() -> None:
    sampled = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16,
                             ignore_eos=True)
    alone = run_all(toy_engine(toy_executor()[0]), [PROMPTS[1]], sampled)
    others = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)  # unseeded
    crowd = run_all(toy_engine(toy_executor()[0], max_num_batched_tokens=5),
                    [PROMPTS[0], PROMPTS[1], PROMPTS[2]], [others, sampled, others])
    assert texts(alone) == texts(crowd[1:2])
    reseeded = run_all(toy_engine(toy_executor()[0]), [PROMPTS[1]],
                       sampled.model_copy(update={"seed": 4321}))
    assert texts(reseeded) != texts(alone)


def test_stop_token_ids_and_eos() -> None:
    engine = toy_engine(toy_executor()[0])
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    (free,) = run_all(engine, [PROMPTS[3]], greedy)
    tokens = free.outputs[0].token_ids
    stopper = tokens[5]
    first = tokens.index(stopper)
    (stopped,) = run_all(engine, [PROMPTS[3]],
                         greedy.model_copy(update={"stop_token_ids": (stopper,)}))
    out = stopped.outputs[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == tokens[: first + 1]  # the stop token is reported, not printed
    (by_text,) = run_all(engine, [PROMPTS[3]],
                         greedy.model_copy(update={"max_tokens": first}))
    assert out.text == by_text.outputs[0].text
    # EOS (token 0) ends a request unless ignore_eos
    eos_seen = [i for i, o in enumerate(run_all(
        engine, [[i, i + 1] for i in range(1, 60)], greedy)) if EOS in o.outputs[0].token_ids]
    assert eos_seen, "some toy continuation should reach EOS"
    (ended,) = run_all(engine, [[eos_seen[0] + 1, eos_seen[0] + 2]],
                       greedy.model_copy(update={"ignore_eos": False}))
    assert ended.outputs[0].finish_reason == "stop" and ended.outputs[0].token_ids[-1] == EOS


def test_stop_strings_cut_the_text_and_streaming_matches() -> None:
    engine = toy_engine(toy_executor()[0])
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    (free,) = run_all(engine, [PROMPTS[1]], greedy)
    full = free.outputs[0].text
    stop = full[6:9]
    cut = full.index(stop)
    params = greedy.model_copy(update={"stop": (stop,)})
    request_id = engine.add_request(PROMPTS[1], params)
    streamed = []
    while engine.has_unfinished_requests():
        streamed.extend(d.text for d in engine.step() if d.request_id == request_id)
    out = engine.pop_output(request_id).outputs[0]
    assert out.finish_reason == "stop"
    assert out.text == full[:cut]
    assert "".join(streamed) == out.text


def test_logprobs_follow_each_generated_token() -> None:
    engine = toy_engine(toy_executor()[0])
    (out,) = run_all(engine, [PROMPTS[0]], SamplingParams(temperature=0, max_tokens=5,
                                                          logprobs=3, ignore_eos=True))
    completion = out.outputs[0]
    assert completion.logprobs is not None and len(completion.logprobs) == 5
    for token, position in zip(completion.token_ids, completion.logprobs, strict=True):
        assert token in position and len(position) == 3
        assert position[token] == max(position.values())  # greedy takes the most likely


def _adapter(tmp_path: Path, name: str) -> LoRARequest:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    return LoRARequest(name, folder)


def test_lora_requests_carry_metadata_and_mix_in_one_batch(tmp_path: Path) -> None:
    a, b = _adapter(tmp_path, "alpha"), _adapter(tmp_path, "beta")
    assert dict(a.metadata()) == {LORA_ADAPTER_KEY: "alpha", LORA_PATH_KEY: str(a.path)}
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    alone = [run_all(toy_engine(toy_executor()[0]), [PROMPTS[1]], greedy, [lora])[0]
             for lora in (None, a, b)]
    executor, model = toy_executor()
    mixed = run_all(toy_engine(executor), [PROMPTS[1]] * 3, greedy, [None, a, b])
    assert texts(mixed) == texts(alone)
    assert len({o.outputs[0].token_ids for o in mixed}) == 3  # the adapters mattered
    assert {name for _, name in model.adapters_seen} == {None, "alpha", "beta"}


def test_lora_request_validates_its_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        LoRARequest("x", tmp_path / "missing")
    with pytest.raises(InvalidInputError):
        LoRARequest("", tmp_path)


def test_capabilities_decide_what_is_allowed(tmp_path: Path) -> None:
    from ferrum_core.llm.executor import LlmExecutor

    class NoSpeculation(LlmExecutor):
        def capabilities(self):  # type: ignore[no-untyped-def]
            caps = super().capabilities()
            return caps.model_copy(update={"supports_speculative_decoding": False})

    no_lora = toy_engine(toy_executor(lora=False)[0])
    with pytest.raises(UnsupportedError):
        no_lora.add_request([1, 2], SamplingParams(), lora_request=_adapter(tmp_path, "a"))
    with pytest.raises(UnsupportedError):
        toy_engine(NoSpeculation(PagedToyLlm()), draft=toy_executor()[0])
    capped = toy_engine(toy_executor(max_batch_size=3)[0], max_num_seqs=16)
    assert capped.scheduler.config.max_num_seqs == 3
