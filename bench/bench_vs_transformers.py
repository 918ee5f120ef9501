"""Ferrum's engine vs `transformers`' batched `generate`, side by side in one run.

Both load the same converted default model directory (SmolLM2-135M-Instruct,
converted from the embedded GGUF) in fp32 on the CPU, get the same random
token prompts, and generate exactly ``--output-len`` tokens each (EOS ignored,
greedy). transformers runs one padded batch of all requests; Ferrum receives
every request at once and batches them continuously.

    .venv/bin/python bench/bench_vs_transformers.py            # 16 x (32 -> 128)
    .venv/bin/python bench/bench_vs_transformers.py --json

Not part of the test run (timings depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def run_transformers(model_dir: str, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    input_ids = torch.tensor(prompts, dtype=torch.long)  # equal lengths: no padding needed
    mask = torch.ones_like(input_ids)
    eos = model.generation_config.eos_token_id
    pad = eos[0] if isinstance(eos, list) else eos
    kwargs = dict(do_sample=False, pad_token_id=pad, attention_mask=mask)
    with torch.inference_mode():
        model.generate(input_ids[:, :8], max_new_tokens=4, min_new_tokens=4,
                       **{**kwargs, "attention_mask": mask[:, :8]})  # warm-up
        start = time.perf_counter()
        out = model.generate(input_ids, max_new_tokens=output_len, min_new_tokens=output_len,
                             **kwargs)
        wall = time.perf_counter() - start
    generated = int((out.shape[1] - input_ids.shape[1]) * out.shape[0])
    return {
        "wall_s": wall,
        "generated_tokens": generated,
        "output_tokens_per_s": generated / wall,
        "total_tokens_per_s": (generated + input_ids.numel()) / wall,
    }


def run_ferrum(model_dir: str, prompts: list[list[int]], output_len: int,
               backend: str) -> dict[str, Any]:
    from ferrum_core.engine import LLM
    from ferrum_core.engine.benchmark import run_benchmark

    llm = LLM(model_dir, backend, dtype="fp32", max_num_seqs=max(len(prompts), 1))
    report = run_benchmark(llm, prompts=prompts, output_len=output_len)
    llm.close()
    return report.model_dump()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from ferrum_core.engine.benchmark import random_prompts
    from ferrum_core.models import resolve_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = str(resolve_model_dir(None))
    from ferrum_core.models import Tokenizer

    vocab = Tokenizer.from_dir(model_dir).vocab_size
    prompts = random_prompts(vocab, args.num_requests, args.prompt_len, args.seed)
    print(f"model {model_dir}, {args.num_requests} x ({args.prompt_len} -> {args.output_len}),"
          f" torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}", file=sys.stderr)
    peer = run_transformers(model_dir, prompts, args.output_len)
    print(f"transformers: {peer['output_tokens_per_s']:.1f} output tok/s", file=sys.stderr)
    ours = run_ferrum(model_dir, prompts, args.output_len, args.backend)
    ratio = ours["output_tokens_per_s"] / peer["output_tokens_per_s"]
    result = {"transformers": peer, "ferrum": ours, "ratio_output_tokens_per_s": ratio,
              "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'':14}{'wall s':>10}{'output tok/s':>15}{'total tok/s':>14}")
    for name, row in (("transformers", peer), (f"ferrum/{args.backend}", ours)):
        print(f"{name:14}{row['wall_s']:>10.2f}{row['output_tokens_per_s']:>15.1f}"
              f"{row['total_tokens_per_s']:>14.1f}")
    print(f"ratio (ferrum / transformers, output tok/s): {ratio:.2f}x")


if __name__ == "__main__":
    main()
