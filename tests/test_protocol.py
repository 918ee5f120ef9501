"""Protocol records, the trait's defaults, and the ExecutorRegistry."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from ferrum_core.errors import InvalidInputError, RegistryError, UnsupportedError
from ferrum_core.llm import LlmExecutor, LlmKvCacheHandle
from ferrum_core.protocol import (
    DecodeInput,
    DecodeOutput,
    ExecutorCapabilities,
    ExecutorConfig,
    ExecutorState,
    ExecutorStatus,
    MemoryRequirements,
    ModelExecutor,
    PrefillInput,
    PrefillOutput,
    UnifiedBatch,
)
from ferrum_core.registry import ExecutorRegistry
from ferrum_core.tensor import HostTensor, as_tensor_ref
from ferrum_core.types import DataType, ModelInfo
from tests.doubles import ToyLlm


class MinimalExecutor(ModelExecutor):
    """Implements only the abstract methods: everything else is the trait default."""

    def __init__(self) -> None:
        self.decodes = 0

    def info(self) -> ModelInfo:
        return ModelInfo(model_id="m", model_type="t", hidden_size=1, num_layers=1, num_heads=1,
                         num_kv_heads=1, vocab_size=4, max_sequence_length=8)

    def prefill(self, input: PrefillInput) -> PrefillOutput:
        return PrefillOutput(HostTensor(np.zeros((1, 2, 4), np.float32)), _handle(2))

    def decode(self, input: DecodeInput) -> DecodeOutput:
        self.decodes += 1
        n = input.kv_cache.sequence_length + 1
        return DecodeOutput(HostTensor(np.full((1, 4), n, np.float32)), _handle(n))

    def capabilities(self) -> ExecutorCapabilities:
        raise NotImplementedError

    def status(self) -> ExecutorStatus:
        return ExecutorStatus(state=ExecutorState.READY, is_ready=True, decode_operations=3)


def _handle(n: int) -> LlmKvCacheHandle:
    return LlmKvCacheHandle("c", n, 1, 1, 2)


def _tok(*ids: int) -> HostTensor:
    return HostTensor(np.array([ids], dtype=np.int64))


def test_trait_defaults() -> None:
    ex = MinimalExecutor()
    assert ex.supports_native_unified_decode() is False
    assert ex.kv_capacity() is None
    with pytest.raises(UnsupportedError, match="unified_decode"):
        ex.unified_decode(UnifiedBatch())
    with pytest.raises(UnsupportedError):
        ex.forward(_tok(1))
    with pytest.raises(UnsupportedError):
        ex.new_cache()
    assert ex.cache_metrics_snapshot() is None and ex.lora_metrics_snapshot() is None
    ex.release_cache("anything")  # no-op
    ex.warmup()
    ex.shutdown()
    assert ex.truncate_kv(_handle(5), 3).sequence_length == 3
    outs = ex.batch_decode([DecodeInput(_tok(1), _handle(2)), DecodeInput(_tok(2), _handle(4))])
    assert [o.kv_cache.sequence_length for o in outs] == [3, 5]
    assert len(ex.batch_prefill([PrefillInput(_tok(1, 2))] * 3)) == 3
    ex.decodes = 0
    verify = ex.forward_verify([DecodeInput(_tok(t), _handle(2)) for t in (1, 2, 3)])
    assert ex.decodes == 3
    assert [o.kv_cache.sequence_length for o in verify] == [3, 4, 5]  # handle threaded through
    assert ex.metrics().decode_operations == 3


def test_prefill_input_builders_and_shapes() -> None:
    inp = PrefillInput(_tok(1, 2, 3))
    assert (inp.batch_size, inp.sequence_length) == (1, 3)
    flat = PrefillInput(as_tensor_ref([4, 5]))
    assert (flat.batch_size, flat.sequence_length) == (1, 2)
    built = inp.with_kv_cache(_handle(0)).with_metadata({"k": 1}).with_position_ids(_tok(0, 1, 2))
    built = built.with_attention_mask(_tok(1, 1, 1))
    assert built.kv_cache is not None and built.metadata["k"] == 1
    assert inp.kv_cache is None and dict(inp.metadata) == {}  # builders copy
    with pytest.raises(TypeError):
        built.metadata["k"] = 2  # type: ignore[index]
    dec = DecodeInput(_tok(7), _handle(1)).with_metadata({"a": True})
    assert dec.batch_size == 1 and dec.metadata["a"] is True


def test_last_token_logits() -> None:
    logits = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    out = PrefillOutput(HostTensor(logits), _handle(3))
    np.testing.assert_array_equal(out.last_token_logits().to_numpy(), logits[:, -1, :])
    with pytest.raises(InvalidInputError, match="3-D"):
        PrefillOutput(HostTensor(logits[0]), _handle(3)).last_token_logits()
    with pytest.raises(InvalidInputError, match="empty"):
        PrefillOutput(HostTensor(np.zeros((1, 0, 4))), _handle(0)).last_token_logits()


def test_memory_requirements_total() -> None:
    req = MemoryRequirements(parameter_memory=1000, activation_memory_per_token=2,
                             kv_cache_memory_per_token=3, overhead_memory=7)
    assert req.calculate_total_memory(batch_size=2, sequence_length=5, num_layers=4) == (
        1000 + 2 * 2 * 5 + 3 * 2 * 5 * 4 + 7
    )


def test_executor_config_validation_and_json() -> None:
    cfg = ExecutorConfig(device="CUDA", dtype="bf16")  # type: ignore[arg-type]
    assert cfg.device == "cuda:0" and cfg.dtype == DataType.BF16
    assert ExecutorConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(InvalidInputError):
        ExecutorConfig(device="tpu")
    with pytest.raises(ValueError):
        ExecutorConfig(max_batch_size=0)


def test_tensor_ref_protocol() -> None:
    t = as_tensor_ref(np.ones((2, 3), np.float32))
    assert t.shape == (2, 3) and t.dtype == "float32" and t.device == "cpu"
    assert np.from_dlpack(t).shape == (2, 3)


def test_executor_registry_contract() -> None:
    reg = ExecutorRegistry()
    target, draft = LlmExecutor(ToyLlm()), LlmExecutor(ToyLlm())
    reg.register("target", target)
    reg.register("draft", draft)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("target", draft)
    with pytest.raises(RegistryError):
        reg.register("x", object())  # type: ignore[arg-type]
    assert reg.list_names() == ["draft", "target"]
    assert reg.get("target") is target and reg.get("nope") is None
    metrics = reg.get_metrics("target")
    assert metrics is not None and metrics.total_operations == 0
    assert reg.get_metrics("nope") is None
    assert reg.remove("draft") is draft and reg.remove("draft") is None
    with pytest.raises(RegistryError):
        reg.require("draft")
    assert "target" in reg and len(reg) == 1


def test_executor_registry_is_thread_safe() -> None:
    reg = ExecutorRegistry()
    errors: list[str] = []

    def add(names: Sequence[str]) -> None:
        for name in names:
            try:
                reg.register(name, MinimalExecutor())
            except RegistryError:
                errors.append(name)

    threads = [threading.Thread(target=add, args=([f"e{i}" for i in range(200)],))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reg) == 200 and len(errors) == 600


def test_token_ids_round_trip() -> None:
    from ferrum_core.tensor import tensor_to_tokens, token_ids

    t = token_ids([3, 1, 4])
    assert t.shape == (1, 3) and t.dtype == "int64"
    assert tensor_to_tokens(t) == [3, 1, 4]
