"""The plugin entry point, the probes and the factory (end to end through LlmExecutor)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from ferrum_cuda import plugin, probe
from ferrum_cuda.factory import TorchExecutorFactory, default_num_blocks
from torch_tiny import TinyModel, prompt

from ferrum_core.backends import ProbeResult, get_backend, get_registry
from ferrum_core.errors import BackendUnavailableError, InvalidInputError
from ferrum_core.protocol import (
    DecodeInput,
    ExecutorAttentionConfig,
    ExecutorConfig,
    ExecutorMemoryConfig,
    PrefillInput,
    UnifiedBatch,
    UnifiedBatchItem,
)
from ferrum_core.tensor import HostTensor
from ferrum_core.types import DataType


def test_discovery_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import ferrum_cuda.plugin, ferrum_cuda.factory\n"
        "from ferrum_cuda.probe import probe_cuda, probe_torch\n"
        "probe_cuda(); probe_torch()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("version", "driver", "available", "reason"),
    [
        ("2.13.0+cpu", True, False, "torch 2.13.0+cpu is a CPU-only build"),
        ("2.5.1+cu121", False, False, "no NVIDIA driver found"),
        ("2.5.1+cu121", True, True, "torch 2.5.1+cu121 with an NVIDIA driver"),
        ("2.5.1", True, True, "torch 2.5.1 with an NVIDIA driver"),
        (None, True, False, "torch is not installed"),
    ],
)
def test_cuda_probe(
    monkeypatch: pytest.MonkeyPatch, version: str | None, driver: bool, available: bool, reason: str
) -> None:
    monkeypatch.setattr(probe, "torch_version", lambda: version)
    monkeypatch.setattr(probe, "nvidia_driver_present", lambda: driver)
    assert probe.probe_cuda() == ProbeResult(available, reason)


def test_torch_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    assert probe.probe_torch().available
    monkeypatch.setattr(probe, "torch_version", lambda: None)
    assert probe.probe_torch() == ProbeResult(False, "torch is not installed")


def test_plugin_registers_both_backends() -> None:
    seen: dict[str, dict[str, Any]] = {}

    def register(name: str, **kwargs: Any) -> None:
        seen[name] = kwargs

    assert plugin.FERRUM_API_VERSION == 1
    plugin.ferrum_register_backends(register)
    assert {n: kw["priority"] for n, kw in seen.items()} == {"cuda": 100, "torch": 10}
    for name, device in (("cuda", "cuda:0"), ("torch", "cpu")):
        caps = seen[name]["capabilities"]
        assert caps.supported_devices == (device,)
        assert caps.supports_native_unified_decode and caps.supports_prefix_caching
        assert caps.supports_lora
        assert isinstance(seen[name]["factory"](), TorchExecutorFactory)


def test_registry_sees_the_backends() -> None:
    torch_backend = get_backend("torch")
    assert torch_backend.priority == 10
    assert torch_backend.distribution == "ferrum-cuda"
    cuda = get_registry().get("cuda")
    assert cuda.descriptor.priority == 100
    if not probe.probe_cuda().available:
        with pytest.raises(BackendUnavailableError, match=re.escape(cuda.reason)):
            get_backend("cuda")


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("cpu", ExecutorConfig(dtype=DataType.INT8)),
        ("cpu", ExecutorConfig(dtype=DataType.INT4)),
        ("cpu", ExecutorConfig(device="cuda:0")),
        ("cpu", ExecutorConfig(device="metal")),
        ("cuda", ExecutorConfig(device="cpu")),
        ("cpu", ExecutorConfig(executor_options={"threads": 0})),
        ("cpu", ExecutorConfig(executor_options={"decode_workspace_mb": -1})),
        ("cpu", ExecutorConfig(executor_options={"prepack_weights": 1})),
        ("cpu", ExecutorConfig(executor_options={"enable_prefix_caching": "yes"})),
    ],
)
def test_validate_config_rejects(kind: Any, config: ExecutorConfig) -> None:
    with pytest.raises(InvalidInputError):
        TorchExecutorFactory(kind).validate_config(config)


def test_validate_config_accepts_defaults() -> None:
    TorchExecutorFactory("cpu").validate_config(ExecutorConfig(dtype=DataType.BF16))
    cuda = TorchExecutorFactory("cuda")
    cuda.validate_config(ExecutorConfig())  # the default device means cuda:0 here
    assert cuda.device_for(ExecutorConfig()) == "cuda:0"
    assert set(cuda.supported_types()) >= {"sequential", "continuous_batch"}
    if not torch.cuda.is_available():  # create_batch_executor builds the executor now
        with pytest.raises(BackendUnavailableError):
            cuda.create_batch_executor(ExecutorConfig())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_factory_fails_clearly_without_a_device(tiny: Callable[[str], TinyModel]) -> None:
    config = ExecutorConfig(model_path=str(tiny("qwen2").path))
    with pytest.raises(BackendUnavailableError, match="sees no CUDA device"):
        TorchExecutorFactory("cuda").create_executor(config)


def test_torch_executor_end_to_end(tiny: Callable[[str], TinyModel]) -> None:
    model = tiny("llama_gqa")
    config = ExecutorConfig(
        model_path=str(model.path),
        max_batch_size=4,
        max_sequence_length=100,
        attention_config=ExecutorAttentionConfig(block_size=4),
        memory_config=ExecutorMemoryConfig(num_kv_blocks=16),
        executor_options={"threads": torch.get_num_threads(), "enable_prefix_caching": True},
    )
    executor = TorchExecutorFactory("cpu").create_executor(config)
    assert executor.supports_native_unified_decode()
    assert executor.kv_capacity() == 64  # 16 blocks of 4 < max_sequence_length
    caps = executor.capabilities()
    assert caps.supports_lora and caps.supports_prefix_caching
    assert caps.supported_devices == ("cpu",)
    assert executor.info().device == "cpu"
    a, b = prompt(9, seed=1), prompt(5, seed=2)
    out = executor.prefill(PrefillInput(HostTensor(np.array([a]))))
    ref = model.logits([*a, 7]).numpy()
    np.testing.assert_allclose(out.logits.to_numpy()[0, -1], ref[-2], atol=1e-4, rtol=0)
    fresh = executor.new_cache()
    logits = executor.unified_decode(
        UnifiedBatch(
            (
                UnifiedBatchItem("llm-cache-0", (7,), out.kv_cache, 9, True),
                UnifiedBatchItem(fresh.cache_id, tuple(b), fresh, 0, True),
            )
        )
    )
    np.testing.assert_allclose(np.asarray(logits[0]), ref[-1], atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        np.asarray(logits[1]), model.logits(b).numpy()[-1], atol=1e-4, rtol=0
    )
    snapshot = executor.cache_metrics_snapshot()
    assert snapshot["kv_blocks_total"] == 16 and snapshot["block_size"] == 4
    assert snapshot["unified_native_calls"] >= 1 and snapshot["unified_fallback_calls"] == 0
    dec = executor.decode(
        DecodeInput(HostTensor(np.array([[3]])), out.kv_cache.with_sequence_length(10))
    )
    assert dec.logits.to_numpy().shape == (1, model.config.vocab_size)
    executor.shutdown()


def test_default_pool_size(tiny: Callable[[str], TinyModel]) -> None:
    cfg = tiny("qwen2").config  # max_model_len 256
    per_block = 2 * cfg.num_hidden_layers * 16 * cfg.num_key_value_heads * cfg.head_dim * 4
    size = default_num_blocks(
        cfg, block_size=16, max_batch_size=8, element_size=4, budget_bytes=10**12
    )
    assert size == 8 * 256 // 16  # 8 sequences of max_model_len (< 2048) tokens
    small = default_num_blocks(
        cfg, block_size=16, max_batch_size=8, element_size=4, budget_bytes=5 * per_block
    )
    assert small == 5
