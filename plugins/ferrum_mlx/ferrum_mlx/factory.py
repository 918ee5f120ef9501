"""`MlxExecutorFactory`: builds an `LlmExecutor` over `MlxDecoderLLM`.

Importing this module is cheap; mlx and the model layer load in
:meth:`MlxExecutorFactory.create_executor`. The device is chosen at load:
Metal where MLX has it, else MLX's CPU device, through the same code path.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ferrum_core.errors import BackendUnavailableError, InvalidInputError, UnsupportedError
from ferrum_core.plugin import ExecutorConfig, ExecutorType, kv_cache_dtype
from ferrum_mlx.plugin import MODEL_TYPES, SUPPORTED_DTYPES, default_device

if TYPE_CHECKING:
    import mlx.core as mx

    from ferrum_core.plugin import BatchModelExecutor, LlmExecutor, LoadedModel
    from ferrum_mlx.model import MlxDecoderLLM

__all__ = ["MlxExecutorFactory"]

GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64
_DEVICES = ("cpu", "metal")
MAX_THREADS = 4
"""Default cap on CPU streams (measured: 2 streams on a 2-core machine, ~1.9x per matmul)."""


class MlxExecutorFactory:
    """``executor_options``: ``group_size`` (32, 64 or 128: the MLX group of float
    weights quantised for int4/int8, default 64, 32 where 64 does not divide a
    width; stored quantisations keep their own), ``threads`` (on the CPU device: how
    many CPU streams, hence cores, share every matmul, each matrix stored as that many
    column shards; default the machine's cores, at most MAX_THREADS; Metal uses one
    stream), ``kv_cache_dtype`` (``auto``: the compute dtype, fp32 for int4/int8;
    ``fp32``, ``bf16`` or ``fp16``: the KV slabs' dtype, read back into the compute
    dtype for attention)."""

    def supported_types(self) -> list[ExecutorType]:
        return [ExecutorType.SEQUENTIAL, ExecutorType.BATCH, ExecutorType.CONTINUOUS_BATCH,
                ExecutorType.SPECULATIVE]  # fmt: skip

    def device_for(self, config: ExecutorConfig) -> str:
        """``metal`` or ``cpu``: the configured device, else Metal where it can exist."""
        if "device" not in config.model_fields_set:
            return default_device()
        return config.device

    def validate_config(self, config: ExecutorConfig) -> None:
        if config.dtype not in SUPPORTED_DTYPES:
            names = ", ".join(d.value for d in SUPPORTED_DTYPES)
            raise InvalidInputError(
                f"dtype {config.dtype.value!r} is not supported by the mlx backend "
                f"(supported: {names})"
            )
        device = self.device_for(config)
        if device not in _DEVICES:
            raise InvalidInputError(
                f"the mlx backend runs on {' or '.join(_DEVICES)}, not {device!r}"
            )
        options = config.executor_options
        group = options.get("group_size")
        if group is not None and (type(group) is not int or group not in GROUP_SIZES):
            raise InvalidInputError(
                f"executor option 'group_size' must be one of {GROUP_SIZES}, got {group!r}"
            )
        kv_cache_dtype(config)
        threads = options.get("threads")
        if threads is not None and (type(threads) is not int or threads < 1):
            raise InvalidInputError(f"executor option 'threads' must be an int >= 1, got "
                                    f"{threads!r}")

    def create_executor(
        self, config: ExecutorConfig, *, model: LoadedModel | None = None
    ) -> LlmExecutor:
        from ferrum_core.plugin import LlmExecutor

        llm, loaded = self.create_model(config, model=model)
        return LlmExecutor(llm, model_id=loaded.path.name, model_type=loaded.model_type)

    def create_model(
        self, config: ExecutorConfig, *, model: LoadedModel | None = None
    ) -> tuple[MlxDecoderLLM, LoadedModel]:
        """The bare ``DecoderOnlyLLM`` (and the model it loaded, weights closed unless given)."""
        self.validate_config(config)
        import mlx.core as mx

        from ferrum_core.plugin import load_model
        from ferrum_mlx.model import MlxDecoderLLM
        from ferrum_mlx.weights import load_weights

        device = self.device_for(config)
        if device == "metal" and "device" not in config.model_fields_set:
            device = "metal" if mx.metal.is_available() else "cpu"  # chosen at load
        mx_device = self._mx_device(device)
        loaded = model
        if loaded is None:
            loaded = load_model(config.model_path, max_model_len=config.max_sequence_length,
                                model_types=MODEL_TYPES)
        elif loaded.model_type not in MODEL_TYPES:
            raise UnsupportedError(
                f"model type {loaded.model_type!r} is not supported by the mlx backend "
                f"(supported: {', '.join(MODEL_TYPES)})"
            )
        cfg = loaded.known_config
        group = int(config.executor_options.get("group_size") or DEFAULT_GROUP_SIZE)
        threads = 1 if device == "metal" else int(
            config.executor_options.get("threads") or min(os.cpu_count() or 1, MAX_THREADS))
        try:
            with mx.stream(mx_device):
                weights = load_weights(cfg, loaded.weights, config.dtype, group_size=group,
                                       shards=threads)
        finally:
            if model is None:
                loaded.weights.close()
        llm = MlxDecoderLLM(
            cfg, weights, dtype=config.dtype, device=device,
            mx_device=mx_device, max_batch_size=config.max_batch_size,
            supported_dtypes=SUPPORTED_DTYPES, shards=threads, kv_dtype=kv_cache_dtype(config),
        )  # fmt: skip
        return llm, loaded

    def create_batch_executor(
        self, config: ExecutorConfig, *, model: LoadedModel | None = None
    ) -> BatchModelExecutor:
        """``LlmExecutor`` is a ``BatchModelExecutor``: one forward per batch."""
        return self.create_executor(config, model=model)

    def _mx_device(self, device: str) -> mx.Device:
        import mlx.core as mx

        if device == "metal":
            if not mx.metal.is_available():
                raise BackendUnavailableError(
                    "mlx sees no Metal device on this machine (use --device cpu for MLX's "
                    "CPU device)"
                )
            return mx.Device(mx.gpu)
        return mx.Device(mx.cpu)

