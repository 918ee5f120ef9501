"""Executor configuration (user-facing, pydantic)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ferrum_core.protocol.capabilities import AttentionType, ExecutorCapabilities
from ferrum_core.types import DataType, Device, parse_device

__all__ = [
    "ExecutorType",
    "ExecutorAttentionConfig",
    "ExecutorMemoryConfig",
    "OptimizationConfig",
    "ExecutorConfig",
    "executor_types_for",
]


class ExecutorType(StrEnum):
    SEQUENTIAL = "sequential"
    BATCH = "batch"
    CONTINUOUS_BATCH = "continuous_batch"
    SPECULATIVE = "speculative"
    PIPELINE_PARALLEL = "pipeline_parallel"
    TENSOR_PARALLEL = "tensor_parallel"


def executor_types_for(capabilities: ExecutorCapabilities) -> list[ExecutorType]:
    """The :class:`ExecutorType` values a factory serves, derived from its declared
    capabilities so ``supported_types()`` never says more than they do: sequential
    always, ``batch`` with dynamic batching (``create_batch_executor`` returns a
    :class:`BatchModelExecutor`), then continuous batching, speculative decoding and
    the parallel kinds as declared."""
    declared = [
        (ExecutorType.BATCH, capabilities.supports_dynamic_batching),
        (ExecutorType.CONTINUOUS_BATCH, capabilities.supports_continuous_batching),
        (ExecutorType.SPECULATIVE, capabilities.supports_speculative_decoding),
        (ExecutorType.PIPELINE_PARALLEL, capabilities.supports_pipeline_parallelism),
        (ExecutorType.TENSOR_PARALLEL, capabilities.supports_tensor_parallelism),
    ]
    return [ExecutorType.SEQUENTIAL, *(kind for kind, yes in declared if yes)]


class ExecutorAttentionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attention_type: AttentionType = AttentionType.GROUPED_QUERY
    enable_flash_attention: bool = True
    enable_paged_attention: bool = True
    block_size: int | None = Field(default=None, ge=1)
    sliding_window_size: int | None = Field(default=None, ge=1)


class ExecutorMemoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enable_memory_pooling: bool = True
    memory_pool_size: int | None = Field(default=None, ge=0)
    enable_kv_cache_sharing: bool = True
    max_memory_usage: float = Field(default=0.9, gt=0.0, le=1.0)
    num_kv_blocks: int | None = Field(default=None, ge=1)


class OptimizationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enable_cuda_graphs: bool = True
    enable_kernel_fusion: bool = False
    enable_mixed_precision: bool = False
    optimization_level: int = Field(default=1, ge=0, le=3)
    custom_flags: dict[str, bool] = Field(default_factory=dict)


class ExecutorConfig(BaseModel):
    """How to build an executor: which model, where, in which dtype, with what limits.

    ``model_path`` is a Ferrum addition: the reference passes a resolved
    ``ModelInfo``; here factories load the model themselves from a directory
    or a GGUF file (``None`` means the embedded default model).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_path: str | None = None
    device: Device = "cpu"
    dtype: DataType = DataType.FP32
    max_batch_size: int = Field(default=64, ge=1)
    max_sequence_length: int | None = Field(default=None, ge=1)
    attention_config: ExecutorAttentionConfig = Field(default_factory=ExecutorAttentionConfig)
    memory_config: ExecutorMemoryConfig = Field(default_factory=ExecutorMemoryConfig)
    optimization_config: OptimizationConfig = Field(default_factory=OptimizationConfig)
    executor_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("device")
    @classmethod
    def _normalise_device(cls, value: str) -> str:
        return parse_device(value)
