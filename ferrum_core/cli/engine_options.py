"""The options `generate`, `chat`, `bench` and `serve` share, and their error handling.

A `FerrumError` inside :func:`errors` becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ferrum_core.dtype_choice import AUTO
from ferrum_core.dtype_choice import KV_CACHE_DTYPES as EXECUTOR_KV_CACHE_DTYPES
from ferrum_core.errors import FerrumError

if TYPE_CHECKING:
    from ferrum_core.engine import LLM, SamplingParams

__all__ = [
    "DTYPES", "KV_CACHE_DTYPES", "KV_CACHE_DTYPE_HELP", "check_texts", "engine_config",
    "errors", "load_llm", "model_options", "one_line", "sampling_options", "sampling_params",
    "tensor_parallel_option", "tensor_parallel_size",
]

F = TypeVar("F", bound=Callable[..., Any])
DTYPES = ("auto", "fp32", "fp16", "bf16", "int8", "int4")
KV_CACHE_DTYPES = (AUTO, *EXECUTOR_KV_CACHE_DTYPES)
TP_HELP = ("Split the model over N ranks (tensor parallelism; executor option "
           "tensor_parallel_size, for backends that have it: torch, cuda).")
KV_CACHE_DTYPE_HELP = ("Store the KV cache in this dtype (auto: the compute dtype); executor "
                       "option kv_cache_dtype, for backends that have it (torch, cuda).")


@contextmanager
def errors() -> Iterator[None]:
    try:
        yield
    except FerrumError as exc:
        raise click.ClickException(one_line(exc)) from exc


def one_line(exc: FerrumError) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def check_texts(**texts: str | tuple[str, ...] | None) -> None:
    """Text options must be UTF-8: undecodable bytes in argv arrive as lone surrogates."""
    from ferrum_core.models.tokenizer import utf8_text

    for name, value in texts.items():
        values: tuple[str, ...] = (value,) if isinstance(value, str) else value or ()
        for text in values:
            utf8_text(text, name)


def remember_option(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep an option that no command signature names in ``ctx.meta`` (read by ``load_llm``)."""
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


def model_options(func: F) -> F:
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


def sampling_options(func: F) -> F:
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


def engine_config(dtype: str, threads: int | None, max_model_len: int | None,
                  kv_cache_dtype: str | None = None, **extra: Any) -> dict[str, Any]:
    """The ``LLM`` keyword arguments of the engine options (``--tensor-parallel-size`` too)."""
    config: dict[str, Any] = {"dtype": dtype, **extra}
    if threads is not None:
        config["threads"] = threads
    if kv_cache_dtype is not None:
        config["executor_options"] = {"kv_cache_dtype": kv_cache_dtype}
    if tensor_parallel_size() is not None:
        config["tensor_parallel_size"] = tensor_parallel_size()
    if max_model_len is not None:
        config["max_model_len"] = max_model_len
    return config


def load_llm(model: str | None, backend: str | None, dtype: str, threads: int | None,
             max_model_len: int | None, kv_cache_dtype: str | None = None,
             **extra: Any) -> LLM:
    from ferrum_core.engine import LLM

    return LLM(model, backend, **engine_config(dtype, threads, max_model_len, kv_cache_dtype,
                                               **extra))


def sampling_params(**values: Any) -> SamplingParams:
    from ferrum_core.engine import SamplingParams

    return SamplingParams(**{k: v for k, v in values.items() if v is not None})
