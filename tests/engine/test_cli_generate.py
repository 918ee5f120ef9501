"""`ferrum generate / chat / bench` through click's CliRunner, on the torch backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ferrum_core.cli.bench_cmd import bench
from ferrum_core.cli.generate import chat, generate


@pytest.fixture
def model_args(tiny_dirs: dict[str, Path]) -> list[str]:
    return ["--model", str(tiny_dirs["target"]), "--backend", "torch"]


def test_generate_json_shape(model_args: list[str]) -> None:
    result = CliRunner().invoke(
        generate, ["Hello world", *model_args, "--max-tokens", "6", "--ignore-eos", "--json",
                   "--logprobs", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"text", "prompt_token_ids", "token_ids", "finish_reason", "timings"} <= set(data)
    assert len(data["token_ids"]) == 6 and data["finish_reason"] == "length"
    assert {"ttft_s", "decode_tokens_per_s", "prefill_tokens_per_s"} <= set(data["timings"])
    assert all(isinstance(data["timings"][k], float) for k in ("ttft_s", "decode_tokens_per_s"))
    assert len(data["logprobs"]) == 6


def test_chat_template_by_default_and_raw_on_request(model_args: list[str]) -> None:
    runner = CliRunner()
    templated = json.loads(runner.invoke(
        generate, ["Hi", *model_args, "--max-tokens", "2", "--json"]).stdout)
    raw = json.loads(runner.invoke(
        generate, ["Hi", *model_args, "--max-tokens", "2", "--json", "--raw"]).stdout)
    assert len(templated["prompt_token_ids"]) > len(raw["prompt_token_ids"])
    system = json.loads(runner.invoke(
        generate, ["Hi", *model_args, "--max-tokens", "2", "--json", "--system", "Be brief."]
    ).stdout)
    assert len(system["prompt_token_ids"]) > len(templated["prompt_token_ids"])


def test_stream_prints_the_same_text(model_args: list[str]) -> None:
    runner = CliRunner()
    args = ["Hello world", *model_args, "--max-tokens", "10", "--ignore-eos", "--seed", "5",
            "--temperature", "0.8"]
    whole = json.loads(runner.invoke(generate, [*args, "--json"]).stdout)["text"]
    streamed = runner.invoke(generate, [*args, "--stream"])
    assert streamed.exit_code == 0, streamed.output
    assert streamed.stdout == whole + "\n"


@pytest.mark.parametrize(
    "bad",
    [["--temperature", "-1"], ["--top-p", "3"], ["--model", "/nonexistent/model"],
     ["--backend", "no-such-backend"], ["--max-tokens", "0"]],
)
def test_bad_input_exits_1_with_one_line(model_args: list[str], bad: list[str]) -> None:
    args = ["Hello", *model_args, *bad] if "--model" not in bad else ["Hello", *bad]
    result = CliRunner().invoke(generate, args)
    assert result.exit_code == 1, result.output
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("Error:"), result.stderr
    assert "Traceback" not in result.output


def test_usage_errors_exit_2(model_args: list[str]) -> None:
    assert CliRunner().invoke(generate, ["Hello", *model_args, "--dtype", "fp64"]).exit_code == 2


def test_chat_keeps_history(model_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ferrum_core.engine.llm import LLM

    seen: list[tuple[LLM, list[int]]] = []
    original = LLM.stream

    def recording_stream(self: LLM, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((self, list(prompt["prompt_token_ids"])))
        return original(self, prompt, *args, **kwargs)

    monkeypatch.setattr(LLM, "stream", recording_stream)
    result = CliRunner().invoke(chat, [*model_args, "--max-tokens", "4", "--ignore-eos"],
                                input="Hello\nHow are you?\n/exit\n")
    assert result.exit_code == 0, result.output
    replies = result.stdout.splitlines()
    assert len(replies) == 2 and len(seen) == 2
    llm, second = seen[1]
    rendered = llm.tokenizer.decode(second, skip_special_tokens=False)
    assert "Hello" in rendered and "How are you?" in rendered
    assert replies[0].strip() in rendered


def test_bench_json(model_args: list[str]) -> None:
    result = CliRunner().invoke(bench, [*model_args, "-n", "4", "--prompt-len", "8",
                                        "--output-len", "6", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["num_requests"] == 4 and report["generated_tokens"] == 24
    assert report["output_tokens_per_s"] > 0 and report["ttft_p50_s"] > 0
    table = CliRunner().invoke(bench, [*model_args, "-n", "2", "--prompt-len", "4",
                                       "--output-len", "3", "--no-warmup"])
    assert table.exit_code == 0 and "output tokens/s" in table.stdout


@pytest.mark.slow
def test_default_model_answers(tiny_dirs: dict[str, Path]) -> None:
    result = CliRunner().invoke(
        generate, ["What is the capital of France?", "--backend", "torch", "--max-tokens", "24",
                   "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "Paris" in data["text"]
    assert data["finish_reason"] in ("stop", "length")
    # --dtype auto: the GGUF is Q4_1 (int4), which the torch backend cannot run: fp32.
    assert data["dtype"] == "fp32"
