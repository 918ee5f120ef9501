"""Entry point of the ferrum-mlx distribution: registers the `mlx` backend.

Nothing heavy is imported here (``ferrum list-backends`` stays fast): the
probe reads package metadata and the platform, and mlx loads only when the
factory creates an executor. Metal exists only on macOS on Apple silicon; the
same executor runs everywhere else on MLX's CPU device, at a lower priority.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
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
    from ferrum_mlx.factory import MlxExecutorFactory

__all__ = ["FERRUM_API_VERSION", "ferrum_register_backends", "metal_possible", "probe",
           "static_capabilities"]

FERRUM_API_VERSION = 1

# The families the MLX model code implements (config.json ``model_type``).
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_DTYPES = (DataType.FP32, DataType.FP16, DataType.BF16, DataType.INT8, DataType.INT4)

METAL_PRIORITY = 80
CPU_PRIORITY = 15


def metal_possible() -> bool:
    """Whether this machine can have a Metal GPU: macOS on Apple silicon."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def default_device() -> str:
    """``metal`` where Metal can exist, else ``cpu`` (MLX's CPU device)."""
    return "metal" if metal_possible() else "cpu"


def mlx_version() -> str | None:
    if importlib.util.find_spec("mlx") is None:
        return None
    try:
        return importlib.metadata.version("mlx")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def probe() -> ProbeResult:
    version = mlx_version()
    if version is None:
        return ProbeResult(False, "mlx is not installed")
    if metal_possible():
        return ProbeResult(True, f"mlx {version} on the Metal GPU ({platform.machine()} macOS)")
    return ProbeResult(
        True, f"mlx {version} on the MLX CPU device (no Metal on {sys.platform} "
        f"{platform.machine()})",
    )


def static_capabilities(device: str) -> ExecutorCapabilities:
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
        supported_devices=(device,),
        supports_native_unified_decode=True,
        supports_lora=False,
        supports_prefix_caching=False,
        supported_model_types=MODEL_TYPES,
    )


def _factory() -> MlxExecutorFactory:
    from ferrum_mlx.factory import MlxExecutorFactory

    return MlxExecutorFactory()


@hookimpl
def ferrum_register_backends(register: RegisterBackend) -> None:
    device = default_device()
    register(
        "mlx",
        factory=_factory,
        probe=probe,
        priority=METAL_PRIORITY if device == "metal" else CPU_PRIORITY,
        capabilities=static_capabilities(device),
        api_version=FERRUM_API_VERSION,
        description="Apple MLX (Metal on Apple silicon, MLX CPU elsewhere): per-sequence KV "
        "slabs, ragged unified decode, affine-quantised int4/int8 (GGUF and MLX folders)",
    )
