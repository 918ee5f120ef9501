"""Paged-KV block bookkeeping that imports no array library.

Backends own the KV tensors; this package decides which physical block each
position of each sequence lives in, which blocks are shared through the prefix
cache, and when a shared block must be copied before it is written.
"""

from ferrum_core.kv.block_allocator import BlockAllocator
from ferrum_core.kv.manager import KvBlockManager
from ferrum_core.kv.pool_state import POOL_METRIC_KEYS, KvPoolState
from ferrum_core.kv.prefix_cache import ROOT_HASH, PrefixCache, chain_hash
from ferrum_core.kv.requests import AppendPlan, AppendRequest, AppendResult

__all__ = [
    "AppendPlan",
    "AppendRequest",
    "AppendResult",
    "BlockAllocator",
    "KvBlockManager",
    "KvPoolState",
    "POOL_METRIC_KEYS",
    "PrefixCache",
    "ROOT_HASH",
    "chain_hash",
]
