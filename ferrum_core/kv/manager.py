"""`KvBlockManager`: per-sequence block tables over a refcounted pool with a prefix cache.

The backend asks for room with :meth:`KvBlockManager.append` before a forward
and gets back, per sequence, how many leading tokens the prefix cache already
holds (they need no compute), the physical slot of every token it must write,
and the block copies (copy-on-write) to perform before writing. A whole batch
is planned first and checked against the free pool, so
:class:`~ferrum_core.errors.KvPoolExhaustedError` leaves every sequence as it
was.

Slots are ``block * block_size + offset`` into a pool of ``num_blocks`` blocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ferrum_core.errors import InvalidInputError, KvPoolExhaustedError, UnknownCacheError
from ferrum_core.kv.block_allocator import BlockAllocator
from ferrum_core.kv.pool_state import KvPoolState
from ferrum_core.kv.prefix_cache import ROOT_HASH, PrefixCache, chain_hash, root_hash
from ferrum_core.kv.requests import AppendPlan, AppendRequest, AppendResult

__all__ = ["KvBlockManager"]


@dataclass(slots=True)
class _Sequence:
    root: int = ROOT_HASH  # parent hash of the first block
    blocks: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # chain hash of each full block




class KvBlockManager:
    """Block tables of every sequence of one paged KV pool (see the module docstring).

    ``metrics()`` returns the pool accounting keys a paged backend's
    ``cache_metrics_snapshot()`` reports (``kv_blocks_total``, ``kv_blocks_free``,
    ``block_size``, ``prefix_cache_hits``, ``prefix_cache_misses``...).
    """

    def __init__(
        self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.prefix_cache = PrefixCache() if enable_prefix_caching else None
        self.allocator = BlockAllocator(num_blocks, self.prefix_cache)
        self._seqs: dict[str, _Sequence] = {}

    # -- queries ---------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.allocator.num_free

    @property
    def max_tokens_per_sequence(self) -> int:
        return self.num_blocks * self.block_size

    def has(self, seq_id: str) -> bool:
        return seq_id in self._seqs

    def sequences(self) -> Iterator[str]:
        return iter(list(self._seqs))

    def num_tokens(self, seq_id: str) -> int:
        return len(self._get(seq_id).tokens)

    def block_table(self, seq_id: str) -> tuple[int, ...]:
        return tuple(self._get(seq_id).blocks)

    def pool_state(self) -> KvPoolState:
        cache = self.prefix_cache
        return KvPoolState(
            blocks_total=self.num_blocks,
            blocks_free=self.allocator.num_free,
            block_size=self.block_size,
            prefix_cache_hits=cache.hits if cache is not None else 0,
            prefix_cache_misses=cache.misses if cache is not None else 0,
        )

    def metrics(self) -> dict[str, int]:
        """:meth:`pool_state` as snapshot keys, plus cached / evictable blocks and
        sequences held."""
        cache = self.prefix_cache
        return {
            **self.pool_state().metrics(),
            "kv_blocks_cached": len(cache) if cache is not None else 0,
            "kv_blocks_evictable": self.allocator.num_evictable,
            "kv_sequences": len(self._seqs),
        }

    # -- planning --------------------------------------------------------------------------

    def plan(self, request: AppendRequest) -> AppendPlan:
        seq = self._seqs.get(request.seq_id)
        length = len(seq.tokens) if seq is not None else 0
        if request.start_pos != length:
            raise InvalidInputError(
                f"sequence {request.seq_id!r} holds {length} positions; cannot append at "
                f"{request.start_pos}"
            )
        bs = self.block_size
        new_len = length + len(request.tokens)
        if new_len > self.max_tokens_per_sequence:
            raise KvPoolExhaustedError(
                f"sequence {request.seq_id!r} would need {new_len} positions; the pool holds "
                f"{self.max_tokens_per_sequence}"
            )
        matched, lookups = self._match_prefix(seq, request)
        write_start = length + len(matched) * bs
        held = (len(seq.blocks) if seq is not None else 0) + len(matched)
        cow_block = None
        if seq is not None and write_start < new_len and write_start % bs:
            last = seq.blocks[write_start // bs]
            # Writing into a shared or cached block would corrupt what others read.
            if self.allocator.refcount(last) > 1 or self._is_cached(last):
                cow_block = last
        return AppendPlan(
            request=request,
            is_new=seq is None,
            matched=tuple(matched),
            cow_block=cow_block,
            new_blocks=max(0, -(-new_len // bs) - held),
            lookups=lookups,
        )

    def blocks_needed(self, requests: Sequence[AppendRequest]) -> int:
        """Free blocks the batch would consume (cached blocks it revives included)."""
        plans = [self.plan(r) for r in requests]
        return sum(p.blocks_needed for p in plans) + len(self._revived(plans))

    def _match_prefix(
        self, seq: _Sequence | None, request: AppendRequest
    ) -> tuple[list[tuple[int, int]], int]:
        cache, bs = self.prefix_cache, self.block_size
        length = len(seq.tokens) if seq is not None else 0
        if cache is None or request.max_cached_tokens < bs or length % bs:
            return [], 0
        if seq is None:
            parent = root_hash(request.cache_salt)
        else:
            parent = seq.hashes[-1] if seq.hashes else seq.root
        if seq is not None and len(seq.hashes) != length // bs:
            return [], 0
        matched: list[tuple[int, int]] = []
        lookups = min(request.max_cached_tokens, len(request.tokens)) // bs
        for i in range(lookups):
            block_tokens = request.tokens[i * bs : (i + 1) * bs]
            block_hash = chain_hash(parent, block_tokens)
            block = cache.lookup(block_hash, parent, block_tokens)
            if block is None:
                break
            matched.append((block, block_hash))
            parent = block_hash
        return matched, lookups

    def _revived(self, plans: Sequence[AppendPlan]) -> set[int]:
        return {b for p in plans for b, _ in p.matched if self.allocator.is_evictable(b)}

    # -- mutation --------------------------------------------------------------------------

    def append(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        """Plan, check and apply a batch; all or nothing on pool exhaustion."""
        ids = [r.seq_id for r in requests]
        if len(set(ids)) != len(ids):
            raise InvalidInputError("a sequence appears twice in one batch")
        plans = [self.plan(r) for r in requests]
        revived = self._revived(plans)
        needed = sum(p.blocks_needed for p in plans)
        available = self.allocator.num_free - len(revived)
        if needed > available:
            raise KvPoolExhaustedError(
                f"KV pool exhausted: batch needs {needed} blocks, {available} of "
                f"{self.num_blocks} free"
            )
        # Take every prefix hit first so that no allocation below evicts one of them.
        for plan in plans:
            for block, _ in plan.matched:
                self.allocator.incref(block)
        return [self._apply(plan) for plan in plans]

    def _apply(self, plan: AppendPlan) -> AppendResult:
        request, bs = plan.request, self.block_size
        seq = self._seqs.get(request.seq_id)
        if seq is None:
            seq = self._seqs[request.seq_id] = _Sequence(root=root_hash(request.cache_salt))
        num_cached = len(plan.matched) * bs
        for block, block_hash in plan.matched:
            seq.blocks.append(block)
            seq.hashes.append(block_hash)
        seq.tokens.extend(request.tokens[:num_cached])
        if self.prefix_cache is not None and plan.lookups:
            hits = len(plan.matched)
            self.prefix_cache.record(hits, plan.lookups - hits)
        copies: list[tuple[int, int]] = []
        if plan.cow_block is not None:
            (fresh,) = self.allocator.allocate(1)
            seq.blocks[len(seq.tokens) // bs] = fresh
            self.allocator.decref(plan.cow_block)
            copies.append((plan.cow_block, fresh))
        seq.blocks.extend(self.allocator.allocate(plan.new_blocks))
        start, end = len(seq.tokens), request.start_pos + len(request.tokens)
        slots: list[int] = []
        pos = start
        while pos < end:
            block, offset = seq.blocks[pos // bs], pos % bs
            stop = min(end, pos - offset + bs)
            slots.extend(range(block * bs + offset, block * bs + offset + (stop - pos)))
            pos = stop
        seq.tokens.extend(request.tokens[num_cached:])
        self._register_full_blocks(seq)
        return AppendResult(
            seq_id=request.seq_id,
            num_cached=num_cached,
            slots=tuple(slots),
            copies=tuple(copies),
            block_table=tuple(seq.blocks),
        )

    def _register_full_blocks(self, seq: _Sequence) -> None:
        cache, bs = self.prefix_cache, self.block_size
        if cache is None:
            return
        for index in range(len(seq.hashes), len(seq.tokens) // bs):
            parent = seq.hashes[-1] if seq.hashes else seq.root
            block_tokens = seq.tokens[index * bs : (index + 1) * bs]
            block_hash = chain_hash(parent, block_tokens)
            cache.insert(seq.blocks[index], block_hash, parent, block_tokens)
            seq.hashes.append(block_hash)

    def truncate(self, seq_id: str, new_len: int) -> None:
        """Forget positions ``>= new_len``; blocks past the new end are freed (not cached)."""
        seq = self._get(seq_id)
        if new_len < 0:
            raise InvalidInputError(f"cannot truncate to a negative length ({new_len})")
        if new_len >= len(seq.tokens):
            return
        bs = self.block_size
        keep = -(-new_len // bs)
        # Dropped tail blocks hold rejected or unfinished positions: not worth caching.
        for block in reversed(seq.blocks[keep:]):
            self.allocator.decref(block, keep_cached=False)
        del seq.blocks[keep:]
        del seq.tokens[new_len:]
        del seq.hashes[new_len // bs :]
        if new_len % bs:
            last = seq.blocks[-1]
            if self.allocator.refcount(last) == 1 and self._is_cached(last):
                self.allocator.uncache(last)  # about to be overwritten in place

    def release(self, seq_id: str) -> None:
        """Return every block of ``seq_id``; full cached blocks stay evictable. Unknown: no-op."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return
        # Release the tail first so that the LRU evicts a prefix's tail before its head.
        for block in reversed(seq.blocks):
            self.allocator.decref(block)

    def _is_cached(self, block: int) -> bool:
        return self.prefix_cache is not None and self.prefix_cache.contains_block(block)

    def _get(self, seq_id: str) -> _Sequence:
        seq = self._seqs.get(seq_id)
        if seq is None:
            raise UnknownCacheError(f"unknown KV sequence {seq_id!r}")
        return seq
