"""The KV handle `LlmExecutor` hands out (the reference's `GenericKvCacheHandle`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["LlmKvCacheHandle"]


@dataclass(frozen=True, slots=True)
class LlmKvCacheHandle:
    """Immutable description of one sequence's KV state inside an executor."""

    cache_id: str
    sequence_length: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    device: str = "cpu"
    bytes_per_element: int = 4
    block_table: tuple[int, ...] | None = None
    owner: int = 0  # id() of the issuing executor: a handle from another executor is rejected

    def memory_bytes(self) -> int:
        per_token = 2 * self.num_layers * self.num_kv_heads * self.head_dim
        return per_token * self.sequence_length * self.bytes_per_element

    def with_sequence_length(self, length: int) -> LlmKvCacheHandle:
        return replace(self, sequence_length=length)
