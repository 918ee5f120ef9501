"""`TorchExecutorFactory`: builds an `LlmExecutor` over `TorchDecoderLLM` (cuda or cpu).

Importing this module is cheap; torch and the model layer load in
:meth:`TorchExecutorFactory.create_executor`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from ferrum_core.errors import BackendUnavailableError, InvalidInputError, UnsupportedError
from ferrum_core.plugin import DataType, ExecutorConfig, ExecutorType

if TYPE_CHECKING:
    import torch

    from ferrum_core.plugin import BatchModelExecutor, LlmExecutor, ModelConfig

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
    budget, default 1024, 0 disables), ``cpu_kernels`` (the fused fp32 CPU kernels of
    :mod:`ferrum_cuda.cpu_kernels`, default on where a C compiler builds them).
    """

    def __init__(self, kind: Literal["cuda", "cpu"] = "cpu") -> None:
        if kind not in ("cuda", "cpu"):
            raise ValueError(f"kind must be 'cuda' or 'cpu', got {kind!r}")
        self.kind = kind

    def supported_types(self) -> list[ExecutorType]:
        return [ExecutorType.SEQUENTIAL, ExecutorType.BATCH, ExecutorType.CONTINUOUS_BATCH,
                ExecutorType.SPECULATIVE]  # fmt: skip

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
        for key in ("enable_prefix_caching", "prepack_weights", "cpu_kernels"):
            value = options.get(key)
            if value is not None and not isinstance(value, bool):
                raise InvalidInputError(f"executor option {key!r} must be a bool, got {value!r}")

    @property
    def _backend(self) -> str:
        return "cuda" if self.kind == "cuda" else "torch"

    def create_executor(self, config: ExecutorConfig) -> LlmExecutor:
        self.validate_config(config)
        import torch

        from ferrum_core.plugin import LlmExecutor, load_model, rope_inv_freq
        from ferrum_cuda.model import TORCH_DTYPES, TorchDecoderLLM

        device = self._torch_device(self.device_for(config))
        options: dict[str, Any] = config.executor_options
        if options.get("threads"):
            torch.set_num_threads(int(options["threads"]))
        from ferrum_cuda.plugin import MODEL_TYPES

        loaded = load_model(config.model_path, max_model_len=config.max_sequence_length,
                            model_types=MODEL_TYPES)
        cfg = loaded.known_config
        dtype = TORCH_DTYPES[config.dtype]
        block_size = config.attention_config.block_size or DEFAULT_BLOCK_SIZE
        num_blocks = config.memory_config.num_kv_blocks
        try:
            weights = TorchDecoderLLM.load_weights(
                cfg,
                loaded.weights,
                config.dtype,
                device,
                prepack=bool(options.get("prepack_weights", True)),
                fused_kernels=bool(options.get("cpu_kernels", True)),
            )
        finally:
            loaded.weights.close()
        if num_blocks is None:
            num_blocks = default_num_blocks(
                cfg,
                block_size=block_size,
                max_batch_size=config.max_batch_size,
                element_size=torch.empty((), dtype=dtype).element_size(),
                budget_bytes=self._kv_budget(device, config),
            )
        model = TorchDecoderLLM(
            cfg,
            weights,
            rope_inv_freq(cfg),
            dtype=config.dtype,
            device=device,
            num_blocks=num_blocks,
            block_size=block_size,
            enable_prefix_caching=bool(options.get("enable_prefix_caching", True)),
            max_batch_size=config.max_batch_size,
            cuda_graphs=config.optimization_config.enable_cuda_graphs,
            workspace_bytes=int(options.get("decode_workspace_mb", DEFAULT_WORKSPACE_MB)) << 20,
            fused_kernels=bool(options.get("cpu_kernels", True)),
        )
        return LlmExecutor(model, model_id=loaded.path.name, model_type=cfg.model_type)

    def create_batch_executor(self, config: ExecutorConfig) -> BatchModelExecutor:
        raise UnsupportedError(
            f"the {self._backend} backend batches through unified_decode on the executor "
            "from create_executor; it has no separate BatchModelExecutor"
        )

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
