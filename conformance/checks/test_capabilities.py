"""Every declared capability is delivered, and static and instance declarations agree."""

from __future__ import annotations

import numpy as np
import pytest
from ferrum_core.conformance.fixtures import GoldenExecutor, UnifiedSupport
from ferrum_core.conformance.harness import Driver, ids, logits_rows, prompt
from ferrum_core.conformance.oracle import assert_close, golden_model, numeric_goldens
from ferrum_core.conformance.plugin import requested_dtype

from ferrum_core.errors import CapacityError
from ferrum_core.protocol import (
    DecodeInput,
    ExecutorCapabilities,
    ModelExecutor,
    PrefillInput,
)
from ferrum_core.types import DataType

FLAGS = (
    "supports_dynamic_batching",
    "supports_continuous_batching",
    "supports_speculative_decoding",
    "supports_tensor_parallelism",
    "supports_pipeline_parallelism",
    "supports_native_unified_decode",
    "supports_lora",
    "supports_prefix_caching",
)


def _family(device: str) -> str:
    return device.split(":", 1)[0]


def test_static_declared(static_caps: ExecutorCapabilities | None) -> None:
    assert static_caps is not None, "the backend registered no static capabilities"


def test_static_instance_agree(
    static_caps: ExecutorCapabilities | None, executor: ModelExecutor
) -> None:
    """An instance never claims more than its backend declares."""
    if static_caps is None:
        pytest.skip("no static capabilities to compare with (see capabilities.static_declared)")
    inst = executor.capabilities()
    problems = [f"{flag} is claimed by the instance only" for flag in FLAGS
                if getattr(inst, flag) and not getattr(static_caps, flag)]
    if inst.max_batch_size > static_caps.max_batch_size:
        problems.append(
            f"max_batch_size {inst.max_batch_size} > static {static_caps.max_batch_size}"
        )
    if inst.max_sequence_length > static_caps.max_sequence_length:
        problems.append(f"max_sequence_length {inst.max_sequence_length} > static "
                        f"{static_caps.max_sequence_length}")
    extra_dtypes = set(inst.supported_dtypes) - set(static_caps.supported_dtypes)
    if extra_dtypes:
        problems.append(f"dtypes {sorted(d.value for d in extra_dtypes)} are instance-only")
    extra_attn = set(inst.attention_mechanisms) - set(static_caps.attention_mechanisms)
    if extra_attn:
        problems.append(f"attention {sorted(a.value for a in extra_attn)} is instance-only")
    static_types = static_caps.supported_model_types
    if static_types is not None:
        loaded = executor.info().model_type
        if loaded not in static_types:
            problems.append(f"model type {loaded!r} runs although the backend declares only "
                            f"{sorted(static_types)}")
        extra_types = set(inst.supported_model_types or ()) - set(static_types)
        if inst.supported_model_types is None or extra_types:
            problems.append(f"model types {inst.supported_model_types} are instance-only")
    static_devices = {_family(d) for d in static_caps.supported_devices}
    extra_dev = [d for d in inst.supported_devices if _family(d) not in static_devices]
    if extra_dev:
        problems.append(f"devices {extra_dev} are instance-only")
    assert not problems, "; ".join(problems)


def test_device(executor: ModelExecutor) -> None:
    device = executor.info().device
    declared = executor.capabilities().supported_devices
    assert device in declared or _family(device) in {_family(d) for d in declared}, (
        f"the executor runs on {device} but declares {list(declared)}"
    )


def test_max_batch_size(driver: Driver, vocab: int, tol_dtype: DataType,
                        unified_support: UnifiedSupport) -> None:
    """A batch of exactly ``max_batch_size`` sequences prefills, decodes and matches serial."""
    n = driver.executor.capabilities().max_batch_size
    prompts = [prompt(1200 + i, 3 + i % 4, vocab) for i in range(n)]
    outs = driver.executor.batch_prefill([PrefillInput(ids(p)) for p in prompts])
    handles = [driver.track(o.kv_cache) for o in outs]
    token = 5 % vocab
    decoded = driver.executor.batch_decode([DecodeInput(ids([token]), h) for h in handles])
    assert len(decoded) == n
    handles = [driver.track(o.kv_cache) for o in decoded]
    rows = [logits_rows(o.logits)[0] for o in decoded]
    if unified_support.supported:
        unified = driver.unified([(h, [token], True) for h in handles])
        assert len(unified) == n
    for i in sorted({0, n // 2, n - 1}):
        want = driver.run(prompts[i], [token, token])
        assert_close(rows[i], want[1], tol_dtype, f"batch_decode item {i} of {n}")
        if unified_support.supported:
            assert_close(unified[i], want[2], tol_dtype, f"unified_decode item {i} of {n}")


def test_max_sequence_length(driver: Driver, vocab: int) -> None:
    """A sequence reaches the declared maximum length; one more token is a CapacityError."""
    executor = driver.executor
    limit = executor.capabilities().max_sequence_length
    capacity = executor.kv_capacity()
    if capacity is not None:
        limit = min(limit, capacity)
    _, handle = driver.prefill(prompt(1300, limit - 1, vocab))
    row, handle = driver.decode(1 % vocab, handle)
    assert handle.sequence_length == limit
    assert np.all(np.isfinite(row)), "non-finite logits at the last position"
    with pytest.raises(CapacityError):
        driver.decode(2 % vocab, handle)


@pytest.mark.parametrize("dtype", [d.value for d in DataType])
def test_dtype(dtype: str, static_caps: ExecutorCapabilities | None, executor: ModelExecutor,
               golden_executor: GoldenExecutor, request: pytest.FixtureRequest) -> None:
    """A declared dtype loads every golden model of that dtype and meets its tolerance
    (int8 / int4: the GGUF goldens, compared with their weights dequantised)."""
    wanted = DataType(dtype)
    only = requested_dtype(request.config)
    if only is not None and only != wanted:
        pytest.skip(f"the run is limited to --dtype {only.value}")
    declared = set(executor.capabilities().supported_dtypes)
    if static_caps is not None:
        declared |= set(static_caps.supported_dtypes)
    if wanted not in declared:
        pytest.skip(f"{dtype} is not declared")
    names = numeric_goldens(wanted)
    if not names:
        pytest.skip(f"no golden model for {dtype}")
    skipped: list[str] = []
    for name in names:
        golden = golden_model(name)
        try:
            target = golden_executor(name, wanted)
        except pytest.skip.Exception as exc:  # this golden only; the others still count
            skipped.append(str(exc.msg))
            continue
        assert target.info().dtype == wanted, f"asked for {dtype}, runs {target.info().dtype}"
        drv = Driver(target)
        try:
            row, handle = drv.prefill(golden.prompt_ids)
            assert_close(row, golden.prefill_logits[-1], wanted, f"{name} prefill")
            row, _ = drv.decode(golden.decode_ids[0], handle)
            assert_close(row, golden.decode_logits[0], wanted, f"{name} decode")
        finally:
            drv.close()
    if len(skipped) == len(names):
        pytest.skip("; ".join(skipped))
