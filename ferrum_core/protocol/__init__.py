"""The executor protocol (mirrors ferrum-infer-rs' `model_executor.rs`)."""

from ferrum_core.protocol.capabilities import (
    AttentionType,
    ExecutorCapabilities,
    ExecutorMemoryUsage,
    ExecutorMetrics,
    ExecutorState,
    ExecutorStatus,
    MemoryRequirements,
)
from ferrum_core.protocol.config import (
    ExecutorAttentionConfig,
    ExecutorConfig,
    ExecutorMemoryConfig,
    ExecutorType,
    OptimizationConfig,
    executor_types_for,
)
from ferrum_core.protocol.executor import (
    BatchModelExecutor,
    ModelExecutor,
    ModelExecutorFactory,
    SpeculativeDecodeOutput,
    SpeculativeExecutor,
    UnifiedLogits,
)
from ferrum_core.protocol.io import (
    DecodeInput,
    DecodeOutput,
    KvCacheHandle,
    Metadata,
    PrefillInput,
    PrefillOutput,
    UnifiedBatch,
    UnifiedBatchItem,
)

__all__ = [
    "AttentionType",
    "BatchModelExecutor",
    "DecodeInput",
    "DecodeOutput",
    "ExecutorAttentionConfig",
    "ExecutorCapabilities",
    "ExecutorConfig",
    "ExecutorMemoryConfig",
    "ExecutorMemoryUsage",
    "ExecutorMetrics",
    "ExecutorState",
    "ExecutorStatus",
    "ExecutorType",
    "KvCacheHandle",
    "MemoryRequirements",
    "Metadata",
    "ModelExecutor",
    "ModelExecutorFactory",
    "OptimizationConfig",
    "PrefillInput",
    "PrefillOutput",
    "SpeculativeDecodeOutput",
    "SpeculativeExecutor",
    "UnifiedBatch",
    "UnifiedBatchItem",
    "UnifiedLogits",
    "executor_types_for",
]
