"""Entry point of the ferrum-cuda distribution: registers the `cuda` and `torch` backends.

Both run the same PyTorch executor (paged KV, prefix cache, native unified
decode, LoRA); `cuda` on an NVIDIA GPU, `torch` on the CPU. Nothing heavy is
imported here: torch loads only when a factory creates an executor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ferrum_core.plugin import AttentionType, DataType, ExecutorCapabilities, hookimpl
from ferrum_cuda.probe import probe_cuda, probe_torch

if TYPE_CHECKING:
    from ferrum_core.plugin import RegisterBackend
    from ferrum_cuda.factory import TorchExecutorFactory

__all__ = ["FERRUM_API_VERSION", "ferrum_register_backends", "static_capabilities"]

FERRUM_API_VERSION = 1

# The families the PyTorch model code implements (config.json ``model_type``).
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

CUDA_PRIORITY = 100
TORCH_PRIORITY = 10


def static_capabilities(device: str) -> ExecutorCapabilities:
    """What the backend can do before any model is loaded."""
    return ExecutorCapabilities(
        max_batch_size=256,
        max_sequence_length=131072,
        attention_mechanisms=(
            AttentionType.MULTI_HEAD,
            AttentionType.MULTI_QUERY,
            AttentionType.GROUPED_QUERY,
            AttentionType.PAGED,
            AttentionType.SLIDING_WINDOW,
        )
        + ((AttentionType.FLASH,) if device != "cpu" else ()),
        supports_dynamic_batching=True,
        supports_continuous_batching=True,
        supports_speculative_decoding=True,
        supports_tensor_parallelism=True,  # executor option tensor_parallel_size (ferrum_cuda.tp)
        supported_dtypes=(DataType.FP32, DataType.FP16, DataType.BF16),
        supported_devices=(device,),
        supports_native_unified_decode=True,
        supports_lora=True,
        supports_prefix_caching=True,
        supported_model_types=MODEL_TYPES,
    )


def _cuda_factory() -> TorchExecutorFactory:
    from ferrum_cuda.factory import TorchExecutorFactory

    return TorchExecutorFactory("cuda")


def _torch_details() -> dict[str, object]:
    """``ferrum info torch --json``: the CPU kernels' ISA and build cache (no torch import)."""
    from ferrum_cuda.cpu_native.settings import native_details
    from ferrum_cuda.tp.describe import tp_details

    return {**native_details(), "tensor_parallel": tp_details("gloo")}


def _cuda_details() -> dict[str, object]:
    """``ferrum info cuda --json``: how tensor parallelism runs (no torch import)."""
    from ferrum_cuda.tp.describe import tp_details

    return {"tensor_parallel": tp_details("nccl")}


def _torch_factory() -> TorchExecutorFactory:
    from ferrum_cuda.factory import TorchExecutorFactory

    return TorchExecutorFactory("cpu")


@hookimpl
def ferrum_register_backends(register: RegisterBackend) -> None:
    register(
        "cuda",
        factory=_cuda_factory,
        probe=probe_cuda,
        priority=CUDA_PRIORITY,
        capabilities=static_capabilities("cuda:0"),
        api_version=FERRUM_API_VERSION,
        details=_cuda_details,
        description="PyTorch on an NVIDIA GPU: paged KV, prefix cache, native unified "
        "decode, CUDA graphs, LoRA",
    )
    register(
        "torch",
        factory=_torch_factory,
        probe=probe_torch,
        priority=TORCH_PRIORITY,
        capabilities=static_capabilities("cpu"),
        api_version=FERRUM_API_VERSION,
        details=_torch_details,
        description="PyTorch on the CPU: the cuda backend's executor (paged KV, prefix "
        "cache, native unified decode, LoRA)",
    )
