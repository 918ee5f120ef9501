"""Everything a backend author needs, in one module.

A backend is a distribution with an entry point in the group ``ferrum``. Its
code imports the core only from here (and :mod:`ferrum_core.errors`, which
this module re-exports too)::

    from ferrum_core.plugin import ExecutorCapabilities, ProbeResult, hookimpl

    FERRUM_API_VERSION = 1          # a literal: the version YOUR code was written for

    @hookimpl
    def ferrum_register_backends(register):
        register("mine", factory=..., probe=..., priority=0, capabilities=...)

Write ``FERRUM_API_VERSION = 1`` as a literal, never ``= CORE_API_VERSION``:
the core compares the two, and a copy of its own number would always agree.

**Registration rules** (a plugin that breaks one is reported ``failed`` with the
reason; ``FERRUM_STRICT_PLUGINS=1`` makes it an error): declare every backend
name in your distribution's metadata as an entry point of the
:data:`BACKENDS_GROUP` group (``[project.entry-points."ferrum.backends"]``,
``mine = "my_pkg.plugin"``); names match ``^[a-z][a-z0-9_-]{0,31}$`` and
:data:`RESERVED_BACKEND_NAMES` belong to Ferrum's own distributions; the
priority is an int from :data:`MIN_PRIORITY` to :data:`MAX_PRIORITY`;
``capabilities`` an :class:`ExecutorCapabilities` or ``None``; ``details``
``None`` or a callable taking no arguments that returns a JSON-able ``dict``
of facts about the backend on this machine (build state, ISA, library
versions), called only by ``ferrum info NAME`` and printed under ``"details"``
by ``--json`` (keep it cheap; one that raises or returns a non-dict shows as
``{"error": ...}``, never a failed command). A name two
distributions register is ``duplicate`` for both and neither is selected. The
probe returns a :class:`ProbeResult` within :data:`PROBE_TIMEOUT_S` seconds
(probes run in parallel threads; one that raises, lies or hangs leaves its
backend ``unavailable``). The factory returns an object with
``validate_config`` and ``create_executor``, which returns a
:class:`ModelExecutor`; anything else is a :class:`PluginError` naming you.

**The path of a request.** ``ferrum`` (or ``LLM``) selects a backend, builds
an :class:`ExecutorConfig` and calls your factory's ``validate_config`` then
``create_executor(config, *, model=None)``: ``LLM`` loads the model once and
passes that :class:`LoadedModel` as ``model`` (your factory then owns its
weights: close them when done); called without it (a bare ``ExecutorConfig``),
load ``config.model_path`` yourself. A factory whose ``create_executor`` has no
``model`` parameter (API version 1 as first published) still works: the core
passes ``model`` only where the signature takes it. ``create_batch_executor``
returns a :class:`BatchModelExecutor` (``LlmExecutor`` is one), and
``supported_types()`` lists only the :class:`ExecutorType` values that work:
``executor_types_for(CAPABILITIES)`` derives them from your static declaration.
Most backends load the model with :func:`load_model`,
implement the model math as a :class:`DecoderOnlyLLM` and wrap it in
:class:`LlmExecutor`, which supplies every executor semantic (cache ids,
validation, rollback, the unified fallback, metrics, thread safety).
docs/architecture.md in the repository follows a request through every layer.

**Where options come from** (:class:`ExecutorConfig`):

* ``model_path``: a Hugging Face directory, a ``.gguf`` file, or ``None`` (the
  embedded default model); pass it to :func:`load_model`.
* ``dtype``: never ``auto`` by the time the factory sees it (``LLM`` resolves
  ``auto`` with :func:`resolve_dtype` against your static ``supported_dtypes``).
* ``max_batch_size`` (``LLM(max_num_seqs=...)``), ``max_sequence_length``
  (``max_model_len``; ``None`` = the model's own limit).
* ``attention_config`` (:class:`ExecutorAttentionConfig`): ``block_size`` of a
  paged KV cache (``None`` = yours), ``sliding_window_size`` override,
  ``attention_type`` / ``enable_flash_attention`` / ``enable_paged_attention``
  as hints.
* ``memory_config`` (:class:`ExecutorMemoryConfig`): ``num_kv_blocks`` (pool
  size; ``None`` = yours), ``max_memory_usage`` (share of device memory the
  pool may take), ``enable_kv_cache_sharing`` (prefix caching wanted).
* ``optimization_config`` (:class:`OptimizationConfig`):
  ``enable_cuda_graphs``, ``enable_kernel_fusion``, ``optimization_level``,
  free-form ``custom_flags``.
* ``executor_options``: backend-specific keys, passed through untouched from
  ``LLM(...)``, ``ferrum ... --threads`` and
  ``ferrum conformance NAME --option key=value``. The engine always sets
  ``enable_prefix_caching`` (bool) and, when given, ``threads`` (int >= 1).
  Validate the keys you read in ``validate_config`` (a typed
  :class:`InvalidInputError`); ignore the ones you do not know.

**``force_full_logits``** (the second argument of
``DecoderOnlyLLM.decode_batch``) is True when any request of the batch carries
the metadata key ``ferrum_require_full_logits: True`` (:data:`REQUIRE_FULL_LOGITS_KEY`,
the reference's flag). It asks for the model's exact, general path: a backend
with a faster path that may differ (static graphs, fused or approximate
kernels, a subset of the vocabulary) must skip it; a backend with one path
ignores the flag. The same flag makes ``LlmExecutor`` skip ``unified_forward``.

**Capabilities.** Declare them statically at ``register(capabilities=...)``
(what ``ferrum info NAME`` prints without a model) and per instance
(``executor.capabilities()``; ``LlmExecutor`` derives it from your
:class:`LlmRuntimeConfig`). An instance never claims more than the static
declaration: pass that declaration as ``LlmExecutor(..., declared=CAPABILITIES)``
and the instance takes its dtypes and feature flags from it (a flag only where
the model has it too), so each fact is written once.

* ``max_sequence_length`` / ``max_batch_size`` in the static declaration are
  upper bounds over every model; when your limit depends on the model, declare
  the largest you can run and let the instance report the loaded model's (it
  is ``min(model limit, kv_capacity())``).
* ``attention_mechanisms``: statically, every mechanism you can run. In
  ``LlmRuntimeConfig.attention_mechanisms`` pass ``()`` and ``LlmExecutor``
  derives MHA / GQA / MQA from the head counts, plus ``paged`` when
  ``paged_kv`` and ``sliding_window`` when the model has a window; list only
  extras such as ``flash``.
* ``memory_requirements`` (:class:`MemoryRequirements`) describes one loaded
  model: ``parameter_memory`` is bytes for the whole model,
  ``activation_memory_per_token`` bytes per token in flight,
  ``kv_cache_memory_per_token`` bytes per token **per layer** (K and V), so
  ``calculate_total_memory(batch, seq_len, num_layers)`` multiplies by layers.
  All zero statically (unknown before a model loads).
* ``supported_model_types``: the ``config.json`` ``model_type`` values the
  backend can run, or ``None`` for any. The core's loader parses the families
  it knows (:data:`KNOWN_MODEL_TYPES`); a model of another family reaches a
  backend that accepts it as a :class:`LoadedModel` with ``config=None``, the
  raw ``config.json`` dict, the weight source, tokenizer and chat template.

**Pool accounting.** ``cache_metrics_snapshot()`` of a paged backend returns
at least the keys of :data:`POOL_METRIC_KEYS`: ``kv_blocks_total``,
``kv_blocks_free``, ``block_size``, ``prefix_cache_hits``,
``prefix_cache_misses`` (:class:`KvPoolState` is them as one typed value;
:class:`KvBlockManager.metrics` returns them, plus
``kv_blocks_cached``, ``kv_blocks_evictable``, ``kv_sequences``). The engine
reads them to size batches; the conformance suite checks they move.
``LlmExecutor`` adds ``unified_native_calls``, ``unified_fallback_calls`` and
``executor_model_lock`` (``schema_version`` 1: lock acquisitions and waits).
A backend without a pool returns ``None``.

**Quantised weights.** :meth:`WeightSource.get` gives float arrays under
Hugging Face names; where the model came from a GGUF, the weight source also
offers each tensor as stored (its GGUF type and raw blocks), see
:class:`StoredTensor` and :func:`split_blocks`.

**Caching under ``$FERRUM_HOME``** (:func:`ferrum_home`): load nothing from
there that this user did not write. :func:`secure_dir`, :func:`trust_problem`
(owner, mode, symlink checks), :func:`file_sha256` and :func:`write_private_file`
let a backend record a content hash when it builds a file and verify it before
loading; :func:`make_temp_dir` names temporaries for their writer and
:func:`remove_stale_temps` clears those of dead writers.

Internal modules stay importable, so plugins written against the older paths
keep working under API version 1, but only this module is the contract.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ferrum_core.errors import (
    BackendError,
    BackendSelectionError,
    BackendUnavailableError,
    CapacityError,
    ConfigError,
    ExecutorStateError,
    FerrumError,
    InvalidInputError,
    KvPoolExhaustedError,
    ModelLoadError,
    PluginError,
    RegistryError,
    UnknownBackendError,
    UnknownCacheError,
    UnsupportedError,
)
from ferrum_core.hookspecs import API_VERSION as CORE_API_VERSION
from ferrum_core.hookspecs import (
    BACKENDS_GROUP,
    MAX_PRIORITY,
    MIN_PRIORITY,
    RESERVED_BACKEND_NAMES,
    RegisterBackend,
    hookimpl,
)
from ferrum_core.kv.pool_state import POOL_METRIC_KEYS
from ferrum_core.probing import PROBE_TIMEOUT_S, ProbeResult
from ferrum_core.protocol import (
    AttentionType,
    BatchModelExecutor,
    DecodeInput,
    DecodeOutput,
    ExecutorAttentionConfig,
    ExecutorCapabilities,
    ExecutorConfig,
    ExecutorMemoryConfig,
    ExecutorMemoryUsage,
    ExecutorMetrics,
    ExecutorState,
    ExecutorStatus,
    ExecutorType,
    KvCacheHandle,
    MemoryRequirements,
    Metadata,
    ModelExecutor,
    ModelExecutorFactory,
    OptimizationConfig,
    PrefillInput,
    PrefillOutput,
    SpeculativeDecodeOutput,
    SpeculativeExecutor,
    UnifiedBatch,
    UnifiedBatchItem,
    UnifiedLogits,
    executor_types_for,
)
from ferrum_core.types import DataType, Device, ModelInfo, parse_device

if TYPE_CHECKING:
    from ferrum_core.cache_trust import (
        file_sha256,
        make_temp_dir,
        remembered_sha256,
        remove_stale_temps,
        secure_dir,
        trust_problem,
        write_private_file,
    )
    from ferrum_core.dtype_choice import (
        KV_CACHE_DTYPES,
        kv_cache_dtype,
        resolve_dtype,
        stored_dtype,
    )
    from ferrum_core.kv import (
        AppendPlan,
        AppendRequest,
        AppendResult,
        BlockAllocator,
        KvBlockManager,
        KvPoolState,
        PrefixCache,
    )
    from ferrum_core.llm import (
        ActiveLoraAdapter,
        DecodeItem,
        DecoderOnlyLLM,
        LlmExecutor,
        LlmRuntimeConfig,
        UnifiedItem,
    )
    from ferrum_core.llm.metadata import (
        LORA_ADAPTER_KEY,
        LORA_PATH_KEY,
        REQUIRE_FULL_LOGITS_KEY,
    )
    from ferrum_core.models import (
        LoadedModel,
        ModelConfig,
        RopeScaling,
        Tokenizer,
        WeightSource,
        expected_tensors,
        load_model,
        rope_inv_freq,
    )
    from ferrum_core.models.cache import ferrum_home
    from ferrum_core.models.config_parse import KNOWN_MODEL_TYPES
    from ferrum_core.models.gguf_tensors import GgufTensors
    from ferrum_core.models.quant_blocks import (
        BLOCK_TYPES,
        QuantBlocks,
        StoredTensor,
        split_blocks,
        to_float32,
    )
    from ferrum_core.tensor import HostTensor, TensorRef

__all__ = [
    # plugin contract
    "CORE_API_VERSION",
    "BACKENDS_GROUP",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "PROBE_TIMEOUT_S",
    "RESERVED_BACKEND_NAMES",
    "hookimpl",
    "ProbeResult",
    "RegisterBackend",
    # capabilities, configs, types
    "AttentionType",
    "DataType",
    "Device",
    "ExecutorAttentionConfig",
    "ExecutorCapabilities",
    "ExecutorConfig",
    "ExecutorMemoryConfig",
    "ExecutorMemoryUsage",
    "ExecutorMetrics",
    "ExecutorState",
    "ExecutorStatus",
    "ExecutorType",
    "MemoryRequirements",
    "ModelInfo",
    "OptimizationConfig",
    "parse_device",
    "resolve_dtype",
    "stored_dtype",
    "kv_cache_dtype",
    "KV_CACHE_DTYPES",
    # the executor protocol
    "BatchModelExecutor",
    "DecodeInput",
    "DecodeOutput",
    "KvCacheHandle",
    "Metadata",
    "ModelExecutor",
    "ModelExecutorFactory",
    "PrefillInput",
    "PrefillOutput",
    "SpeculativeDecodeOutput",
    "SpeculativeExecutor",
    "UnifiedBatch",
    "UnifiedBatchItem",
    "UnifiedLogits",
    "executor_types_for",
    "HostTensor",
    "TensorRef",
    # the model-math contract and its executor
    "ActiveLoraAdapter",
    "DecodeItem",
    "DecoderOnlyLLM",
    "LlmExecutor",
    "LlmRuntimeConfig",
    "UnifiedItem",
    "LORA_ADAPTER_KEY",
    "LORA_PATH_KEY",
    "REQUIRE_FULL_LOGITS_KEY",
    "POOL_METRIC_KEYS",
    # the model layer
    "KNOWN_MODEL_TYPES",
    "LoadedModel",
    "ModelConfig",
    "RopeScaling",
    "Tokenizer",
    "WeightSource",
    "expected_tensors",
    "ferrum_home",
    "load_model",
    "rope_inv_freq",
    # quantised weights as stored
    "BLOCK_TYPES",
    "GgufTensors",
    "QuantBlocks",
    "StoredTensor",
    "split_blocks",
    "to_float32",
    # files a backend caches under ferrum_home()
    "file_sha256",
    "make_temp_dir",
    "remembered_sha256",
    "remove_stale_temps",
    "secure_dir",
    "trust_problem",
    "write_private_file",
    # paged-KV bookkeeping
    "AppendPlan",
    "AppendRequest",
    "AppendResult",
    "BlockAllocator",
    "KvBlockManager",
    "KvPoolState",
    "PrefixCache",
    # errors
    "BackendError",
    "BackendSelectionError",
    "BackendUnavailableError",
    "CapacityError",
    "ConfigError",
    "ExecutorStateError",
    "FerrumError",
    "InvalidInputError",
    "KvPoolExhaustedError",
    "ModelLoadError",
    "PluginError",
    "RegistryError",
    "UnknownBackendError",
    "UnknownCacheError",
    "UnsupportedError",
]


# Heavier names (numpy model code, tokenizers, jinja2) load on first use, so an
# entry-point module that imports this one keeps `ferrum list-backends` fast.
_LAZY_BY_MODULE = {
    "ferrum_core.cache_trust": (
        "file_sha256", "make_temp_dir", "remembered_sha256", "remove_stale_temps", "secure_dir",
        "trust_problem", "write_private_file",
    ),
    "ferrum_core.dtype_choice": (
        "KV_CACHE_DTYPES", "kv_cache_dtype", "resolve_dtype", "stored_dtype",
    ),
    "ferrum_core.kv": (
        "AppendPlan", "AppendRequest", "AppendResult", "BlockAllocator", "KvBlockManager",
        "KvPoolState", "PrefixCache",
    ),
    "ferrum_core.llm": (
        "ActiveLoraAdapter", "DecodeItem", "DecoderOnlyLLM", "LlmExecutor", "LlmRuntimeConfig",
        "UnifiedItem",
    ),
    "ferrum_core.llm.metadata": ("LORA_ADAPTER_KEY", "LORA_PATH_KEY", "REQUIRE_FULL_LOGITS_KEY"),
    "ferrum_core.models": (
        "LoadedModel", "ModelConfig", "RopeScaling", "Tokenizer", "WeightSource",
        "expected_tensors", "load_model", "rope_inv_freq",
    ),
    "ferrum_core.models.cache": ("ferrum_home",),
    "ferrum_core.models.gguf_tensors": ("GgufTensors",),
    "ferrum_core.models.quant_blocks": (
        "BLOCK_TYPES", "QuantBlocks", "StoredTensor", "split_blocks", "to_float32",
    ),
    "ferrum_core.models.config_parse": ("KNOWN_MODEL_TYPES",),
    "ferrum_core.tensor": ("HostTensor", "TensorRef"),
}
_LAZY = {name: module for module, names in _LAZY_BY_MODULE.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ferrum_core.plugin' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
