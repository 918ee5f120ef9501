"""Time the torch backend's decode step directly (no engine): 16 x (32 -> N) greedy.

    .venv/bin/python bench/profile_decode.py                 # ms per decode step
    .venv/bin/python bench/profile_decode.py --profile       # + torch profiler table

Not part of the test run (timings depend on the machine).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--series", action="store_true")
    args = parser.parse_args()

    import torch
    from ferrum_cuda.model import TorchDecoderLLM

    from ferrum_core.models import load_model, rope_inv_freq
    from ferrum_core.types import DataType

    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    start = time.perf_counter()
    llm = TorchDecoderLLM.from_source(
        loaded.config, loaded.weights, rope_inv_freq(loaded.config), dtype=DataType.FP32,
        device=torch.device("cpu"), num_blocks=args.batch * 16,
    )  # fmt: skip
    print(f"load {time.perf_counter() - start:.2f} s")
    rng = np.random.default_rng(0)
    vocab = loaded.config.vocab_size
    ids = {f"s{i}": rng.integers(0, vocab, args.prompt_len).tolist() for i in range(args.batch)}
    start = time.perf_counter()
    outs = llm.unified_forward([(k, v, 0, True) for k, v in ids.items()])
    print(f"prefill {args.batch} x {args.prompt_len}: {time.perf_counter() - start:.3f} s")
    tokens = [int(np.argmax(o)) for o in outs if o is not None]
    pos = args.prompt_len
    times = []

    def step() -> None:
        nonlocal tokens, pos
        items = [(k, t, pos) for k, t in zip(ids, tokens, strict=True)]
        t0 = time.perf_counter()
        logits = llm.decode_batch(items)
        times.append(time.perf_counter() - t0)
        tokens = [int(np.argmax(row)) for row in logits]
        pos += 1

    for _ in range(3):
        step()
    times.clear()
    for _ in range(args.steps):
        step()
    ms = np.array(times) * 1e3
    if args.series:
        print(" ".join(f"{t:.0f}" for t in ms))
    slow = int((ms > 2 * ms.min()).sum())  # steps hit by other processes
    print(f"decode step x{args.batch}: median {np.median(ms):.2f} ms, mean {ms.mean():.2f},"
          f" min {ms.min():.2f}, slow {slow}; checksum {sum(tokens)}")  # fmt: skip
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(8):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


if __name__ == "__main__":
    main()
