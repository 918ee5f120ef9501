"""What each engine of bench_cpu.py computes: teacher-forced logits vs fp32 (issue 13).

The speed table of ``bench_cpu.py`` compares engines that do not all compute the
same model: the int4 peers quantise differently. This command feeds one fixed
English text (``TEXT``, through the default model's tokenizer) to every engine,
takes the logits at every position, and compares them with ferrum ``cpu`` fp32
(the GGUF dequantised exactly; equal to ``transformers`` within 1e-4, which the
``transformers fp32`` row shows again):

* KL(reference || engine) in nats per token, averaged over the positions;
* top-1 agreement: how often the engine's greedy token is the reference's;
* max |difference| / max |reference logit|.

Engines as in bench_cpu.py: ferrum ``cpu`` fp32 / int8 / int4 at
``accuracy_level`` 4 (what the speed table runs) and int4 at level 1 (exact),
ferrum ``torch`` fp32, ``transformers`` fp32, llama.cpp on the GGUF itself
(``logits_all``), ONNX Runtime GenAI fp32 and int4 from its own builder (one
token per ``append_tokens``, cached under ``$FERRUM_HOME/bench`` as
bench_cpu.py builds them). A peer that is not installed is reported and skipped.

Run (not part of the test run; peers from the ``bench`` extra, see bench_cpu.py)::

    FERRUM_HOME=... .venv/bin/python bench/quality_cpu.py
    .venv/bin/python bench/quality_cpu.py --engines ferrum-cpu-int4-l4,llama.cpp --json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _peers_common import bench_cache_dir, chosen_engines, log, torch_threads
from ferrum_core.conformance.harness import logits_rows

TEXT = (
    "The history of the Roman Empire spans many centuries. It began when Augustus became "
    "the first emperor, and over time the empire grew to include much of Europe, North "
    "Africa and the Middle East. Trade, roads and law connected its provinces, and Latin "
    "spread as the language of government. In the third century the empire faced civil "
    "wars, plague and pressure on its borders. Diocletian divided the administration, and "
    "Constantine founded a new capital in the east. The western half fell in 476, while "
    "the eastern half, later called the Byzantine Empire, lasted until 1453.\n\n"
    "Water boils at 100 degrees Celsius at sea level. At higher altitudes the air pressure "
    "is lower, so water boils at a lower temperature, which is why cooking pasta in the "
    "mountains takes longer. A pressure cooker works the other way round: it raises the "
    "pressure so that water stays liquid above its usual boiling point."
)
ENGINES = ("ferrum-cpu-fp32", "ferrum-cpu-int8-l4", "ferrum-cpu-int4-l4", "ferrum-cpu-int4-l1",
           "ferrum-torch-fp32", "transformers-fp32", "llama.cpp", "ort-genai-fp32",
           "ort-genai-int4")
REFERENCE = "ferrum-cpu-fp32"
Logits = Callable[[list[int]], np.ndarray]


def ferrum(backend: str, dtype: str, level: int | None, threads: int) -> Logits:
    from ferrum_core.backends import create_executor
    from ferrum_core.plugin import DataType, DecodeInput, ExecutorConfig
    from ferrum_core.tensor import token_ids

    options: dict[str, Any] = {"threads": threads}
    if level is not None:
        options["accuracy_level"] = level
    config = ExecutorConfig(model_path=None, dtype=DataType(dtype), executor_options=options)
    executor = create_executor(config, backend=backend)

    def run(ids: list[int]) -> np.ndarray:
        handle = executor.new_cache()
        try:
            outs = executor.forward_verify([DecodeInput(token_ids([t]), handle) for t in ids])
            return np.concatenate([logits_rows(out.logits) for out in outs])
        finally:
            executor.release_cache(handle.cache_id)
    return run


def transformers_fp32(model_dir: Path) -> Logits:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def run(ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.tensor([ids])).logits[0].float().numpy()
    return run


def llama_cpp(gguf: Path, threads: int) -> Logits:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=1024,
                logits_all=True, verbose=False)

    def run(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    return run


def ort_genai(model_dir: Path, precision: str, cache: Path) -> Logits:
    import onnxruntime_genai as og
    from _peers_cpu import ort_genai_model

    model = og.Model(str(ort_genai_model(model_dir, precision, cache)))

    def run(ids: list[int]) -> np.ndarray:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 1)
        generator = og.Generator(model, params)
        rows = []
        for token in ids:  # one position per call: the output holds the last one's logits
            generator.append_tokens([token])
            rows.append(logits_rows(np.asarray(generator.get_output("logits")))[-1])
        return np.stack(rows)
    return run


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        shifted = x - x.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    lp_ref, lp_got = log_softmax(ref.astype(np.float64)), log_softmax(got.astype(np.float64))
    kl = float((np.exp(lp_ref) * (lp_ref - lp_got)).sum(-1).mean())
    return {"kl_nats_per_token": kl,
            "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "max_rel_err": float(np.abs(got - ref).max() / np.abs(ref).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated subset of {', '.join(ENGINES)} (the reference, "
                             f"{REFERENCE}, always runs)")
    parser.add_argument("--cache-dir", default=None, help="default: $FERRUM_HOME/bench")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    chosen = chosen_engines(parser, args.engines, ENGINES)
    torch_threads(args.threads)
    from ferrum_core.models import Tokenizer
    from ferrum_core.models.default_model import default_gguf_path, default_model_dir

    gguf, model_dir, t = default_gguf_path(), default_model_dir(), args.threads
    cache = bench_cache_dir(args.cache_dir)
    ids = Tokenizer.from_dir(str(model_dir)).encode(TEXT)
    builders: dict[str, Callable[[], Logits]] = {
        "ferrum-cpu-fp32": lambda: ferrum("cpu", "fp32", None, t),
        "ferrum-cpu-int8-l4": lambda: ferrum("cpu", "int8", 4, t),
        "ferrum-cpu-int4-l4": lambda: ferrum("cpu", "int4", 4, t),
        "ferrum-cpu-int4-l1": lambda: ferrum("cpu", "int4", 1, t),
        "ferrum-torch-fp32": lambda: ferrum("torch", "fp32", None, t),
        "transformers-fp32": lambda: transformers_fp32(model_dir),
        "llama.cpp": lambda: llama_cpp(gguf, t),
        "ort-genai-fp32": lambda: ort_genai(model_dir, "fp32", cache),
        "ort-genai-int4": lambda: ort_genai(model_dir, "int4", cache),
    }
    log(f"{len(ids)} tokens of TEXT, reference {REFERENCE}")
    ref = builders[REFERENCE]()(ids)
    results: dict[str, Any] = {}
    for name in chosen:
        if name == REFERENCE:
            results[name] = compare(ref, ref)
            continue
        try:
            run = builders[name]()
        except ImportError as exc:
            results[name] = {"skipped": f"not installed ({exc.name or exc})"}
            log(f"{name}: skipped, not installed")
            continue
        results[name] = compare(ref, run(ids))
        log(f"{name}: {results[name]}")
    if args.json:
        print(json.dumps({"tokens": len(ids), "reference": REFERENCE, "engines": results},
                         indent=2))
        return
    print(f"teacher-forced logits over {len(ids)} tokens vs {REFERENCE}")
    print(f"{'engine':<22} {'KL nats/token':>14} {'top-1 agree':>12} {'max rel err':>12}")
    print("-" * 63)
    for name, row in results.items():
        if "skipped" in row:
            print(f"{name:<22} {row['skipped']}")
        else:
            print(f"{name:<22} {row['kl_nats_per_token']:>14.5f} {row['top1_agreement']:>12.3f} "
                  f"{row['max_rel_err']:>12.4f}")


if __name__ == "__main__":
    main()
