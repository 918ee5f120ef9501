"""Which KV caches an executor issued, how long each is, and the handles that name them.

Not thread-safe by itself: `LlmExecutor` mutates it under its model lock and
re-checks (:meth:`CacheTable.recheck`) inside that lock what it resolved outside.
"""

from __future__ import annotations

import itertools

from ferrum_core.errors import InvalidInputError, UnknownCacheError
from ferrum_core.llm.decoder import LlmRuntimeConfig
from ferrum_core.llm.handle import LlmKvCacheHandle
from ferrum_core.protocol.io import KvCacheHandle

__all__ = ["CacheTable"]


class CacheTable:
    def __init__(self, cfg: LlmRuntimeConfig, owner: int) -> None:
        self._cfg = cfg
        self._owner = owner
        self._ids = itertools.count()
        self._lengths: dict[str, int] = {}

    def new_id(self) -> str:
        cache_id = f"llm-cache-{next(self._ids)}"
        self._lengths[cache_id] = 0
        return cache_id

    def handle(self, cache_id: str, length: int) -> LlmKvCacheHandle:
        cfg = self._cfg
        return LlmKvCacheHandle(
            cache_id=cache_id,
            sequence_length=length,
            num_layers=cfg.num_layers,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            device=cfg.device,
            bytes_per_element=max(1, int(cfg.dtype.bytes_per_element)),
            owner=self._owner,
        )

    def resolve(self, handle: KvCacheHandle) -> tuple[str, int]:
        """The cache id and current length behind a handle this executor issued."""
        if not isinstance(handle, LlmKvCacheHandle) or handle.owner != self._owner:
            raise UnknownCacheError("KV cache handle was not issued by this executor")
        self.recheck(handle.cache_id, handle.sequence_length)
        return handle.cache_id, handle.sequence_length

    def recheck(self, cache_id: str, length: int) -> None:
        """The cache still exists and holds exactly ``length`` positions."""
        live = self._lengths.get(cache_id)
        if live is None:
            raise UnknownCacheError(f"unknown or released KV cache id {cache_id!r}")
        if live != length:
            raise InvalidInputError(
                f"stale KV handle for {cache_id!r}: it says {length} positions, the cache"
                f" holds {live} (use the handle the last call returned)"
            )

    def length(self, cache_id: str) -> int:
        """How many positions ``cache_id`` holds (UnknownCacheError if none)."""
        live = self._lengths.get(cache_id)
        if live is None:
            raise UnknownCacheError(f"unknown or released KV cache id {cache_id!r}")
        return live

    def set_length(self, cache_id: str, length: int) -> None:
        self._lengths[cache_id] = length

    def forget(self, cache_id: str) -> bool:
        return self._lengths.pop(cache_id, None) is not None

    def ids(self) -> list[str]:
        return list(self._lengths)

    def __len__(self) -> int:
        return len(self._lengths)
