"""The CPU peers of bench_cpu.py: llama.cpp (llama-cpp-python), ONNX Runtime GenAI
(its own model builder) and ``transformers``; each decodes greedily at batch 1,
ignoring EOS, with the thread count it is given."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _peers_common import Clock, log, rates
from bench_vs_transformers import Transformers


class LlamaCpp:
    """llama.cpp on the GGUF itself. ``reset()`` before each run: llama-cpp-python
    otherwise reuses the KV of a matching prefix from the previous call."""

    def __init__(self, gguf: Path, threads: int, n_ctx: int = 2048) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads,
                         n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=512, verbose=False)

    def _run(self, prompt: list[int], n: int) -> Clock:
        clock = Clock()
        self.llm.reset()
        clock.start()
        for _ in self.llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                   repeat_penalty=1.0, reset=True):
            clock.tick()
            if len(clock.times) == n:
                break
        return clock

    def decode(self, prompt: list[int], n: int) -> float:
        clock = self._run(prompt, n)
        return rates(clock.times, clock.t0, len(prompt))[0]

    def prefill(self, prompt: list[int]) -> float:
        clock = self._run(prompt, 1)
        return rates(clock.times, clock.t0, len(prompt))[1]


def ort_genai_model(model_dir: Path, precision: str, cache: Path) -> Path:
    """ONNX Runtime GenAI's own build of ``model_dir`` (``python -m
    onnxruntime_genai.models.builder -i DIR -o OUT -p PRECISION -e cpu``, its
    defaults otherwise: int4 is MatMulNBits block 32, symmetric, accuracy_level 4
    on the CPU EP), built once into ``cache`` (a temp dir renamed into place)."""
    import onnxruntime_genai as og

    target = cache / f"ort-genai-{og.__version__}-{precision}-{model_dir.name}"
    if (target / "genai_config.json").is_file():
        return target
    temp = cache / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    work = cache / "ort-genai-work"
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir),
               "-o", str(temp), "-p", precision, "-e", "cpu", "-c", str(work)]
    log(f"  building ONNX Runtime GenAI {precision} model: {' '.join(command)}")
    with open(cache / f"{target.name}.build.log", "w") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)
    os.replace(temp, target)
    return target


class OrtGenAI:
    """ONNX Runtime GenAI's generator (its own KV buffer shared past/present,
    greedy search in C++). ``generate_next_token`` runs the model on the last
    token and picks the next; the first call after ``append_tokens`` only picks."""

    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(folder))
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)

    def _run(self, prompt: list[int], n: int) -> Clock:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + n, min_length=len(prompt) + n,
                                  do_sample=False)
        generator = og.Generator(self.model, params)
        clock = Clock()
        clock.start()
        generator.append_tokens(prompt)
        while len(clock.times) < n and not generator.is_done():
            generator.generate_next_token()
            clock.tick()
        return clock

    def decode(self, prompt: list[int], n: int) -> float:
        clock = self._run(prompt, n)
        return rates(clock.times, clock.t0, len(prompt))[0]

    def prefill(self, prompt: list[int]) -> float:
        clock = self._run(prompt, 1)
        return rates(clock.times, clock.t0, len(prompt))[1]


class HfTransformers(Transformers):
    """``transformers`` fp32: batch 1 through ``generate`` with a streamer that
    timestamps tokens, and bench_vs_transformers' padded batch for 16 requests."""

    def _run(self, prompt: list[int], n: int) -> Clock:
        from transformers.generation.streamers import BaseStreamer

        clock = Clock()

        class Stamp(BaseStreamer):  # type: ignore[misc]
            calls = 0

            def put(self, value: Any) -> None:
                self.calls += 1
                if self.calls > 1:  # the first call hands over the prompt
                    clock.tick()

            def end(self) -> None:
                pass

        torch = self.torch
        ids = torch.tensor([prompt], dtype=torch.long)
        with torch.inference_mode():
            clock.start()
            self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                pad_token_id=self.pad, max_new_tokens=n, min_new_tokens=n,
                                streamer=Stamp())
        return clock

    def decode(self, prompt: list[int], n: int) -> float:
        clock = self._run(prompt, n)
        return rates(clock.times, clock.t0, len(prompt))[0]

    def prefill(self, prompt: list[int]) -> float:
        clock = self._run(prompt, 1)
        return rates(clock.times, clock.t0, len(prompt))[1]

    def concurrent(self, prompts: list[list[int]], output_len: int) -> float:
        return float(self.run(prompts, output_len)["output_tokens_per_s"])


def timed(label: str, build: Any) -> Any:
    start = time.perf_counter()
    engine = build()
    log(f"  {label}: loaded in {time.perf_counter() - start:.1f} s")
    return engine
