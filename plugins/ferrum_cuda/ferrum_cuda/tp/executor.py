"""The tensor-parallel executor: rank 0's ``LlmExecutor`` over a sharded model.

``create_tp_executor`` checks the sharding rule before any process starts, then
starts ``tensor_parallel_size - 1`` workers (or, under ``torchrun``, joins that
group: ranks other than 0 serve steps and exit when rank 0 shuts down).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ferrum_core.errors import ConfigError, UnsupportedError
from ferrum_core.plugin import ExecutorCapabilities, ExecutorConfig, LlmExecutor, LoadedModel
from ferrum_cuda.tp.options import TpOptions, torchrun_env

if TYPE_CHECKING:
    from ferrum_cuda.factory import TorchExecutorFactory
    from ferrum_cuda.model import TorchDecoderLLM
    from ferrum_cuda.tp.link import RankLink

__all__ = ["TpExecutor", "create_tp_executor", "wants_tp"]


def wants_tp(config: ExecutorConfig) -> bool:
    return TpOptions.from_options(config.executor_options).size > 1


class TpExecutor(LlmExecutor):
    """Declares tensor parallelism; ``shutdown`` also stops the workers."""

    def __init__(self, model: TorchDecoderLLM, link: RankLink, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.link = link

    @property
    def tensor_parallel_size(self) -> int:
        return self.link.size

    @property
    def worker_pids(self) -> list[int]:
        return self.link.workers.pids if self.link.workers is not None else []

    def capabilities(self) -> ExecutorCapabilities:
        return super().capabilities().model_copy(
            update={"supports_tensor_parallelism": True, "tensor_parallel_size": self.link.size}
        )

    def shutdown(self) -> None:
        try:
            super().shutdown()
        finally:
            self.link.close()


def _prepared(factory: TorchExecutorFactory, config: ExecutorConfig, loaded: LoadedModel,
              opts: TpOptions) -> ExecutorConfig:  # fmt: skip
    """``config`` with what every rank must agree on fixed by rank 0: the pool's size."""
    from ferrum_cuda.factory import DEFAULT_BLOCK_SIZE, default_num_blocks, kv_cache_dtype

    memory = config.memory_config
    if memory.num_kv_blocks is None:
        device = factory._torch_device(factory.device_for(config))
        blocks = default_num_blocks(
            loaded.known_config,
            block_size=config.attention_config.block_size or DEFAULT_BLOCK_SIZE,
            max_batch_size=config.max_batch_size,
            element_size=int(kv_cache_dtype(config).bytes_per_element),
            budget_bytes=factory._kv_budget(device, config),
        )
        memory = memory.model_copy(update={"num_kv_blocks": blocks})
    options = {**config.executor_options, "threads": opts.threads}
    return config.model_copy(update={"memory_config": memory, "executor_options": options})


def _check_gpus(factory: TorchExecutorFactory, config: ExecutorConfig, size: int) -> None:
    """The cuda backend runs rank r on ``cuda:r``: that many GPUs must be visible."""
    if factory.kind != "cuda" or torchrun_env() is not None:
        return
    import torch

    count = torch.cuda.device_count()
    if factory.device_for(config) != "cuda:0" or size > count:
        raise UnsupportedError(
            f"tensor_parallel_size={size} runs rank r on cuda:r from cuda:0 "
            f"({count} GPU(s) visible, device {factory.device_for(config)!r})"
        )


def create_tp_executor(
    factory: TorchExecutorFactory, config: ExecutorConfig, model: LoadedModel | None
) -> LlmExecutor:
    from ferrum_cuda.tp.group import TpGroup, check_port, free_port
    from ferrum_cuda.tp.launch import WorkerSet
    from ferrum_cuda.tp.link import RankLink, build_rank
    from ferrum_cuda.tp.shard import ShardPlan, check_shardable
    from ferrum_cuda.tp.worker import serve

    opts = TpOptions.from_options(config.executor_options)
    loaded = factory.load(config, model)
    try:
        check_shardable(loaded.known_config, opts.size)  # before any process starts
        _check_gpus(factory, config, opts.size)
        config = _prepared(factory, config, loaded, opts)
    except BaseException:
        loaded.weights.close()
        raise
    env = torchrun_env()
    workers = None
    if env is not None:
        rank, world, host, port = env
        if world != opts.size:
            loaded.weights.close()
            raise ConfigError(f"tensor_parallel_size={opts.size} but torchrun started "
                              f"WORLD_SIZE={world} processes")  # fmt: skip
    else:
        rank, host = 0, "127.0.0.1"
        port = opts.port if opts.port is not None else free_port(host)
        check_port(host, port)
        spec = {"kind": factory.kind, "config": config.model_dump(mode="json"), "size": opts.size,
                "host": host, "port": port, "timeout_s": opts.timeout_s}  # fmt: skip
        workers = WorkerSet(spec, opts.size, opts.threads)
    try:

        def join() -> TpGroup:
            return TpGroup(rank=rank, size=opts.size, host=host, port=port,
                           timeout_s=opts.timeout_s, nccl=factory.kind == "cuda")  # fmt: skip

        group = join() if workers is None else workers.while_alive(join, "rendezvous")
        link = RankLink(group, ShardPlan(loaded.known_config, rank, opts.size), workers)
        name, family = loaded.path.name, loaded.known_config.model_type
        llm = build_rank(factory, config, loaded, link)
    except BaseException:
        if workers is not None:
            workers.stop(0.5)
        raise
    if rank != 0:  # torchrun: only rank 0 runs the engine
        serve(group, llm)
        sys.exit(0)
    return TpExecutor(llm, link, model_id=name, model_type=family)
