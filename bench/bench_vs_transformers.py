"""Ferrum's engine vs `transformers`' batched `generate`, side by side in one run.

Both load the same converted default model directory (SmolLM2-135M-Instruct,
converted from the embedded GGUF) in fp32 on the CPU, get the same random
token prompts, and generate exactly ``--output-len`` tokens each (EOS ignored,
greedy). transformers runs one padded batch of all requests; Ferrum receives
every request at once and batches them continuously. Both models load once;
then ``--repeat`` runs alternate between them, each run with fresh prompts,
and the median of the per-run ratios is the figure (a shared 2-core machine
moves either side by 10-15 % from run to run).

    .venv/bin/python bench/bench_vs_transformers.py            # 16 x (32 -> 128), 3 runs
    .venv/bin/python bench/bench_vs_transformers.py --json

Not part of the test run (timings depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any


class Transformers:
    """The peer: one padded batch of all requests through ``model.generate``."""

    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        self.pad = eos[0] if isinstance(eos, list) else eos

    def run(self, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
        torch = self.torch
        input_ids = torch.tensor(prompts, dtype=torch.long)  # equal lengths: no padding needed
        mask = torch.ones_like(input_ids)
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model.generate(input_ids, attention_mask=mask, do_sample=False,
                                      pad_token_id=self.pad, max_new_tokens=output_len,
                                      min_new_tokens=output_len)  # fmt: skip
            wall = time.perf_counter() - start
        generated = int((out.shape[1] - input_ids.shape[1]) * out.shape[0])
        return {
            "wall_s": wall,
            "generated_tokens": generated,
            "output_tokens_per_s": generated / wall,
            "total_tokens_per_s": (generated + input_ids.numel()) / wall,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved runs, each with fresh prompts (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from ferrum_core.engine import LLM
    from ferrum_core.engine.benchmark import random_prompts, run_benchmark
    from ferrum_core.models import Tokenizer, resolve_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = str(resolve_model_dir(None))
    vocab = Tokenizer.from_dir(model_dir).vocab_size
    log = sys.stderr
    print(f"model {model_dir}, {args.num_requests} x ({args.prompt_len} -> {args.output_len}),"
          f" torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}", file=log)
    peer = Transformers(model_dir)
    llm = LLM(model_dir, args.backend, dtype="fp32", max_num_seqs=max(args.num_requests, 1))
    warm = random_prompts(vocab, args.num_requests, 8, seed=-1)
    peer.run(warm, 4)  # both warmed up on other prompts
    run_benchmark(llm, prompts=warm, output_len=4)
    runs = []
    for i in range(args.repeat):
        # Fresh prompts every run: a repeated prompt would hit Ferrum's prefix cache.
        prompts = random_prompts(vocab, args.num_requests, args.prompt_len, args.seed + i)
        theirs = peer.run(prompts, args.output_len)
        ours = run_benchmark(llm, prompts=prompts, output_len=args.output_len).model_dump()
        ratio = ours["output_tokens_per_s"] / theirs["output_tokens_per_s"]
        runs.append({"transformers": theirs, "ferrum": ours, "ratio": ratio})
        print(f"run {i + 1}: transformers {theirs['output_tokens_per_s']:.1f}, ferrum"
              f" {ours['output_tokens_per_s']:.1f} output tok/s, ratio {ratio:.2f}x", file=log)
    llm.close()
    median = statistics.median(run["ratio"] for run in runs)
    if args.json:
        print(json.dumps({"runs": runs, "median_ratio_output_tokens_per_s": median,
                          "torch_threads": torch.get_num_threads(),
                          "torch_version": torch.__version__}, indent=2))  # fmt: skip
        return
    print(f"{'run':<5}{'':14}{'wall s':>10}{'output tok/s':>15}{'total tok/s':>14}{'ratio':>8}")
    for i, run in enumerate(runs, start=1):
        for name, row in (("transformers", run["transformers"]),
                          (f"ferrum/{args.backend}", run["ferrum"])):  # fmt: skip
            ratio = f"{run['ratio']:.2f}x" if name != "transformers" else ""
            print(f"{i:<5}{name:14}{row['wall_s']:>10.2f}{row['output_tokens_per_s']:>15.1f}"
                  f"{row['total_tokens_per_s']:>14.1f}{ratio:>8}")
    print(f"median ratio (ferrum / transformers, output tok/s) over {len(runs)} runs:"
          f" {median:.2f}x")


if __name__ == "__main__":
    main()
