"""The reliability catalogue: bad inputs across the layers, each a typed FerrumError
whose message names the problem, and nothing else harmed.

"Nothing else harmed": a witness request in flight while the bad input arrives
finishes with its serial output, the KV pool returns to where it started, the
model files are byte-for-byte unchanged and nothing outside FERRUM_HOME is
written (files), the process lives on (every case runs in this one process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from ferrum_core.engine import LLM, EngineConfig, LoRARequest, SamplingParams
from ferrum_core.errors import (
    CapacityError,
    ConfigError,
    FerrumError,
    InvalidInputError,
    ModelLoadError,
    UnknownCacheError,
)
from tests.reliability.conftest import decode_one as _decode
from tests.reliability.conftest import free_blocks
from tests.reliability.conftest import prefill as _prefill

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
WITNESS = "The quick brown fox"
BAD = "caf\udcc3"
LONG = list(range(5, 105))  # 100 tokens > max_model_len 96


def _lora_dir(tmp: Path, config: str | None) -> Path:
    path = tmp / "adapter"
    path.mkdir()
    if config is not None:
        (path / "adapter_config.json").write_text(config)
    return path


# (id, call(llm, tmp_path), error type, words the message must contain)
API_CASES: list[tuple[str, Callable[[Any, Path], Any], type[FerrumError], str]] = [
    ("empty-ids", lambda m, t: m.generate({"prompt_token_ids": []}), InvalidInputError, "empty"),
    ("too-long", lambda m, t: m.generate({"prompt_token_ids": LONG}), CapacityError,
     "max_model_len"),
    ("oov-id", lambda m, t: m.generate({"prompt_token_ids": [1, 10**6]}), InvalidInputError,
     "vocabulary"),
    ("negative-id", lambda m, t: m.generate({"prompt_token_ids": [1, -3]}), InvalidInputError,
     "-3"),
    ("str-id", lambda m, t: m.generate({"prompt_token_ids": [1, "7"]}), InvalidInputError,
     "prompt_token_ids[1]"),
    ("float-id", lambda m, t: m.generate({"prompt_token_ids": [3.7]}), InvalidInputError,
     "3.7"),
    ("bool-id", lambda m, t: m.generate({"prompt_token_ids": [False]}), InvalidInputError,
     "bool"),
    ("ids-not-a-list", lambda m, t: m.generate({"prompt_token_ids": "1 2"}), InvalidInputError,
     "prompt_token_ids"),
    ("prompt-type", lambda m, t: m.generate([42]), InvalidInputError, "int"),
    ("no-prompts", lambda m, t: m.generate([]), InvalidInputError, "no prompts"),
    ("surrogates", lambda m, t: m.generate(BAD), InvalidInputError, "UTF-8"),
    ("chat-none", lambda m, t: m.chat([{"role": "user", "content": None}]), InvalidInputError,
     "content"),
    ("chat-number", lambda m, t: m.chat([{"role": "user", "content": 7}]), InvalidInputError,
     "content"),
    ("chat-no-role", lambda m, t: m.chat([{"content": "hi"}]), InvalidInputError, "role"),
    ("temperature", lambda m, t: SamplingParams(temperature=-1), InvalidInputError,
     "temperature"),
    ("max-tokens-str", lambda m, t: SamplingParams(max_tokens="3"), InvalidInputError,
     "max_tokens"),
    ("top-p-zero", lambda m, t: SamplingParams(top_p=0), InvalidInputError, "top_p"),
    ("unknown-key", lambda m, t: SamplingParams(best_of=2), InvalidInputError, "best_of"),
    ("stop-oov", lambda m, t: m.generate("hi", SamplingParams(stop_token_ids=[999])),
     InvalidInputError, "stop_token_ids"),
    ("params-count", lambda m, t: m.generate(["a", "b"], [GREEDY]), InvalidInputError,
     "sampling_params"),
    ("lora-no-config", lambda m, t: LoRARequest("a", _lora_dir(t, None)), InvalidInputError,
     "adapter_config.json"),
    ("lora-corrupt-config", lambda m, t: LoRARequest("a", _lora_dir(t, "{nope")),
     InvalidInputError, "adapter_config.json"),
    ("lora-config-list", lambda m, t: LoRARequest("a", _lora_dir(t, "[1]")),
     InvalidInputError, "adapter_config.json"),
    ("lora-rank", lambda m, t: LoRARequest("a", _lora_dir(t, '{"r": "eight"}')),
     InvalidInputError, "'r'"),
    ("lora-alpha", lambda m, t: LoRARequest("a", _lora_dir(t, '{"lora_alpha": -1}')),
     InvalidInputError, "'lora_alpha'"),
    ("llm-config-key", lambda m, t: EngineConfig.from_kwargs({"max_num_seqz": 2}),
     InvalidInputError, "max_num_seqz"),
    ("llm-config-value", lambda m, t: EngineConfig.from_kwargs({"block_size": 0}),
     InvalidInputError, "block_size"),
    ("duplicate-id", lambda m, t: [m.engine.add_request([1, 2], GREEDY, request_id="dup")
                                   for _ in range(2)], InvalidInputError, "dup"),
]


@pytest.fixture(scope="module")
def witness_tokens(shared_llm: Any) -> tuple[int, ...]:
    return shared_llm.generate(WITNESS, GREEDY, use_tqdm=False)[0].outputs[0].token_ids


@pytest.mark.parametrize(("call", "error", "words"), [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_bad_api_input(shared_llm: Any, witness_tokens: tuple[int, ...], tmp_path: Path,
                       call: Callable[[Any, Path], Any], error: type[FerrumError],
                       words: str) -> None:
    start = free_blocks(shared_llm)
    stream = shared_llm.stream(WITNESS, GREEDY)  # a request in flight meanwhile
    try:
        first = next(stream)
        with pytest.raises(error) as caught:
            call(shared_llm, tmp_path)
        tokens = [*first.token_ids, *(t for delta in stream for t in delta.token_ids)]
    finally:
        stream.close()
        _drain(shared_llm.engine)
    assert words in str(caught.value), str(caught.value)
    assert tuple(tokens) == witness_tokens
    assert free_blocks(shared_llm) == start


def _drain(engine: Any) -> None:
    """Abort and forget what a case left in the engine (e.g. the first of two "dup"s)."""
    for request_id in engine.unfinished_request_ids():
        engine.abort_request(request_id)
    while engine.has_unfinished_requests():
        engine.step()
    for request_id in engine.request_ids():
        engine.pop_output(request_id)


# --- the executor API: cache ids -----------------------------------------------------------
def _released(ex: Any, other: Any) -> Any:
    handle = _prefill(ex, [1, 2, 3]).kv_cache
    ex.release_cache(handle.cache_id)
    return _decode(ex, 4, handle)


CACHE_CASES: list[tuple[str, Callable[[Any, Any], Any], type[FerrumError], str]] = [
    ("released", _released, UnknownCacheError, "released"),
    ("foreign", lambda ex, other: _decode(ex, 4, _prefill(other, [1, 2]).kv_cache),
     UnknownCacheError, "not issued by this executor"),
    ("unknown-id", lambda ex, other: _decode(
        ex, 4, dataclasses.replace(_prefill(ex, [1]).kv_cache, cache_id="llm-cache-9999")),
     UnknownCacheError, "llm-cache-9999"),
    ("oov-prefill", lambda ex, other: _prefill(ex, [1, 10**6]), InvalidInputError, "vocab"),
]


@pytest.mark.parametrize(("call", "error", "words"), [c[1:] for c in CACHE_CASES],
                         ids=[c[0] for c in CACHE_CASES])
def test_bad_cache_ids(executors: Any, call: Callable[[Any, Any], Any],
                       error: type[FerrumError], words: str) -> None:
    ex, other = executors
    start = [e.cache_metrics_snapshot()["kv_blocks_free"] for e in executors]
    try:
        witness = _prefill(ex, [5, 6, 7]).kv_cache  # a sequence living on the same executor
        with pytest.raises(error) as caught:
            call(ex, other)
        out = _decode(ex, 8, witness)
        expected = _decode(ex, 8, _prefill(ex, [5, 6, 7]).kv_cache)
    finally:
        for e in executors:
            for cache_id in e.live_caches():
                e.release_cache(cache_id)
    assert words in str(caught.value), str(caught.value)
    np.testing.assert_array_equal(np.asarray(out.logits.to_numpy()),
                                  np.asarray(expected.logits.to_numpy()))
    assert [e.cache_metrics_snapshot()["kv_blocks_free"] for e in executors] == start


# --- files: configs, tokenizers, templates, weights ----------------------------------------
def _edit_json(name: str, **changes: Any) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        data = json.loads((model / name).read_text())
        data.update(changes)
        (model / name).write_text(json.dumps(data))
    return edit


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda model: (model / name).write_text(text) and None


def _remove(name: str) -> Callable[[Path], None]:
    return lambda model: (model / name).unlink()


def _truncate(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


FILE_CASES: list[tuple[str, Callable[[Path], None], type[FerrumError], str]] = [
    ("config-missing", _remove("config.json"), ModelLoadError, "config.json"),
    ("config-corrupt", _write("config.json", '{"hidden_size": '), ModelLoadError, "config.json"),
    ("config-mistyped", _edit_json("config.json", hidden_size="48"), ConfigError, "hidden_size"),
    ("config-contradicting", _edit_json("config.json", num_key_value_heads=2), ConfigError,
     "num_key_value_heads"),
    ("config-rope", _edit_json("config.json", rope_parameters={"rope_type": "yarn"}),
     ConfigError, "rope_type"),
    ("config-missing-key", _edit_json("config.json", vocab_size=None), ConfigError,
     "vocab_size"),
    ("tokenizer-missing", _remove("tokenizer.json"), ModelLoadError, "tokenizer.json"),
    ("tokenizer-corrupt", _write("tokenizer.json", "{]"), ModelLoadError, "tokenizer.json"),
    ("tokenizer-config-corrupt", _write("tokenizer_config.json", "[{"), ModelLoadError,
     "tokenizer_config.json"),
    ("weights-truncated", _truncate, ModelLoadError, "model.safetensors"),
    ("weights-missing", _remove("model.safetensors"), ModelLoadError, "safetensors"),
]


def _digest(root: Path, skip: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and skip not in p.parents}


@pytest.mark.parametrize(("breaks", "error", "words"), [c[1:] for c in FILE_CASES],
                         ids=[c[0] for c in FILE_CASES])
def test_bad_model_files(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         breaks: Callable[[Path], None], error: type[FerrumError],
                         words: str) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("FERRUM_HOME", str(home))
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    breaks(model)
    before = _digest(tmp_path, home)
    with pytest.raises(error) as caught:
        LLM(str(model), "torch", block_size=4, num_kv_blocks=16)
    assert words in str(caught.value), str(caught.value)
    assert _digest(tmp_path, home) == before


@pytest.mark.parametrize(("template", "words"), [
    ("{% for m in messages %}{{ m.content", "chat template"),  # syntax error
    ("{{ raise_exception('no system role') }}", "no system role"),
    ("{% for m in messages %}{{ m.content + 1 }}{% endfor %}", "chat template"),  # TypeError
    ("{{ messages[5].content }}{{ 1 / 0 }}", "chat template"),
])
def test_broken_chat_template(tiny_dir: Path, tmp_path: Path, template: str,
                              words: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    _edit_json("tokenizer_config.json", chat_template=template)(model)
    with LLM(str(model), "torch", block_size=4, num_kv_blocks=16) as llm:
        with pytest.raises(InvalidInputError) as caught:
            llm.chat([{"role": "user", "content": "hi"}], GREEDY, use_tqdm=False)
        assert words in str(caught.value)
        out = llm.generate(WITNESS, GREEDY, use_tqdm=False)[0]  # the LLM still works
        assert len(out.outputs[0].token_ids) == GREEDY.max_tokens


# --- the CLI ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "words"), [
    (["--max-tokens", "0"], "max_tokens"),
    (["--temperature", "nan"], "temperature"),
    (["--top-k", "-5"], "top_k"),
    (["--logprobs", "1000"], "logprobs"),
    (["--stop", ""], "stop"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
    (["--backend", "no-such-backend"], "no-such-backend"),
])
def test_bad_cli_flags_exit_1_with_one_line(tiny_dir: Path, flags: list[str],
                                            words: str) -> None:
    from ferrum_core.cli.main import cli

    model = [] if "--model" in flags else ["--model", str(tiny_dir)]
    backend = [] if "--backend" in flags else ["--backend", "torch"]
    result = CliRunner().invoke(cli, ["generate", "Hi", *model, *backend, *flags])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and words in lines[0], lines
