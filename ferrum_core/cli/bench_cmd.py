"""`ferrum bench`: throughput and latency of N concurrent requests through `LLM`."""

from __future__ import annotations

from typing import Any

import click

from ferrum_core.cli.engine_options import errors, load_llm, model_options

__all__ = ["bench"]


@click.command()
@model_options
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

    with errors():
        extra: dict[str, Any] = {"max_num_seqs": max_num_seqs or max(num_requests, 1)}
        if max_num_batched_tokens is not None:
            extra["max_num_batched_tokens"] = max_num_batched_tokens
        llm = load_llm(model, backend, dtype, threads, max_model_len, kv_cache_dtype, **extra)
        report = run_benchmark(llm, num_requests=num_requests, prompt_len=prompt_len,
                               output_len=output_len, seed=seed, warmup=warmup)
        click.echo(report.model_dump_json() if as_json else report.table())
