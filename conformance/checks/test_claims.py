"""Feature claims (batching, speculative decoding, prefix caching, LoRA) give serial results.

These checks share the ``capabilities.`` id group with ``test_capabilities.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ferrum_core.conformance.fixtures import GoldenExecutor, UnifiedSupport, require_claim
from ferrum_core.conformance.harness import Driver, ids, logits_rows, prompt, snapshot
from ferrum_core.conformance.oracle import assert_close, golden_lora

from ferrum_core.protocol import DecodeInput, KvCacheHandle, ModelExecutor
from ferrum_core.types import DataType

GROUP = "capabilities"


def test_continuous_batching(driver: Driver, vocab: int, tol_dtype: DataType,
                             unified_support: UnifiedSupport, has_new_cache: bool) -> None:
    """Sequences join and leave between unified steps; each one matches its serial run."""
    require_claim(driver.executor.capabilities(), "supports_continuous_batching")
    if not unified_support.supported:
        pytest.fail("continuous batching is claimed but unified_decode is unsupported")
    assert has_new_cache, "continuous batching is claimed but new_cache() is unsupported"
    prompts = [prompt(1400 + i, 3 + 2 * i, vocab) for i in range(4)]
    tokens = [prompt(1410 + i, 6, vocab) for i in range(4)]
    schedule = [  # step -> sequences in the batch (0 and 1 start, 2 and 3 join, 0 leaves)
        [0, 1], [0, 1, 2], [1, 2, 3], [1, 2, 3], [2, 3],
    ]
    handles: dict[int, KvCacheHandle] = {}
    got: dict[int, list[np.ndarray | None]] = {i: [] for i in range(4)}
    for members in schedule:
        items: list[tuple[KvCacheHandle, list[int], bool]] = []
        for i in members:
            if i not in handles:
                handles[i] = driver.new_cache()
                items.append((handles[i], prompts[i], True))
            else:
                items.append((handles[i], [tokens[i][len(got[i]) - 1]], True))
        rows = driver.unified(items)
        for (h, q, _), i, row in zip(items, members, rows, strict=True):
            got[i].append(row)
            handles[i] = h.with_sequence_length(h.sequence_length + len(q))
        if members == [1, 2, 3] and 0 in handles:
            driver.release(handles.pop(0))
    for i in range(4):
        want = driver.run(prompts[i], tokens[i][: len(got[i]) - 1])
        for step, (g, w) in enumerate(zip(got[i], want, strict=True)):
            assert_close(g, w, tol_dtype, f"sequence {i} step {step}")


def test_dynamic_batching(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    """``batch_decode`` takes a different set and size of sequences on every call."""
    require_claim(driver.executor.capabilities(), "supports_dynamic_batching")
    prompts = [prompt(1500 + i, 4 + i, vocab) for i in range(3)]
    handles = [driver.prefill(p)[1] for p in prompts]
    fed: list[list[int]] = [[], [], []]
    got: list[list[np.ndarray]] = [[], [], []]
    for step, members in enumerate([[0], [0, 1, 2], [2, 1], [1]]):
        inputs = [DecodeInput(ids([(7 * step + i) % vocab]), handles[i]) for i in members]
        for i, out in zip(members, driver.executor.batch_decode(inputs), strict=True):
            handles[i] = driver.track(out.kv_cache)
            fed[i].append((7 * step + i) % vocab)
            got[i].append(logits_rows(out.logits)[0])
    for i in range(3):
        want = driver.run(prompts[i], fed[i])[1:]
        for step, (g, w) in enumerate(zip(got[i], want, strict=True)):
            assert_close(g, w, tol_dtype, f"sequence {i} decode {step}")


def test_speculative_decoding(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    """One speculative step on the executor: verify a draft, keep a prefix, continue."""
    executor = driver.executor
    require_claim(executor.capabilities(), "supports_speculative_decoding")
    tokens, draft = prompt(1600, 8, vocab), prompt(1601, 4, vocab)
    correction = prompt(1602, 1, vocab)[0]
    _, handle = driver.prefill(tokens)
    outs = executor.forward_verify([DecodeInput(ids([t]), handle) for t in draft])
    for out in outs:
        driver.track(out.kv_cache)
    accepted = 2  # keep two draft tokens, reject the rest, then feed the correction
    handle = executor.truncate_kv(outs[-1].kv_cache, len(tokens) + accepted)
    row, _ = driver.decode(correction, handle)
    want = driver.run(tokens, [*draft[:accepted], correction])
    for i in range(accepted):
        assert_close(logits_rows(outs[i].logits)[0], want[i + 1], tol_dtype, f"verify row {i}")
    assert_close(row, want[-1], tol_dtype, "decode after rejecting the draft's tail")


ENGINE_OPTIONS = ("threads", "enable_prefix_caching")  # the executor options LLM(...) takes


def test_speculative_engine(
    executor: ModelExecutor, backend_name: str, model_dir: Path, default_dtype: DataType,
    vocab: int, run_options: dict[str, Any],
) -> None:
    """End to end: the engine's speculative decoding (draft = target) gives plain greedy output."""
    require_claim(executor.capabilities(), "supports_speculative_decoding")
    try:
        from ferrum_core.engine import LLM, SamplingParams
    except ImportError as exc:
        pytest.skip(f"the engine's speculative decoding is not available yet: {exc}")
    engine: dict[str, Any] = {key: run_options[key] for key in ENGINE_OPTIONS
                              if key in run_options}
    engine["executor_options"] = {k: v for k, v in run_options.items() if k not in engine}
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [{"prompt_token_ids": prompt(1800 + i, 5 + 4 * i, vocab)} for i in range(2)]
    with LLM(str(model_dir), backend=backend_name, dtype=default_dtype, **engine) as plain:
        want = [o.outputs[0].token_ids for o in plain.generate(prompts, params, use_tqdm=False)]
    with LLM(str(model_dir), backend=backend_name, dtype=default_dtype, **engine,
             speculative_model=str(model_dir), num_speculative_tokens=3) as spec:
        outs = spec.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == want, "speculative output differs"
    proposed = sum(o.metrics.spec_proposed_tokens for o in outs)
    accepted = sum(o.metrics.spec_accepted_tokens for o in outs)
    assert proposed > 0, "the engine proposed no draft tokens"
    assert accepted > 0, "a draft identical to the target had no token accepted"


def test_prefix_caching(driver: Driver, vocab: int, tol_dtype: DataType) -> None:
    """A second sequence sharing a prompt prefix hits the prefix cache and gets the same logits."""
    executor = driver.executor
    require_claim(executor.capabilities(), "supports_prefix_caching")
    snap = snapshot(executor)
    assert "prefix_cache_hits" in snap and "block_size" in snap, (
        "prefix caching is claimed but the snapshot lacks prefix_cache_hits / block_size"
    )
    shared = prompt(1700, 2 * snap["block_size"] + 3, vocab)
    first, second = shared + prompt(1701, 2, vocab), shared + prompt(1702, 3, vocab)
    want = driver.run(second, [])[0]  # a fresh prompt: computed without any cache hit
    driver.prefill(first)
    hits = snapshot(executor)["prefix_cache_hits"]
    row, _ = driver.prefill(second)
    assert snapshot(executor)["prefix_cache_hits"] > hits, "no prefix-cache hit for a shared prefix"
    assert_close(row, want, tol_dtype, "logits on a cache hit")


def test_lora(executor: ModelExecutor, golden_executor: GoldenExecutor,
              default_dtype: DataType) -> None:
    """A PEFT adapter selected per sequence by metadata; a batch mixes it with the base model."""
    require_claim(executor.capabilities(), "supports_lora")
    adapter, base = golden_lora()
    meta = {"ferrum_lora_adapter": "conformance-golden", "ferrum_lora_path": str(adapter.path)}
    drv = Driver(golden_executor(base.name, default_dtype))
    try:
        row, with_lora = drv.prefill(adapter.prompt_ids, metadata=meta)
        assert_close(row, adapter.prefill_logits[-1], default_dtype, "prefill with the adapter")
        _, without = drv.prefill(base.prompt_ids)
        for step, token in enumerate(adapter.decode_ids):
            outs = drv.executor.batch_decode([
                DecodeInput(ids([token]), with_lora).with_metadata(meta),
                DecodeInput(ids([token]), without),
            ])
            with_lora, without = (drv.track(o.kv_cache) for o in outs)
            assert_close(logits_rows(outs[0].logits)[0], adapter.decode_logits[step],
                         default_dtype, f"decode step {step} with the adapter")
            assert_close(logits_rows(outs[1].logits)[0], base.decode_logits[step],
                         default_dtype, f"decode step {step} of the base model, same batch")
    finally:
        drv.close()
