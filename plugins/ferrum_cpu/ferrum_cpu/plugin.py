"""Entry point of the ferrum-cpu distribution: registers the `cpu` backend (ONNX Runtime).

Nothing heavy is imported here: the probe reads package metadata only, and
onnx / onnxruntime load when the factory creates an executor.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import TYPE_CHECKING

from ferrum_core.plugin import (
    AttentionType,
    DataType,
    ExecutorCapabilities,
    ProbeResult,
    hookimpl,
)

if TYPE_CHECKING:
    from ferrum_core.plugin import RegisterBackend
    from ferrum_cpu.factory import CpuExecutorFactory

__all__ = ["FERRUM_API_VERSION", "ferrum_register_backends", "probe_cpu", "runtime_distribution",
           "static_capabilities"]

FERRUM_API_VERSION = 1

PRIORITY = 50
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_DTYPES = (DataType.FP32, DataType.INT8, DataType.INT4)
# Distributions that provide the `onnxruntime` module, in the order they are named.
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino",
                         "onnxruntime-directml")


def runtime_distribution() -> tuple[str, str] | None:
    """``(distribution, version)`` of the installed ONNX Runtime, or ``None``."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "onnxruntime (unknown distribution)", "unknown"


def probe_cpu() -> ProbeResult:
    found = runtime_distribution()
    if found is None:
        return ProbeResult(False, "onnxruntime is not installed (pip install onnxruntime)")
    if importlib.util.find_spec("onnx") is None:
        return ProbeResult(False, f"{found[0]} {found[1]} found, but onnx is not installed")
    return ProbeResult(True, f"{found[0]} {found[1]}")


def static_devices() -> tuple[str, ...]:
    """``cpu``, plus ``cuda:0`` where the installed build is onnxruntime-gpu."""
    found = runtime_distribution()
    return ("cpu", "cuda:0") if found and found[0] == "onnxruntime-gpu" else ("cpu",)


def static_capabilities() -> ExecutorCapabilities:
    """What the backend can do before any model is loaded."""
    return ExecutorCapabilities(
        max_batch_size=256,
        max_sequence_length=131072,
        attention_mechanisms=(
            AttentionType.MULTI_HEAD,
            AttentionType.MULTI_QUERY,
            AttentionType.GROUPED_QUERY,
            AttentionType.SLIDING_WINDOW,
        ),
        supports_dynamic_batching=True,
        supports_continuous_batching=True,
        supports_speculative_decoding=True,
        supported_dtypes=SUPPORTED_DTYPES,
        supported_devices=static_devices(),
        supports_native_unified_decode=True,
        supports_lora=False,
        supports_prefix_caching=False,
        supported_model_types=MODEL_TYPES,
    )


def _factory() -> CpuExecutorFactory:
    from ferrum_cpu.factory import CpuExecutorFactory

    return CpuExecutorFactory()


@hookimpl
def ferrum_register_backends(register: RegisterBackend) -> None:
    register(
        "cpu",
        factory=_factory,
        probe=probe_cpu,
        priority=PRIORITY,
        capabilities=static_capabilities(),
        api_version=FERRUM_API_VERSION,
        description="ONNX Runtime on the CPU: fused contrib operators (GroupQueryAttention, "
        "MatMulNBits int4/int8), pre-allocated KV, native unified decode",
    )
