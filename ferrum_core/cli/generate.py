"""`ferrum generate`, `ferrum chat`, `ferrum bench`: thin wrappers over `LLM`.

Each parses its options, calls the library and prints. A `FerrumError` becomes
one line on stderr and exit status 1; the engine is imported only when a
command runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ferrum_core.errors import FerrumError

if TYPE_CHECKING:
    from ferrum_core.engine import LLM, RequestOutput, SamplingParams

__all__ = ["generate", "chat", "bench"]

F = TypeVar("F", bound=Callable[..., Any])
DTYPES = ("auto", "fp32", "fp16", "bf16", "int8", "int4")
KV_CACHE_DTYPES = ("auto", "fp32", "bf16", "fp16")
TP_HELP = ("Split the model over N ranks (tensor parallelism; executor option "
           "tensor_parallel_size, for backends that have it: torch, cuda).")
KV_CACHE_DTYPE_HELP = ("Store the KV cache in this dtype (auto: the compute dtype); executor "
                       "option kv_cache_dtype, for backends that have it (torch, cuda).")


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except FerrumError as exc:
        raise click.ClickException(_one_line(exc)) from exc


def _one_line(exc: FerrumError) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_texts(**texts: str | tuple[str, ...] | None) -> None:
    """Text options must be UTF-8: undecodable bytes in argv arrive as lone surrogates."""
    from ferrum_core.models.tokenizer import utf8_text

    for name, value in texts.items():
        values: tuple[str, ...] = (value,) if isinstance(value, str) else value or ()
        for text in values:
            utf8_text(text, name)


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


def remember_option(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep an option that no command signature names in ``ctx.meta`` (read by ``_load``)."""
    if param.name is not None:
        ctx.meta[f"ferrum.{param.name}"] = value
    return value


def tensor_parallel_option() -> Callable[[F], F]:
    return click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=None,
                        expose_value=False, callback=remember_option, help=TP_HELP)


def tensor_parallel_size() -> int | None:
    """``--tensor-parallel-size`` of the running command (None: not given)."""
    ctx = click.get_current_context(silent=True)
    value = ctx.meta.get("ferrum.tensor_parallel_size") if ctx is not None else None
    return int(value) if value is not None else None


def _model_options(func: F) -> F:
    options = [
        click.option("--model", "-m", default=None, metavar="DIR|FILE.gguf",
                     help="Model directory or GGUF file (default: the embedded default model)."),
        click.option("--backend", "-b", default=None, help="Backend name (default: selected)."),
        click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
                     help="auto: a GGUF in its own quantisation where the backend can, a "
                     "Hugging Face folder in its stored dtype; else the backend's best."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for the backend."),
        click.option("--kv-cache-dtype", type=click.Choice(KV_CACHE_DTYPES), default=None,
                     help=KV_CACHE_DTYPE_HELP),
        tensor_parallel_option(),
        click.option("--max-model-len", type=click.IntRange(min=2), default=None),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _sampling_options(func: F) -> F:
    options = [
        click.option("--max-tokens", type=int, default=256, show_default=True),
        click.option("--temperature", "-t", type=float, default=0.0, show_default=True,
                     help="0 is greedy."),
        click.option("--top-p", type=float, default=1.0, show_default=True),
        click.option("--top-k", type=int, default=-1, show_default=True),
        click.option("--min-p", type=float, default=0.0, show_default=True),
        click.option("--repetition-penalty", type=float, default=1.0, show_default=True),
        click.option("--seed", type=int, default=None),
        click.option("--system", default=None, metavar="TEXT", help="System message."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(model: str | None, backend: str | None, dtype: str, threads: int | None,
          max_model_len: int | None, kv_cache_dtype: str | None = None, **extra: Any) -> LLM:
    from ferrum_core.engine import LLM

    config: dict[str, Any] = {"dtype": dtype, **extra}
    if threads is not None:
        config["threads"] = threads
    if kv_cache_dtype is not None:
        config["executor_options"] = {"kv_cache_dtype": kv_cache_dtype}
    if tensor_parallel_size() is not None:
        config["tensor_parallel_size"] = tensor_parallel_size()
    if max_model_len is not None:
        config["max_model_len"] = max_model_len
    return LLM(model, backend, **config)


def _params(**values: Any) -> SamplingParams:
    from ferrum_core.engine import SamplingParams

    return SamplingParams(**{k: v for k, v in values.items() if v is not None})


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
@_model_options
@_sampling_options
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
    with _errors():
        _check_texts(PROMPT=prompt, system=system, stop=stop)
        params = _params(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                         top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty,
                         seed=seed, stop=stop, logprobs=logprobs, ignore_eos=ignore_eos)
        extra: dict[str, Any] = {}
        if speculative_model is not None:
            extra = {"speculative_model": speculative_model,
                     "num_speculative_tokens": num_speculative_tokens}
        llm = _load(model, backend, dtype, threads, max_model_len, kv_cache_dtype, **extra)
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
@_model_options
@_sampling_options
@click.option("--ignore-eos", is_flag=True, help="Keep generating past end-of-sequence.")
def chat(model: str | None, backend: str | None, dtype: str, threads: int | None,
         kv_cache_dtype: str | None, max_model_len: int | None, max_tokens: int,
         temperature: float, top_p: float, top_k: int, min_p: float,
         repetition_penalty: float, seed: int | None, system: str | None,
         ignore_eos: bool) -> None:
    """Chat with the model in the terminal (/reset clears the history, /exit or EOF quits)."""
    with _errors():
        params = _params(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                         top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty,
                         seed=seed, ignore_eos=ignore_eos)
        llm = _load(model, backend, dtype, threads, max_model_len, kv_cache_dtype)
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
                click.echo(f"Error: {_one_line(exc)}", err=True)


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


@click.command()
@_model_options
@click.option("--num-requests", "-n", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--prompt-len", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--output-len", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=None)
@click.option("--max-num-batched-tokens", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prompts.")
@click.option("--warmup/--no-warmup", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(model: str | None, backend: str | None, dtype: str, threads: int | None,
          kv_cache_dtype: str | None, max_model_len: int | None, num_requests: int,
          prompt_len: int, output_len: int,
          max_num_seqs: int | None, max_num_batched_tokens: int | None, seed: int,
          warmup: bool, as_json: bool) -> None:
    """Throughput and latency of N concurrent requests (random prompts, EOS ignored)."""
    from ferrum_core.engine.benchmark import run_benchmark

    with _errors():
        extra: dict[str, Any] = {"max_num_seqs": max_num_seqs or max(num_requests, 1)}
        if max_num_batched_tokens is not None:
            extra["max_num_batched_tokens"] = max_num_batched_tokens
        llm = _load(model, backend, dtype, threads, max_model_len, kv_cache_dtype, **extra)
        report = run_benchmark(llm, num_requests=num_requests, prompt_len=prompt_len,
                               output_len=output_len, seed=seed, warmup=warmup)
        click.echo(report.model_dump_json() if as_json else report.table())
