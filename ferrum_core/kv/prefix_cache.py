"""The prefix cache: full blocks keyed by a hash chain over their tokens.

A block's key is ``(parent_hash, tokens)``; its hash is ``chain_hash(parent_hash,
tokens)``, so equal hashes mean equal prefixes up to and including that block.
The exact key is stored next to the hash so that a hash collision reads as a
miss instead of handing out another prefix's KV.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ROOT_HASH", "PrefixCache", "block_hashes", "chain_hash", "root_hash"]

ROOT_HASH = 0
"""Parent hash of a sequence's first block."""

BlockKey = tuple[int, tuple[int, ...]]


def chain_hash(parent_hash: int, tokens: Sequence[int]) -> int:
    """Hash of a full block given its parent's hash (``ROOT_HASH`` for the first block).

    Python's hash of ints and tuples of ints is not salted, so the chain is stable
    for the life of the process (which is all a process-local cache needs).
    """
    return hash((parent_hash, tuple(tokens)))


def root_hash(salt: str | None = None) -> int:
    """Parent hash of a sequence's first block: ``salt`` separates caches that must
    never share blocks (e.g. two LoRA adapters)."""
    return ROOT_HASH if salt is None else hash(("ferrum-cache-salt", salt))


def block_hashes(tokens: Sequence[int], block_size: int, salt: str | None = None) -> list[int]:
    """The chain hash of every full block of ``tokens`` (what the block manager
    stores them under, so the scheduler can tell which prefixes are cached)."""
    hashes: list[int] = []
    parent = root_hash(salt)
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = chain_hash(parent, tokens[start : start + block_size])
        hashes.append(parent)
    return hashes


class PrefixCache:
    """Maps chain hashes to the physical block that holds those tokens' KV."""

    def __init__(self) -> None:
        self._by_hash: dict[int, int] = {}
        self._key_of_block: dict[int, tuple[int, BlockKey]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._key_of_block)

    def lookup(self, block_hash: int, parent_hash: int, tokens: Sequence[int]) -> int | None:
        """The cached block for this exact key, or ``None``. Does not count hits."""
        block = self._by_hash.get(block_hash)
        if block is None:
            return None
        _, key = self._key_of_block[block]
        if key != (parent_hash, tuple(tokens)):
            return None
        return block

    def insert(self, block: int, block_hash: int, parent_hash: int, tokens: Sequence[int]) -> bool:
        """Register ``block`` under ``block_hash`` unless that hash (or block) is taken."""
        if block_hash in self._by_hash or block in self._key_of_block:
            return False
        self._by_hash[block_hash] = block
        self._key_of_block[block] = (block_hash, (parent_hash, tuple(tokens)))
        return True

    def contains_block(self, block: int) -> bool:
        return block in self._key_of_block

    def remove_block(self, block: int) -> None:
        """Forget ``block`` (its content is about to change or it was evicted)."""
        entry = self._key_of_block.pop(block, None)
        if entry is not None:
            del self._by_hash[entry[0]]

    def record(self, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses
