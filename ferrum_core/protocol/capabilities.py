"""What an executor can do and how it is doing: pydantic models, JSON-serialisable."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from ferrum_core.types import DataType, Device

__all__ = [
    "AttentionType",
    "MemoryRequirements",
    "ExecutorCapabilities",
    "ExecutorState",
    "ExecutorMemoryUsage",
    "ExecutorStatus",
    "ExecutorMetrics",
]


class AttentionType(StrEnum):
    MULTI_HEAD = "multi_head"
    MULTI_QUERY = "multi_query"
    GROUPED_QUERY = "grouped_query"
    FLASH = "flash"
    PAGED = "paged"
    SLIDING_WINDOW = "sliding_window"


class MemoryRequirements(BaseModel):
    """Memory estimate; all zero (unknown) until a model is loaded."""

    model_config = ConfigDict(frozen=True)

    parameter_memory: int = Field(default=0, ge=0)
    activation_memory_per_token: int = Field(default=0, ge=0)
    kv_cache_memory_per_token: int = Field(default=0, ge=0, description="per token per layer")
    overhead_memory: int = Field(default=0, ge=0)

    def calculate_total_memory(
        self, batch_size: int, sequence_length: int, num_layers: int
    ) -> int:
        activation = self.activation_memory_per_token * batch_size * sequence_length
        kv_cache = self.kv_cache_memory_per_token * batch_size * sequence_length * num_layers
        return self.parameter_memory + activation + kv_cache + self.overhead_memory


class ExecutorCapabilities(BaseModel):
    """What an executor instance (or, statically, a backend) can do."""

    model_config = ConfigDict(frozen=True)

    max_batch_size: int = Field(ge=1)
    max_sequence_length: int = Field(ge=1)
    attention_mechanisms: tuple[AttentionType, ...]
    supports_dynamic_batching: bool
    supports_continuous_batching: bool
    supports_speculative_decoding: bool
    supports_tensor_parallelism: bool = False
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="ranks this executor's model is split over (1: not split)"
    )
    supports_pipeline_parallelism: bool = False
    supported_dtypes: tuple[DataType, ...]
    supported_devices: tuple[Device, ...]
    memory_requirements: MemoryRequirements = Field(default_factory=MemoryRequirements)
    # Ferrum additions (not in the reference trait).
    supports_native_unified_decode: bool = False
    supports_lora: bool = False
    supports_prefix_caching: bool = False
    supported_model_types: tuple[str, ...] | None = Field(
        default=None,
        description="config.json model_type values the backend runs; None = any family",
    )


class ExecutorState(StrEnum):
    INITIALIZING = "initializing"
    READY = "ready"
    BUSY = "busy"
    ERROR = "error"
    SHUTDOWN = "shutdown"


class ExecutorMemoryUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    allocated_bytes: int = 0
    used_bytes: int = 0
    peak_bytes: int = 0
    utilization_percent: float = 0.0


class ExecutorStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: ExecutorState
    is_ready: bool
    current_batch_size: int = 0
    prefill_operations: int = 0
    decode_operations: int = 0
    avg_prefill_time_ms: float = 0.0
    avg_decode_time_ms: float = 0.0
    memory_usage: ExecutorMemoryUsage = Field(default_factory=ExecutorMemoryUsage)
    last_operation_unix_s: float | None = None


class ExecutorMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)

    total_operations: int = 0
    prefill_operations: int = 0
    decode_operations: int = 0
    avg_prefill_latency: float = 0.0
    avg_decode_latency: float = 0.0
    p95_prefill_latency: float = 0.0
    p95_decode_latency: float = 0.0
    throughput_tps: float = 0.0
    memory_efficiency: float = 0.0
    batch_utilization: float = 0.0
