"""Bad input that used to escape as TypeError/ValueError, or was silently coerced.

Text that is not valid UTF-8 (lone surrogates, as ``surrogateescape`` makes of
undecodable bytes on the command line and stdin), chat messages whose content
is not text, token ids that are not ints, sampling values of the wrong type
and stop token ids outside the vocabulary: each is an ``InvalidInputError``
naming the problem, and nothing else is harmed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ferrum_core.cli.generate import chat, generate
from ferrum_core.engine import SamplingParams
from ferrum_core.errors import InvalidInputError
from tests.reliability.conftest import free_blocks

BAD_TEXT = "caf\udcc3 au lait"  # b"caf\xc3 au lait" decoded with surrogateescape
GREEDY = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)


def _reference(llm: Any) -> tuple[int, ...]:
    return llm.generate("Hello world", GREEDY, use_tqdm=False)[0].outputs[0].token_ids


# --- text that is not UTF-8 -------------------------------------------------------------
def test_prompt_text_with_surrogates_is_invalid_input(shared_llm: Any) -> None:
    before, start = _reference(shared_llm), free_blocks(shared_llm)
    with pytest.raises(InvalidInputError, match=r"not valid UTF-8.*0xc3"):
        shared_llm.generate(["Hello world", BAD_TEXT], GREEDY, use_tqdm=False)
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        list(shared_llm.stream(BAD_TEXT, GREEDY))
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        shared_llm.chat([{"role": "user", "content": BAD_TEXT}], GREEDY, use_tqdm=False)
    assert _reference(shared_llm) == before and free_blocks(shared_llm) == start


def test_stop_strings_must_be_utf8() -> None:
    with pytest.raises(InvalidInputError, match=r"stop.*not valid UTF-8"):
        SamplingParams(stop=[BAD_TEXT])


@pytest.mark.parametrize("content", [None, 3, 2.5, True, {"text": "hi"}])
def test_chat_content_must_be_text(shared_llm: Any, content: Any) -> None:
    with pytest.raises(InvalidInputError, match=r"content"):
        shared_llm.chat([{"role": "user", "content": content}], GREEDY, use_tqdm=False)


def test_chat_role_must_be_text(shared_llm: Any) -> None:
    with pytest.raises(InvalidInputError, match=r"role"):
        shared_llm.chat([{"role": 1, "content": "hi"}], GREEDY, use_tqdm=False)


# --- token ids that are not ints -------------------------------------------------------
@pytest.mark.parametrize(
    ("ids", "named"),
    [([1, "2", 3], "str"), ([1, 3.7], "float"), ([True, 5], "bool"), ([1, None], "NoneType"),
     ([1, 2.0], "float")],
)
def test_prompt_token_ids_must_be_ints(shared_llm: Any, ids: list[Any], named: str) -> None:
    before, start = _reference(shared_llm), free_blocks(shared_llm)
    with pytest.raises(InvalidInputError, match=rf"prompt_token_ids\[\d\].*{named}"):
        shared_llm.generate({"prompt_token_ids": ids}, GREEDY, use_tqdm=False)
    with pytest.raises(InvalidInputError, match=rf"prompt_token_ids\[\d\].*{named}"):
        shared_llm.engine.add_request(ids, GREEDY)
    assert not shared_llm.engine.has_unfinished_requests()
    assert _reference(shared_llm) == before and free_blocks(shared_llm) == start


def test_numpy_token_ids_still_work(shared_llm: Any) -> None:
    np = pytest.importorskip("numpy")
    ids = shared_llm.tokenizer.encode("Hello world")
    plain = shared_llm.generate({"prompt_token_ids": ids}, GREEDY, use_tqdm=False)
    numpy = shared_llm.generate({"prompt_token_ids": list(np.asarray(ids, dtype=np.int64))},
                                GREEDY, use_tqdm=False)
    assert plain[0].outputs[0].token_ids == numpy[0].outputs[0].token_ids


# --- sampling values ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", "3"), ("max_tokens", True), ("max_tokens", 3.0), ("top_k", "5"),
     ("seed", True), ("seed", "1"), ("logprobs", False), ("temperature", "0.5"),
     ("temperature", True), ("top_p", "1"), ("ignore_eos", 1), ("ignore_eos", "yes"),
     ("stop_token_ids", [True]), ("stop_token_ids", ["3"]), ("stop_token_ids", [3.0]),
     ("stop", [3])],
)
def test_sampling_params_are_strict(field: str, value: Any) -> None:
    with pytest.raises(InvalidInputError, match=field):
        SamplingParams(**{field: value})


def test_sampling_floats_accept_ints() -> None:
    params = SamplingParams(temperature=0, top_p=1, repetition_penalty=2, min_p=0)
    assert params.temperature == 0.0 and isinstance(params.temperature, float)
    assert SamplingParams(stop_token_ids=[3, 4]).stop_token_ids == (3, 4)
    assert SamplingParams(stop="x").stop == ("x",)


def test_stop_token_ids_outside_the_vocabulary(shared_llm: Any) -> None:
    before, start = _reference(shared_llm), free_blocks(shared_llm)
    vocab = shared_llm.engine.vocab_size
    bad = SamplingParams(max_tokens=3, stop_token_ids=[5, vocab])
    with pytest.raises(InvalidInputError, match=rf"stop_token_ids.*{vocab}.*vocabulary"):
        shared_llm.generate("Hello", bad, use_tqdm=False)
    with pytest.raises(InvalidInputError, match=r"stop_token_ids"):
        shared_llm.engine.add_request([1, 2, 3], bad)
    assert not shared_llm.engine.has_unfinished_requests()
    assert _reference(shared_llm) == before and free_blocks(shared_llm) == start


# --- the CLI -----------------------------------------------------------------------------
@pytest.fixture
def model_args(tiny_dir: Path) -> list[str]:
    return ["--model", str(tiny_dir), "--backend", "torch", "--max-tokens", "3"]


@pytest.mark.parametrize("where", ["prompt", "--system", "--stop"])
def test_generate_with_invalid_utf8_exits_1_with_one_line(model_args: list[str],
                                                          where: str) -> None:
    args = [BAD_TEXT, *model_args] if where == "prompt" else ["Hi", *model_args, where, BAD_TEXT]
    result = CliRunner().invoke(generate, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "UTF-8" in lines[0], lines
    assert "Traceback" not in result.output


def test_chat_survives_invalid_utf8_and_keeps_history(model_args: list[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from ferrum_core.engine.llm import LLM

    prompts: list[list[int]] = []
    original = LLM.stream

    def recording(self: LLM, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        prompts.append(list(prompt["prompt_token_ids"]))
        return original(self, prompt, *args, **kwargs)

    monkeypatch.setattr(LLM, "stream", recording)
    stdin = b"Hello\n" + b"caf\xc3 au lait\n" + b"Again\n"
    result = CliRunner().invoke(chat, model_args, input=stdin)
    assert result.exit_code == 0, result.output
    errors = [line for line in result.stderr.splitlines() if "Error:" in line]
    assert len(errors) == 1 and "UTF-8" in errors[0], result.stderr
    assert len(prompts) == 2  # the bad line never reached the model
    assert prompts[1][: len(prompts[0])] == prompts[0]  # the first turn is still the history
