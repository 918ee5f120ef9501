"""The `ModelExecutor` abstract base and its relatives, with the reference trait's defaults.

Who implements and who calls each contract: docs/architecture.md.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ferrum_core.errors import UnsupportedError
from ferrum_core.protocol.capabilities import (
    ExecutorCapabilities,
    ExecutorMetrics,
    ExecutorStatus,
)
from ferrum_core.protocol.config import ExecutorConfig, ExecutorType
from ferrum_core.protocol.io import (
    DecodeInput,
    DecodeOutput,
    KvCacheHandle,
    PrefillInput,
    PrefillOutput,
    UnifiedBatch,
)
from ferrum_core.tensor import TensorRef
from ferrum_core.types import ModelInfo, TokenId

if TYPE_CHECKING:
    from ferrum_core.models.loader import LoadedModel

__all__ = [
    "ModelExecutor",
    "BatchModelExecutor",
    "SpeculativeExecutor",
    "SpeculativeDecodeOutput",
    "ModelExecutorFactory",
    "UnifiedLogits",
]

UnifiedLogits = list[np.ndarray | None]
"""One entry per unified-batch item: ``None`` or a 1-D float32 row over the vocabulary."""


class ModelExecutor(abc.ABC):
    """Tensor-level execution of one model: prefill, decode, and their batched forms.

    Methods are synchronous; an async engine may wrap them in threads.
    """

    @abc.abstractmethod
    def info(self) -> ModelInfo: ...

    def supports_native_unified_decode(self) -> bool:
        return False

    def kv_capacity(self) -> int | None:
        """Per-request KV capacity in tokens, when smaller than the model's context."""
        return None

    @abc.abstractmethod
    def prefill(self, input: PrefillInput) -> PrefillOutput: ...

    def batch_prefill(self, inputs: Sequence[PrefillInput]) -> list[PrefillOutput]:
        return [self.prefill(item) for item in inputs]

    @abc.abstractmethod
    def decode(self, input: DecodeInput) -> DecodeOutput: ...

    def batch_decode(self, inputs: Sequence[DecodeInput]) -> list[DecodeOutput]:
        return [self.decode(item) for item in inputs]

    def unified_decode(self, batch: UnifiedBatch) -> UnifiedLogits:
        raise UnsupportedError("unified_decode not implemented for this executor")

    def new_cache(self) -> KvCacheHandle:
        """A fresh, empty handle for a new sequence (a Ferrum addition)."""
        raise UnsupportedError("new_cache not implemented for this executor")

    def forward(self, input: TensorRef) -> TensorRef:
        raise UnsupportedError("full forward pass not supported by this executor")

    def truncate_kv(self, kv_cache: KvCacheHandle, new_len: int) -> KvCacheHandle:
        """Roll a sequence's KV back to ``new_len`` positions. Default: nothing to do."""
        return kv_cache.with_sequence_length(min(new_len, kv_cache.sequence_length))

    def forward_verify(self, inputs: Sequence[DecodeInput]) -> list[DecodeOutput]:
        """One logits row per position; default is sequential decodes."""
        outputs: list[DecodeOutput] = []
        handle: KvCacheHandle | None = None
        for item in inputs:
            if handle is not None:
                item = DecodeInput(item.input_ids, handle, item.position_ids, item.metadata)
            out = self.decode(item)
            handle = out.kv_cache
            outputs.append(out)
        return outputs

    @abc.abstractmethod
    def capabilities(self) -> ExecutorCapabilities: ...

    @abc.abstractmethod
    def status(self) -> ExecutorStatus: ...

    def metrics(self) -> ExecutorMetrics:
        """Performance metrics (a Ferrum addition); the default derives them from `status()`."""
        status = self.status()
        usage = status.memory_usage
        return ExecutorMetrics(
            total_operations=status.prefill_operations + status.decode_operations,
            prefill_operations=status.prefill_operations,
            decode_operations=status.decode_operations,
            avg_prefill_latency=status.avg_prefill_time_ms,
            avg_decode_latency=status.avg_decode_time_ms,
            memory_efficiency=(
                usage.used_bytes / usage.allocated_bytes if usage.allocated_bytes else 0.0
            ),
        )

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        return None

    def lora_metrics_snapshot(self) -> dict[str, Any] | None:
        return None

    def warmup(self) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def release_cache(self, cache_id: str) -> None:
        return None


class BatchModelExecutor(ModelExecutor):
    """An executor whose batch methods run one forward for the whole batch."""

    @abc.abstractmethod
    def batch_prefill(self, inputs: Sequence[PrefillInput]) -> list[PrefillOutput]: ...

    @abc.abstractmethod
    def batch_decode(self, inputs: Sequence[DecodeInput]) -> list[DecodeOutput]: ...

    @abc.abstractmethod
    def optimal_batch_size(self) -> int: ...

    @abc.abstractmethod
    def supports_batch_size(self, batch_size: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class SpeculativeDecodeOutput:
    accepted_tokens: tuple[TokenId, ...]
    next_logits: TensorRef
    kv_cache: KvCacheHandle
    acceptance_count: int


class SpeculativeExecutor(ModelExecutor):
    @abc.abstractmethod
    def speculative_decode(
        self,
        input: DecodeInput,
        draft_tokens: Sequence[TokenId],
        acceptance_threshold: float,
    ) -> SpeculativeDecodeOutput: ...


@runtime_checkable
class ModelExecutorFactory(Protocol):
    """Builds executors of one backend. Heavy imports happen here, never in probes.

    ``create_executor(config, *, model=None)``: when ``model`` (what
    :func:`~ferrum_core.models.load_model` produced for ``config.model_path``)
    is given, build from it instead of loading the model again. Factories
    written before ``model`` existed (``create_executor(config)``) keep working:
    the core passes ``model`` only to a factory whose signature accepts it.
    """

    def create_executor(
        self, config: ExecutorConfig, *, model: LoadedModel | None = None
    ) -> ModelExecutor: ...

    def create_batch_executor(self, config: ExecutorConfig) -> BatchModelExecutor: ...

    def supported_types(self) -> list[ExecutorType]: ...

    def validate_config(self, config: ExecutorConfig) -> None: ...
