"""Throughput and latency of N concurrent requests of fixed prompt and output lengths."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel

from ferrum_core.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from ferrum_core.engine.llm import LLM

__all__ = ["BenchmarkReport", "random_prompts", "run_benchmark"]


class BenchmarkReport(BaseModel):
    backend: str
    model: str
    dtype: str
    num_requests: int
    prompt_len: int
    output_len: int
    wall_s: float
    prompt_tokens: int
    generated_tokens: int
    output_tokens_per_s: float
    total_tokens_per_s: float
    requests_per_s: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    latency_mean_s: float
    latency_max_s: float
    decode_tokens_per_s_per_request: float
    num_preemptions: int
    spec_acceptance_rate: float | None = None

    def table(self) -> str:
        rows = [
            ("backend / dtype", f"{self.backend} / {self.dtype}"),
            ("requests x (prompt, output)",
             f"{self.num_requests} x ({self.prompt_len}, {self.output_len})"),
            ("wall time", f"{self.wall_s:.2f} s"),
            ("output tokens/s", f"{self.output_tokens_per_s:.1f}"),
            ("total tokens/s (prompt+output)", f"{self.total_tokens_per_s:.1f}"),
            ("requests/s", f"{self.requests_per_s:.2f}"),
            ("TTFT mean / p50 / p90", f"{self.ttft_mean_s:.3f} / {self.ttft_p50_s:.3f} / "
                                      f"{self.ttft_p90_s:.3f} s"),
            ("latency mean / max", f"{self.latency_mean_s:.2f} / {self.latency_max_s:.2f} s"),
            ("decode tokens/s per request", f"{self.decode_tokens_per_s_per_request:.1f}"),
            ("preemptions", str(self.num_preemptions)),
        ]
        if self.spec_acceptance_rate is not None:
            rows.append(("speculative acceptance", f"{self.spec_acceptance_rate:.2%}"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def random_prompts(vocab_size: int, num: int, length: int, seed: int = 0) -> list[list[int]]:
    """Token prompts drawn from the middle of the vocabulary (away from special tokens)."""
    rng = random.Random(seed)
    low, high = min(1000, vocab_size // 4), max(min(30000, vocab_size - 1), 2)
    return [[rng.randrange(low, high) for _ in range(length)] for _ in range(num)]


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_benchmark(
    llm: LLM,
    *,
    num_requests: int = 16,
    prompt_len: int = 32,
    output_len: int = 128,
    seed: int = 0,
    warmup: bool = True,
    prompts: Sequence[Sequence[int]] | None = None,
) -> BenchmarkReport:
    """Submit every request at once and run them to completion, ignoring EOS."""
    token_prompts = [list(p) for p in prompts] if prompts is not None else random_prompts(
        llm.engine.vocab_size, num_requests, prompt_len, seed)
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    if warmup:
        llm.generate([{"prompt_token_ids": token_prompts[0]}],
                     SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
                     use_tqdm=False)
    preempted = llm.engine.num_preemptions
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in token_prompts], params,
                           use_tqdm=False)
    wall = time.perf_counter() - start
    metrics = [o.metrics for o in outputs]
    ttfts = [m.ttft_s or 0.0 for m in metrics]
    latencies = [m.latency_s or 0.0 for m in metrics]
    decode_rates = [m.decode_tokens_per_s or 0.0 for m in metrics]
    generated = sum(m.num_generated_tokens for m in metrics)
    prompt_tokens = sum(m.num_prompt_tokens for m in metrics)
    stats = llm.stats()
    return BenchmarkReport(
        backend=llm.backend,
        model=str(llm.model_path),
        dtype=llm.dtype.value,
        num_requests=len(token_prompts),
        prompt_len=len(token_prompts[0]),
        output_len=output_len,
        wall_s=wall,
        prompt_tokens=prompt_tokens,
        generated_tokens=generated,
        output_tokens_per_s=generated / wall,
        total_tokens_per_s=(generated + prompt_tokens) / wall,
        requests_per_s=len(token_prompts) / wall,
        ttft_mean_s=statistics.fmean(ttfts),
        ttft_p50_s=_quantile(ttfts, 0.5),
        ttft_p90_s=_quantile(ttfts, 0.9),
        latency_mean_s=statistics.fmean(latencies),
        latency_max_s=max(latencies),
        decode_tokens_per_s_per_request=statistics.fmean(decode_rates),
        num_preemptions=llm.engine.num_preemptions - preempted,
        spec_acceptance_rate=stats.get("spec_acceptance_rate"),
    )
