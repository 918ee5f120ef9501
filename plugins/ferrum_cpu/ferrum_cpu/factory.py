"""`CpuExecutorFactory`: a cached ONNX graph, one ORT session, wrapped in `LlmExecutor`.

Importing this module is cheap; onnx and onnxruntime load in
:meth:`CpuExecutorFactory.create_executor`.

``executor_options``: ``threads`` (intra-op threads, default: ORT's choice),
``accuracy_level`` (``MatMulNBits`` activations: 1 = fp32, the default, exact;
4 = int8, faster), ``block_size`` (quantisation block of fp32/bf16 weights,
16..256, default 32), ``max_chunk_tokens`` (longest piece of a prompt per
session run, default 512), ``kv_cache_dtype`` (``auto``/``fp32`` only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferrum_core.errors import InvalidInputError, UnsupportedError
from ferrum_core.plugin import DataType, ExecutorConfig, ExecutorType

if TYPE_CHECKING:
    from ferrum_core.plugin import BatchModelExecutor, LlmExecutor, LoadedModel

__all__ = ["CpuExecutorFactory"]

SUPPORTED_DTYPES = (DataType.FP32, DataType.INT8, DataType.INT4)
DEFAULT_CHUNK = 512
MAX_SEQUENCES = 4096  # live sequences (KV slots); the memory budget binds first
_INT_OPTIONS = {"threads": (1, 4096), "accuracy_level": (0, 4), "block_size": (16, 256),
                "max_chunk_tokens": (1, 1 << 16)}


class CpuExecutorFactory:
    def supported_types(self) -> list[ExecutorType]:
        return [ExecutorType.SEQUENTIAL, ExecutorType.BATCH, ExecutorType.CONTINUOUS_BATCH,
                ExecutorType.SPECULATIVE]  # fmt: skip

    def validate_config(self, config: ExecutorConfig) -> None:
        if config.dtype not in SUPPORTED_DTYPES:
            names = ", ".join(d.value for d in SUPPORTED_DTYPES)
            raise UnsupportedError(
                f"dtype {config.dtype.value!r} is not supported by the cpu backend "
                f"(supported: {names})"
            )
        device = config.device
        if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise InvalidInputError(f"the cpu backend runs on 'cpu' or 'cuda:N', not {device!r}")
        options = config.executor_options
        for key, (least, most) in _INT_OPTIONS.items():
            value = options.get(key)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
                raise InvalidInputError(
                    f"executor option {key!r} must be an int in [{least}, {most}], got {value!r}"
                )
        block = options.get("block_size")
        if block is not None and block & (block - 1):
            raise InvalidInputError(f"executor option 'block_size' must be a power of two, "
                                    f"got {block}")
        kv = options.get("kv_cache_dtype")
        if kv not in (None, "auto", "fp32"):
            raise UnsupportedError(
                f"kv_cache_dtype {kv!r} is not supported by the cpu backend (auto, fp32)"
            )

    def create_executor(self, config: ExecutorConfig, *,
                        model: LoadedModel | None = None) -> LlmExecutor:  # fmt: skip
        self.validate_config(config)
        from ferrum_core.plugin import load_model
        from ferrum_cpu.graph import MODEL_TYPES, check_supported

        loaded = model
        if loaded is None:
            loaded = load_model(config.model_path, max_model_len=config.max_sequence_length,
                                model_types=MODEL_TYPES)
        try:
            cfg = loaded.known_config
            check_supported(cfg)
            from ferrum_cpu.session import providers_for

            providers_for(config.device)  # a typed error before anything is built
            return _build_executor(config, loaded)
        finally:
            if model is None:
                loaded.weights.close()

    def create_batch_executor(self, config: ExecutorConfig) -> BatchModelExecutor:
        """``LlmExecutor`` is a ``BatchModelExecutor``: one session run per batch."""
        return self.create_executor(config)


def _build_executor(config: ExecutorConfig, loaded: LoadedModel) -> LlmExecutor:
    import numpy as np

    from ferrum_core.plugin import LlmExecutor, LlmRuntimeConfig, rope_inv_freq
    from ferrum_cpu.blocks import attention_head_dim
    from ferrum_cpu.graph import GraphOptions, build_graph
    from ferrum_cpu.kv import KvPool
    from ferrum_cpu.model import OrtDecoderLLM
    from ferrum_cpu.model_cache import cache_key, load_or_build
    from ferrum_cpu.runner import Runner
    from ferrum_cpu.session import make_session

    cfg = loaded.known_config
    options: dict[str, Any] = config.executor_options
    graph_options = GraphOptions(
        mode=config.dtype.value,  # type: ignore[arg-type]
        accuracy_level=int(options.get("accuracy_level", 1)),
        block_size=int(options.get("block_size", 32)),
    )
    source = loaded.weights
    files = {source.file_of(name) for name in source.names()}
    if source.gguf_path is not None:
        files.add(source.gguf_path)

    def build() -> Any:
        from tqdm import tqdm

        with tqdm(total=cfg.num_hidden_layers, desc=f"ferrum-cpu: building {config.dtype.value} "
                  "ONNX graph", unit="layer", leave=False) as bar:  # fmt: skip
            return build_graph(cfg, source, graph_options, progress=bar.update)

    key = cache_key(sorted(files), loaded.raw_config, graph_options.key())
    cached, _ = load_or_build(key, build)
    session = make_session(cached.model, device=config.device,
                           threads=options.get("threads"))
    chunk = int(options.get("max_chunk_tokens", DEFAULT_CHUNK))
    max_rows = cfg.max_model_len + chunk
    head_dim = attention_head_dim(cfg.head_dim)
    pool = KvPool(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim,
                  max_slots=MAX_SEQUENCES, max_capacity=max_rows,
                  budget_bytes=_kv_budget(config))
    positions = np.arange(max_rows, dtype=np.float32)
    inv_freq = np.zeros(head_dim // 2, np.float32)  # padded dimensions rotate by 0
    inv_freq[: cfg.head_dim // 2] = rope_inv_freq(cfg)
    angles = np.outer(positions, inv_freq).astype(np.float32)
    runner = Runner(session, pool, cfg.vocab_size, np.cos(angles), np.sin(angles))
    runtime = LlmRuntimeConfig(
        hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, vocab_size=cfg.vocab_size, max_seq_len=cfg.max_model_len,
        intermediate_size=cfg.intermediate_size, num_parameters=_parameters(loaded),
        dtype=config.dtype, device=config.device, max_batch_size=config.max_batch_size,
        sliding_window=cfg.sliding_window, supported_dtypes=SUPPORTED_DTYPES,
        attention_mechanisms=(), extra={"onnx_model": str(cached.model)},
    )  # fmt: skip
    model = OrtDecoderLLM(runtime, runner, weights_bytes=cached.size(), max_chunk=chunk)
    return LlmExecutor(model, model_id=loaded.path.name, model_type=cfg.model_type)


def _kv_budget(config: ExecutorConfig) -> int:
    """Bytes the KV pool may grow to: ``max_memory_usage`` of the RAM available now."""
    import os

    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(available * config.memory_config.max_memory_usage)


def _parameters(loaded: LoadedModel) -> int:
    import math

    source = loaded.weights
    return sum(math.prod(source.shape(name)) for name in source.names())
