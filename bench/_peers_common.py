"""Shared pieces of the side-by-side benchmarks (bench_cpu.py, bench_mlx.py).

An *engine* here is anything with ``decode(prompt, n)`` and ``prefill(prompt)``
returning tokens per second at batch 1:

* decode: ``(n - 1) / (time of the n-th generated token - time of the first)``:
  the steady decode rate, prefill and the first token excluded (the same
  definition as Ferrum's ``RequestMetrics.decode_tokens_per_s``);
* prefill: ``len(prompt) / time to the first token`` from an empty cache.

Engines are measured interleaved (one run of each, then the next round), after
a warm-up, and the median of ``--repeat`` rounds is reported; a ratio between
two engines is the median of the per-round ratios, which cancels some of the
drift of a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

CHAT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


class Engine(Protocol):
    def decode(self, prompt: list[int], n: int) -> float: ...

    def prefill(self, prompt: list[int]) -> float: ...


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def chosen_engines(parser: argparse.ArgumentParser, spec: str, known: Sequence[str]) -> list[str]:
    """``--engines`` as a list, or a usage error naming the unknown ones."""
    chosen = [e.strip() for e in spec.split(",") if e.strip()]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        parser.error(f"unknown engines {unknown}; choose from {', '.join(known)}")
    return chosen


def torch_threads(threads: int) -> None:
    """Every peer on ``threads`` threads: OpenMP (set before torch loads) and torch."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


def bench_cache_dir(override: str | None) -> Path:
    """``$FERRUM_HOME/bench`` (or ``override``): built peer models live here."""
    if override:
        path = Path(override).expanduser()
    else:
        from ferrum_core.models.cache import ferrum_home

        path = ferrum_home() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def chat_prompt_ids(model_dir: Path) -> list[int]:
    """The short chat prompt, through the model's own chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ids: Any = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def rates(times: Sequence[float], start: float, prompt_len: int) -> tuple[float, float]:
    """(decode tok/s, prefill tok/s) from the timestamps of the generated tokens."""
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return decode, prompt_len / (times[0] - start)


@dataclass
class Slot:
    """One engine of the table: how to build it, and what it measured."""

    label: str
    build: Callable[[], Engine] | None
    engine: Engine | None = None
    skipped: str | None = None  # "not installed", or the error that stopped it
    values: dict[str, list[float]] = field(default_factory=dict)

    def load(self) -> None:
        assert self.build is not None
        try:
            self.engine = self.build()
        except ModuleNotFoundError as err:
            self.skipped = f"not installed ({err.name})"
        except Exception as err:
            self.skipped = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            traceback.print_exc(file=sys.stderr)
        if self.skipped:
            log(f"  {self.label}: {self.skipped}")

    def run(self, what: str, method: str, *args: Any) -> None:
        """``engine.method(*args)``, a figure kept under ``what``; an engine that
        raises is reported and dropped from the rest of the run."""
        if self.engine is None:
            return
        try:
            value = float(getattr(self.engine, method)(*args))
        except Exception as err:
            self.skipped = f"{type(err).__name__} during {what}: {str(err).splitlines()[0]}"
            self.engine = None
            traceback.print_exc(file=sys.stderr)
            log(f"  {self.label}: {self.skipped}")
            return
        self.values.setdefault(what, []).append(value)

    def last(self, what: str) -> float:
        return self.values[what][-1]

    def runs(self, what: str) -> list[float]:
        return self.values.get(what, [])

    def median(self, what: str) -> float | None:
        values = self.runs(what)
        return statistics.median(values) if values else None

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "skipped": self.skipped, "runs": self.values,
                "medians": {k: self.median(k) for k in self.values}}


def ratio_of(runs_a: Sequence[float], runs_b: Sequence[float]) -> float | None:
    """Median of the per-round ratios a/b (rounds both completed)."""
    pairs = [a / b for a, b in zip(runs_a, runs_b, strict=False) if b > 0]
    return statistics.median(pairs) if pairs else None


def fmt(value: float | None, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def target_line(name: str, value: float | None, target: float) -> str:
    verdict = "n/a" if value is None else ("met" if value >= target else "MISSED")
    shown = "-" if value is None else f"{value:.2f}x"
    return f"{name:<52}{shown:>8}   target >= {target:.1f}x  {verdict}"


def table(slots: Sequence[Slot], columns: Sequence[tuple[str, str]]) -> str:
    """One row per slot: its label, the median of each column, or why it was skipped."""
    width = max(len(s.label) for s in slots) + 2
    head = f"{'engine':<{width}}" + "".join(f"{title:>16}" for title, _ in columns)
    lines = [head, "-" * len(head)]
    for slot in slots:
        cells = "".join(f"{fmt(slot.median(key)):>16}" for _, key in columns)
        note = f"   {slot.skipped}" if slot.skipped else ""
        lines.append(f"{slot.label:<{width}}{cells}{note}")
    return "\n".join(lines)


class Clock:
    """Timestamps generated tokens: ``start()``, then ``tick()`` per token."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.times: list[float] = []

    def start(self) -> None:
        self.times = []
        self.t0 = time.perf_counter()

    def tick(self) -> None:
        self.times.append(time.perf_counter())


class FerrumLLM:
    """A Ferrum backend through ``LLM`` (the engine a user gets), prefix cache off
    so a repeated prompt is computed again."""

    def __init__(self, backend: str, dtype: str, threads: int, max_num_seqs: int = 16,
                 options: dict[str, Any] | None = None) -> None:
        from ferrum_core.engine import LLM

        self.llm = LLM(None, backend, dtype=dtype, threads=threads, max_num_seqs=max_num_seqs,
                       enable_prefix_caching=False, executor_options=options or {})

    def _one(self, prompt: list[int], n: int) -> Any:
        from ferrum_core.engine import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        out = self.llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
        return out[0].metrics

    def decode(self, prompt: list[int], n: int) -> float:
        rate = self._one(prompt, n).decode_tokens_per_s
        return float("nan") if rate is None else float(rate)

    def prefill(self, prompt: list[int]) -> float:
        m = self._one(prompt, 1)
        return len(prompt) / (m.first_token_time - m.first_scheduled_time)

    def concurrent(self, prompts: list[list[int]], output_len: int) -> float:
        """``ferrum bench``'s measurement: every request at once, output tok/s."""
        from ferrum_core.engine.benchmark import run_benchmark

        report = run_benchmark(self.llm, prompts=prompts, output_len=output_len, warmup=False)
        return report.output_tokens_per_s

    def close(self) -> None:
        self.llm.close()
