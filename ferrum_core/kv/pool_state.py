"""`KvPoolState`: a paged KV pool's figures as one typed value.

The protocol carries them in ``cache_metrics_snapshot()`` under the keys of
:data:`POOL_METRIC_KEYS` (see docs/architecture.md). This module is the one
place that knows those keys: :class:`~ferrum_core.kv.KvBlockManager`
writes them from a ``KvPoolState`` and the engine reads them back into one, so
the scheduler and the engine's stats never look at a metrics dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["POOL_METRIC_KEYS", "KvPoolState"]

POOL_METRIC_KEYS = (
    "kv_blocks_total",
    "kv_blocks_free",
    "block_size",
    "prefix_cache_hits",
    "prefix_cache_misses",
)
"""Keys a paged backend's ``cache_metrics_snapshot()`` must hold (ints)."""


@dataclass(frozen=True, slots=True)
class KvPoolState:
    blocks_total: int
    blocks_free: int
    block_size: int
    prefix_cache_hits: int = 0
    prefix_cache_misses: int = 0

    def metrics(self) -> dict[str, int]:
        """The snapshot entries, keyed by :data:`POOL_METRIC_KEYS`."""
        values = (self.blocks_total, self.blocks_free, self.block_size,
                  self.prefix_cache_hits, self.prefix_cache_misses)
        return dict(zip(POOL_METRIC_KEYS, values, strict=True))

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any] | None) -> KvPoolState | None:
        """The pool in a ``cache_metrics_snapshot()``; ``None`` when it reports none
        (no snapshot, a pool key missing or not an int, or a block size below 1)."""
        if not snapshot:
            return None
        total, free, size, hits, misses = (_int(snapshot, k) for k in POOL_METRIC_KEYS)
        if total is None or free is None or size is None or size < 1:
            return None
        return cls(total, free, size, hits or 0, misses or 0)


def _int(snapshot: Mapping[str, Any], key: str) -> int | None:
    value = snapshot.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
