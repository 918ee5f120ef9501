"""`TorchExecutorFactory`: builds an `LlmExecutor` over `TorchDecoderLLM` (cuda or cpu).

Importing this module is cheap; torch and the model layer load in
:meth:`TorchExecutorFactory.create_executor`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from ferrum_core.errors import BackendUnavailableError, InvalidInputError
from ferrum_core.plugin import DataType, ExecutorConfig, ExecutorType
from ferrum_core.plugin import kv_cache_dtype as requested_kv_cache_dtype

if TYPE_CHECKING:
    import torch

    from ferrum_core.plugin import BatchModelExecutor, LlmExecutor, LoadedModel, ModelConfig
    from ferrum_cuda.model import TorchDecoderLLM
    from ferrum_cuda.tp.protocol import TpLink
    from ferrum_cuda.tp.shard import ShardPlan

__all__ = ["TorchExecutorFactory", "default_num_blocks"]

SUPPORTED_DTYPES = (DataType.FP32, DataType.FP16, DataType.BF16)
DEFAULT_BLOCK_SIZE = 16
TOKENS_PER_SEQUENCE = 2048  # default pool: max_batch_size sequences of this many tokens
CPU_MEMORY_SHARE = 0.25  # of available RAM the default CPU pool may take
DEFAULT_WORKSPACE_MB = 1024  # CPU decode workspace (see ferrum_cuda.workspace); 0 disables


def default_num_blocks(
    cfg: ModelConfig, *, block_size: int, max_batch_size: int, element_size: int,
    budget_bytes: int,
) -> int:  # fmt: skip
    """Enough blocks for ``max_batch_size`` sequences of ~2048 tokens, capped by the budget."""
    per_block = 2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads
    per_block *= cfg.head_dim * element_size
    per_seq = -(-min(TOKENS_PER_SEQUENCE, cfg.max_model_len) // block_size)
    one_full = -(-cfg.max_model_len // block_size)
    wanted = max(max_batch_size * per_seq, one_full)
    return max(1, min(wanted, budget_bytes // per_block))


def kv_cache_dtype(config: ExecutorConfig) -> DataType:
    """The executor option ``kv_cache_dtype``: ``auto`` (default) is the compute dtype."""
    return requested_kv_cache_dtype(config) or config.dtype


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class TorchExecutorFactory:
    """``kind`` ``"cuda"`` for the `cuda` backend, ``"cpu"`` for the `torch` backend.

    ``executor_options``: ``threads`` (``torch.set_num_threads``),
    ``enable_prefix_caching`` (default on), ``prepack_weights`` (oneDNN-packed
    CPU GEMMs, default on), ``decode_workspace_mb`` (CPU decode workspace
    budget, default 1024, 0 disables), ``cpu_kernels`` / ``cpu_gemm`` / ``cpu_isa`` (the
    fused fp32 CPU kernels, see :mod:`ferrum_cuda.cpu_native.settings`), ``kv_cache_dtype``
    (``auto`` = the compute dtype, ``fp32``, ``bf16``, ``fp16``: the paged KV pool's dtype),
    ``tensor_parallel_size`` / ``tensor_parallel_timeout_s`` / ``tensor_parallel_port``
    (see :mod:`ferrum_cuda.tp`).
    """

    def __init__(self, kind: Literal["cuda", "cpu"] = "cpu") -> None:
        if kind not in ("cuda", "cpu"):
            raise ValueError(f"kind must be 'cuda' or 'cpu', got {kind!r}")
        self.kind = kind

    def supported_types(self) -> list[ExecutorType]:
        return [ExecutorType.SEQUENTIAL, ExecutorType.BATCH, ExecutorType.CONTINUOUS_BATCH,
                ExecutorType.SPECULATIVE, ExecutorType.TENSOR_PARALLEL]  # fmt: skip

    def device_for(self, config: ExecutorConfig) -> str:
        """The device this factory runs ``config`` on (``cuda`` defaults to ``cuda:0``)."""
        if self.kind == "cuda" and "device" not in config.model_fields_set:
            return "cuda:0"
        return config.device

    def validate_config(self, config: ExecutorConfig) -> None:
        if config.dtype not in SUPPORTED_DTYPES:
            names = ", ".join(d.value for d in SUPPORTED_DTYPES)
            raise InvalidInputError(
                f"dtype {config.dtype.value!r} is not supported by the {self._backend} "
                f"backend (supported: {names})"
            )
        device = self.device_for(config)
        if self.kind == "cuda" and not device.startswith("cuda:"):
            raise InvalidInputError(
                f"the cuda backend runs on cuda:N, not {device!r} (the torch backend runs "
                "the same executor on the CPU)"
            )
        if self.kind == "cpu" and device != "cpu":
            raise InvalidInputError(
                f"the torch backend runs on the CPU, not {device!r} (use the cuda backend)"
            )
        options = config.executor_options
        for key, least in (("threads", 1), ("decode_workspace_mb", 0)):
            value = options.get(key)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < least
            ):
                raise InvalidInputError(
                    f"executor option {key!r} must be an int >= {least}, got {value!r}"
                )
        for key in ("enable_prefix_caching", "prepack_weights"):
            value = options.get(key)
            if value is not None and not isinstance(value, bool):
                raise InvalidInputError(f"executor option {key!r} must be a bool, got {value!r}")
        kv_cache_dtype(config)
        from ferrum_cuda.cpu_native.settings import NativeOptions
        from ferrum_cuda.tp.options import TpOptions

        TpOptions.from_options(options)

        NativeOptions.from_options(options)

    @property
    def _backend(self) -> str:
        return "cuda" if self.kind == "cuda" else "torch"

    def create_executor(
        self, config: ExecutorConfig, *, model: LoadedModel | None = None
    ) -> LlmExecutor:
        """``model``: what ``load_model`` produced for ``config`` (else loaded here)."""
        self.validate_config(config)
        from ferrum_core.plugin import LlmExecutor
        from ferrum_cuda.tp.executor import create_tp_executor, wants_tp

        self._torch_device(self.device_for(config))  # no device: fail before loading
        if wants_tp(config):
            return create_tp_executor(self, config, model)
        loaded = self.load(config, model)
        llm = self.build_llm(config, loaded)
        family = loaded.known_config.model_type
        return LlmExecutor(llm, model_id=loaded.path.name, model_type=family)

    def load(self, config: ExecutorConfig, model: LoadedModel | None = None) -> LoadedModel:
        from ferrum_core.plugin import load_model
        from ferrum_cuda.plugin import MODEL_TYPES

        if model is not None:
            return model
        return load_model(
            config.model_path, max_model_len=config.max_sequence_length, model_types=MODEL_TYPES
        )

    def build_llm(
        self, config: ExecutorConfig, loaded: LoadedModel, *, tp: TpLink | None = None,
        plan: ShardPlan | None = None, device_index: int = 0,
    ) -> TorchDecoderLLM:  # fmt: skip
        """The model of ``config``; with ``tp`` and ``plan``, this rank's shard of it (on
        ``cuda:device_index + rank`` for the cuda backend)."""
        import torch

        from ferrum_core.plugin import rope_inv_freq
        from ferrum_cuda.cpu_native.settings import NativeOptions, choose_native
        from ferrum_cuda.model import TorchDecoderLLM
        from ferrum_cuda.tp.shard import ShardedSource

        device = self._torch_device(self.device_for(config))
        if device.type == "cuda" and plan is not None:
            from ferrum_cuda.tp.options import local_rank

            device = torch.device("cuda", device_index + local_rank(plan.rank))
        options: dict[str, Any] = config.executor_options
        if options.get("threads"):
            torch.set_num_threads(int(options["threads"]))
        full = loaded.known_config
        cfg = full if plan is None else plan.local_config()
        source = loaded.weights if plan is None else ShardedSource(loaded.weights, plan)
        block_size = config.attention_config.block_size or DEFAULT_BLOCK_SIZE
        num_blocks = config.memory_config.num_kv_blocks
        kv_dtype = kv_cache_dtype(config)
        native = choose_native(
            NativeOptions.from_options(options), device.type, config.dtype, kv_dtype
        )
        try:
            weights = TorchDecoderLLM.load_weights(
                cfg,
                source,
                config.dtype,
                device,
                prepack=bool(options.get("prepack_weights", True)),
                native=native,
            )
        finally:
            loaded.weights.close()
        if num_blocks is None:
            num_blocks = default_num_blocks(
                full,
                block_size=block_size,
                max_batch_size=config.max_batch_size,
                element_size=int(kv_dtype.bytes_per_element),
                budget_bytes=self._kv_budget(device, config),
            )
        return TorchDecoderLLM(
            cfg,
            weights,
            rope_inv_freq(full),
            dtype=config.dtype,
            device=device,
            num_blocks=num_blocks,
            block_size=block_size,
            enable_prefix_caching=bool(options.get("enable_prefix_caching", True)),
            max_batch_size=config.max_batch_size,
            cuda_graphs=config.optimization_config.enable_cuda_graphs,
            workspace_bytes=int(options.get("decode_workspace_mb", DEFAULT_WORKSPACE_MB)) << 20,
            kv_cache_dtype=kv_dtype,
            native=native,
            tp=tp,
        )

    def create_batch_executor(self, config: ExecutorConfig) -> BatchModelExecutor:
        """``LlmExecutor`` is a ``BatchModelExecutor``: one model call per batch."""
        return self.create_executor(config)

    def _torch_device(self, device: str) -> torch.device:
        import torch

        if not device.startswith("cuda"):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"torch {torch.__version__} sees no CUDA device (the probe found a driver, "
                "but torch cannot use it)"
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
        return torch.device("cuda", index)

    def _kv_budget(self, device: torch.device, config: ExecutorConfig) -> int:
        import torch

        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free * config.memory_config.max_memory_usage * 0.8)
        return int(_available_ram() * CPU_MEMORY_SHARE)
