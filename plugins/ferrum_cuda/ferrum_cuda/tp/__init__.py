"""Tensor parallelism for the `cuda` and `torch` backends over ``torch.distributed``.

Megatron-style sharding (:mod:`.shard`), the process group (:mod:`.group`), the
worker processes (:mod:`.launch`, :mod:`.worker`) and the executor that ties them
together (:mod:`.executor`). Rank 0 runs the engine and the block manager; every
model call is broadcast to the workers, which run the same step on their shard.
"""
