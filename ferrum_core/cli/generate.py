"""`ferrum generate` and `ferrum chat`: thin wrappers over `LLM`.

Each parses its options, calls the library and prints. A `FerrumError` becomes
one line on stderr and exit status 1; the engine is imported only when a
command runs.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from ferrum_core.cli.engine_options import (
    check_texts,
    errors,
    load_llm,
    model_options,
    one_line,
    sampling_options,
    sampling_params,
)
from ferrum_core.errors import FerrumError

if TYPE_CHECKING:
    from ferrum_core.engine import LLM, RequestOutput, SamplingParams

__all__ = ["generate", "chat"]


def _read_line() -> str | None:
    """One line of stdin (None at EOF), decoded as UTF-8; invalid bytes raise a typed error
    for this line only (reading bytes keeps the stream usable for the next one)."""
    from ferrum_core.errors import InvalidInputError

    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text-only stdin: it has decoded already
        line = sys.stdin.readline()
        return line or None
    raw: bytes = stream.readline()
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"input is not valid UTF-8 text: undecodable byte 0x{raw[exc.start]:02x}"
            f" at byte {exc.start}"
        ) from None


def _prompt_ids(llm: LLM, prompt: str, system: str | None, raw: bool) -> list[int]:
    if raw or not llm.tokenizer.has_chat_template:
        text = prompt if system is None else f"{system}\n\n{prompt}"
        return llm.tokenizer.encode(text)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return llm.encode_chat(messages)


def _as_json(output: RequestOutput, llm: LLM) -> dict[str, Any]:
    completion = output.outputs[0]
    data: dict[str, Any] = {
        "text": completion.text,
        "prompt": output.prompt,
        "prompt_token_ids": list(output.prompt_token_ids),
        "token_ids": list(completion.token_ids),
        "finish_reason": completion.finish_reason,
        "timings": output.metrics.timings(),
        "backend": llm.backend,
        "dtype": llm.dtype.value,
        "model": str(llm.model_path),
    }
    if completion.logprobs is not None:
        data["logprobs"] = [
            {str(token): value for token, value in position.items()}
            for position in completion.logprobs
        ]
    return data


@click.command()
@click.argument("prompt")
@model_options
@sampling_options
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--logprobs", type=int, default=None, metavar="N",
              help="Report the N most likely tokens at each position.")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past end-of-sequence.")
@click.option("--raw", is_flag=True, help="Send the prompt as is (no chat template).")
@click.option("--stream", "stream_", is_flag=True, help="Print tokens as they arrive.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--speculative-model", default=None, metavar="DIR|FILE.gguf",
              help="Draft model for speculative decoding.")
@click.option("--num-speculative-tokens", type=click.IntRange(min=1), default=4)
def generate(prompt: str, model: str | None, backend: str | None, dtype: str,
             threads: int | None, kv_cache_dtype: str | None, max_model_len: int | None,
             max_tokens: int,
             temperature: float, top_p: float, top_k: int, min_p: float,
             repetition_penalty: float, seed: int | None, system: str | None,
             stop: tuple[str, ...], logprobs: int | None, ignore_eos: bool, raw: bool,
             stream_: bool, as_json: bool, speculative_model: str | None,
             num_speculative_tokens: int) -> None:
    """Generate a completion for PROMPT (chat template applied unless --raw)."""
    with errors():
        check_texts(PROMPT=prompt, system=system, stop=stop)
        params = sampling_params(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                         top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty,
                         seed=seed, stop=stop, logprobs=logprobs, ignore_eos=ignore_eos)
        extra: dict[str, Any] = {}
        if speculative_model is not None:
            extra = {"speculative_model": speculative_model,
                     "num_speculative_tokens": num_speculative_tokens}
        llm = load_llm(model, backend, dtype, threads, max_model_len, kv_cache_dtype, **extra)
        token_prompt = {"prompt_token_ids": _prompt_ids(llm, prompt, system, raw),
                        "prompt": prompt}
        if stream_ and not as_json:
            for delta in llm.stream(token_prompt, params):
                click.echo(delta.text, nl=False)
            click.echo()
            return
        (output,) = llm.generate([token_prompt], params, use_tqdm=False)
        if as_json:
            click.echo(json.dumps(_as_json(output, llm)))
            return
        click.echo(output.outputs[0].text)
        timings = output.metrics.timings()
        click.echo(_timing_line(timings), err=True)


def _timing_line(timings: dict[str, Any]) -> str:
    def rate(key: str) -> str:
        value = timings.get(key)
        return "n/a" if value is None else f"{value:.1f}"

    ttft = timings.get("ttft_s")
    return (
        f"prompt: {timings['num_prompt_tokens']} tokens, {rate('prefill_tokens_per_s')} tok/s | "
        f"generation: {timings['num_generated_tokens']} tokens, "
        f"{rate('decode_tokens_per_s')} tok/s | ttft: "
        + ("n/a" if ttft is None else f"{ttft:.3f} s")
    )


@click.command()
@model_options
@sampling_options
@click.option("--ignore-eos", is_flag=True, help="Keep generating past end-of-sequence.")
def chat(model: str | None, backend: str | None, dtype: str, threads: int | None,
         kv_cache_dtype: str | None, max_model_len: int | None, max_tokens: int,
         temperature: float, top_p: float, top_k: int, min_p: float,
         repetition_penalty: float, seed: int | None, system: str | None,
         ignore_eos: bool) -> None:
    """Chat with the model in the terminal (/reset clears the history, /exit or EOF quits)."""
    with errors():
        params = sampling_params(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                         top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty,
                         seed=seed, ignore_eos=ignore_eos)
        llm = load_llm(model, backend, dtype, threads, max_model_len, kv_cache_dtype)
        if not llm.tokenizer.has_chat_template:
            raise click.ClickException("this model has no chat template; use `ferrum generate`")
        start = [{"role": "system", "content": system}] if system else []
        history: list[dict[str, str]] = list(start)
        while True:
            click.echo(">>> ", nl=False, err=True)
            try:
                line = _read_line()
                if line is None:
                    click.echo(err=True)
                    break
                text = line.strip()
                if text in ("/exit", "/quit"):
                    break
                if text == "/reset":
                    history = list(start)
                    continue
                if text:
                    history = _turn(llm, history, text, params)
            except FerrumError as exc:  # this turn failed; the session and its history go on
                click.echo(f"Error: {one_line(exc)}", err=True)


def _turn(llm: LLM, history: list[dict[str, str]], text: str,
          params: SamplingParams) -> list[dict[str, str]]:
    """One exchange; returns the new history (the old one is untouched if it fails)."""
    asked = [*history, {"role": "user", "content": text}]
    prompt = {"prompt_token_ids": llm.encode_chat(asked)}
    reply = []
    try:
        for delta in llm.stream(prompt, params):
            reply.append(delta.text)
            click.echo(delta.text, nl=False)
    finally:
        click.echo()
    return [*asked, {"role": "assistant", "content": "".join(reply)}]
