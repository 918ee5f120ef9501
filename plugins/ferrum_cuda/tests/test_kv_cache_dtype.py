"""``kv_cache_dtype``: the paged KV pool in another dtype than the compute dtype.

The pool stores (and the block budget counts) the KV dtype; every path that
reads K/V sees the stored values, so the decode workspace (a cache of the
pool) agrees with gathering from the pool; the fused fp32 attention steps
aside for a non-fp32 pool, and says so; the conformance suite passes at the
tolerance stated for the KV dtype.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from ferrum_core.conformance.options import KV_CACHE_TOLERANCE
from ferrum_cuda.model import TorchDecoderLLM
from torch_tiny import TinyModel, prompt

from ferrum_core.llm.decoder import DecodeItem, UnifiedItem
from ferrum_core.types import DataType

SEQS = {"a": 9, "b": 4, "c": 13}


def _run(llm: TorchDecoderLLM, steps: int = 4) -> dict[str, list[np.ndarray]]:
    """Prefill every sequence, then ``steps`` batched decodes; the logits of each."""
    seqs = {c: prompt(n, seed=40 + i) for i, (c, n) in enumerate(SEQS.items())}
    out = {c: [row] for c, row in zip(seqs, llm.unified_forward(
        [UnifiedItem(c, t, 0, True) for c, t in seqs.items()]), strict=True)}  # fmt: skip
    for step in range(steps):
        items = [DecodeItem(c, 30 + step, len(seqs[c])) for c in seqs]
        for item, row in zip(items, llm.decode_batch(items, False), strict=True):
            seqs[item.cache_id].append(30 + step)
            out[item.cache_id].append(row)
    return out


def _oracle(model: TinyModel, steps: int = 4) -> dict[str, list[np.ndarray]]:
    out = {}
    for i, (c, n) in enumerate(SEQS.items()):
        tokens = [*prompt(n, seed=40 + i), *range(30, 30 + steps)]
        logits = model.logits(tokens).numpy()
        out[c] = [logits[n - 1 + k] for k in range(steps + 1)]
    return out


def _max_rel(got: dict[str, list[np.ndarray]], want: dict[str, list[np.ndarray]]) -> float:
    worst = 0.0
    for c in want:
        for g, w in zip(got[c], want[c], strict=True):
            worst = max(worst, float(np.abs(g - w).max()) / max(1.0, float(np.abs(w).max())))
    return worst


@pytest.mark.parametrize("family", ["llama_gqa", "mistral_window"])
def test_bf16_kv_with_fp32_compute(family: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(family)
    full = model.build()
    half = model.build(kv_cache_dtype=DataType.BF16)
    assert half.pool.data.dtype == torch.bfloat16
    assert 2 * half.pool.bytes_per_block() == full.pool.bytes_per_block()
    snapshot = half.cache_metrics_snapshot() or {}
    assert snapshot["kv_cache_dtype"] == "bf16"
    assert snapshot["kv_bytes_per_block"] == half.pool.bytes_per_block()
    assert half.transformer.fused_step is None  # the fused step reads an fp32 pool
    if half.kernels is not None:
        assert snapshot["cpu_kernels"]["attention"].startswith("torch (kv_cache_dtype bf16")
    got, want = _run(half), _oracle(model)
    err = _max_rel(got, want)
    assert err <= KV_CACHE_TOLERANCE["bf16"], err
    assert err > 1e-5, "bf16 storage should round something: is the pool really bf16?"
    assert _max_rel(_run(full), want) <= 2e-3


def test_workspace_holds_what_the_pool_holds(tiny: Callable[[str], TinyModel]) -> None:
    """A decode that appends to the workspace sees the rounded K/V a gather would see."""
    model = tiny("llama_gqa")
    with_ws = model.build(kv_cache_dtype=DataType.BF16)
    without = model.build(kv_cache_dtype=DataType.BF16, workspace_bytes=0)
    got, want = _run(with_ws, steps=5), _run(without, steps=5)
    assert (with_ws.cache_metrics_snapshot() or {})["decode_workspace_reuses"] >= 4
    assert _max_rel(got, want) < 1e-5


def test_fp16_kv_and_fp32_kv_under_bf16_compute(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("llama_gqa")
    want = _oracle(model, steps=2)
    fp16_kv = model.build(kv_cache_dtype=DataType.FP16)
    assert fp16_kv.pool.data.dtype == torch.float16
    assert _max_rel(_run(fp16_kv, steps=2), want) <= KV_CACHE_TOLERANCE["fp16"]
    wide = model.build(DataType.BF16, kv_cache_dtype=DataType.FP32)
    assert wide.pool.data.dtype == torch.float32 and wide.kernels is None
    assert (wide.cache_metrics_snapshot() or {})["kv_cache_dtype"] == "fp32"
    assert _max_rel(_run(wide, steps=2), want) <= 6e-2  # the bf16 compute tolerance


def test_auto_is_the_compute_dtype_and_halves_the_pool_budget(
    tiny: Callable[[str], TinyModel],
) -> None:
    from ferrum_core.backends import create_executor
    from ferrum_core.protocol import ExecutorConfig

    model = tiny("llama_gqa")
    sizes = {}
    for kv in ("auto", "bf16"):
        config = ExecutorConfig(model_path=str(model.path), dtype=DataType.FP32,
                                executor_options={"kv_cache_dtype": kv})  # fmt: skip
        executor = create_executor(config, backend="torch")
        try:
            snapshot = executor.cache_metrics_snapshot()
            sizes[kv] = (snapshot["kv_bytes_per_block"], snapshot["kv_cache_dtype"])
        finally:
            executor.shutdown()
    assert sizes["auto"][1] == "fp32" and sizes["bf16"][1] == "bf16"
    assert sizes["auto"][0] == 2 * sizes["bf16"][0]


def test_conformance_suite_passes_with_a_bf16_kv_cache() -> None:
    from ferrum_core.cli.main import cli

    result = CliRunner().invoke(
        cli, ["conformance", "torch", "--option", "kv_cache_dtype=bf16", "--json"]
    )
    report = json.loads(result.stdout)
    failed = {c["id"]: c["reason"] for c in report["checks"] if c["outcome"] == "failed"}
    assert not failed, failed
    assert result.exit_code == 0, result.stderr[-2000:]
    assert report["executor_options"] == {"kv_cache_dtype": "bf16"}
    assert report["tolerance"] == KV_CACHE_TOLERANCE["bf16"]
    assert report["summary"]["passed"] >= 60


def test_cli_kv_cache_dtype_reaches_the_pool(tiny: Callable[[str], TinyModel]) -> None:
    """``ferrum generate --kv-cache-dtype``: bf16 storage moves the logprobs, fp32 does not."""
    from ferrum_core.cli.main import cli

    model = tiny("llama_gqa")
    runs = {}
    for kv in (None, "fp32", "bf16"):
        args = ["generate", "w5 w9 w17 w3 w40 w41 w7", "--raw", "-m", str(model.path),
                "-b", "torch", "--dtype", "fp32", "--max-tokens", "3", "--ignore-eos",
                "--logprobs", "2", "--json"]  # fmt: skip
        result = CliRunner().invoke(cli, args + (["--kv-cache-dtype", kv] if kv else []))
        assert result.exit_code == 0, result.stderr[-2000:]
        runs[kv] = json.loads(result.stdout)["logprobs"]
    assert runs["fp32"] == runs[None]
    assert runs["bf16"] != runs[None]
    bad = CliRunner().invoke(cli, ["generate", "x", "--kv-cache-dtype", "int8"])
    assert bad.exit_code == 2 and "int8" in bad.stderr


def test_cuda_graphs_static_path_with_a_bf16_pool(tiny: Callable[[str], TinyModel]) -> None:
    """The `cuda` backend's padded decode (replayed eagerly on the CPU, as in
    test_torch_cuda_graphs_cpu) over a bf16 pool equals the ragged eager path."""
    from ferrum_cuda.cuda_graphs import DecodeGraphs, eager_replay

    model = tiny("llama_gqa")
    # Plain F.linear: prepacked GEMMs pick kernels by row count, and a 1-ulp difference in
    # a K value (3 rows eager, 4 padded) can round to another bf16 value (~1e-4 in logits).
    kw = {"num_blocks": 256, "block_size": 4, "kv_cache_dtype": DataType.BF16, "prepack": False}
    static = model.build(workspace_bytes=0, **kw)
    static._graphs = DecodeGraphs(static.transformer, max_batch_size=16, capturer=eager_replay)
    static.pool.data.fill_(float("nan"))  # a masked key reading unwritten memory would show
    got, want = _run(static), _run(model.build(**kw))
    assert (static.cache_metrics_snapshot() or {})["cuda_graph_replays"] == 4
    # Even plain F.linear may pick another kernel for 4 rows than for 3 on some CPUs (the
    # AMD EPYC runners do): one K value then rounds to the neighbouring bf16 value, ~1e-4 in
    # the logits. A wrong slot, a stale block or a masked key read as NaN is far above 1e-3.
    assert _max_rel(got, want) < 1e-3
