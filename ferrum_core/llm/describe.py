"""ModelInfo and capabilities derived from the loaded model, never hard-coded."""

from __future__ import annotations

from ferrum_core.llm.decoder import LlmRuntimeConfig
from ferrum_core.protocol.capabilities import (
    AttentionType,
    ExecutorCapabilities,
    MemoryRequirements,
)
from ferrum_core.types import ModelInfo

__all__ = ["model_info_for", "capabilities_for"]


def model_info_for(cfg: LlmRuntimeConfig, *, model_id: str, model_type: str) -> ModelInfo:
    return ModelInfo(
        model_id=model_id,
        model_type=model_type,
        num_parameters=cfg.num_parameters,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.max_seq_len,
        dtype=cfg.dtype,
        device=cfg.device,
    )


def capabilities_for(
    cfg: LlmRuntimeConfig, kv_capacity: int, native_unified: bool, model_type: str | None = None,
    *, declared: ExecutorCapabilities | None = None,
) -> ExecutorCapabilities:
    """The instance's capabilities: what it can do with the one model it loaded.

    ``declared`` (the backend's registered capabilities) is the one source of the
    backend's facts: the instance takes its dtypes from it and claims a feature
    (batching kinds, speculative decoding, LoRA, prefix caching) only where both
    the declaration and the loaded model have it. Native unified decode is what
    the model does, whatever was declared.
    """
    width = cfg.dtype.bytes_per_element
    mechanisms = list(cfg.attention_mechanisms)
    if cfg.num_kv_heads == 1 and cfg.num_heads > 1:
        extra = [AttentionType.MULTI_QUERY]
    elif cfg.num_kv_heads < cfg.num_heads:
        extra = [AttentionType.GROUPED_QUERY]
    else:
        extra = [AttentionType.MULTI_HEAD]
    if cfg.paged_kv:
        extra.append(AttentionType.PAGED)
    if cfg.sliding_window:
        extra.append(AttentionType.SLIDING_WINDOW)
    for mechanism in extra:
        if mechanism not in mechanisms:
            mechanisms.append(mechanism)
    caps = ExecutorCapabilities(
        max_batch_size=cfg.max_batch_size,
        max_sequence_length=max(1, min(cfg.max_seq_len, kv_capacity)),
        attention_mechanisms=tuple(mechanisms),
        supports_dynamic_batching=True,
        # Continuous batching rests on unified_decode, which LlmExecutor always provides.
        supports_continuous_batching=True,
        # forward_verify in one forward plus truncate_kv is what the engine's
        # speculative decoding needs.
        supports_speculative_decoding=True,
        supported_dtypes=cfg.supported_dtypes,
        supported_devices=(cfg.device,),
        memory_requirements=MemoryRequirements(
            parameter_memory=int(cfg.num_parameters * width),
            activation_memory_per_token=int(
                (4 * cfg.hidden_size + 2 * max(cfg.intermediate_size, cfg.hidden_size)) * width
            ),
            kv_cache_memory_per_token=int(2 * cfg.num_kv_heads * cfg.head_dim * width),
            overhead_memory=0,
        ),
        supports_native_unified_decode=native_unified,
        supports_lora=cfg.supports_lora,
        supports_prefix_caching=cfg.prefix_caching,
        supported_model_types=(model_type,) if model_type else None,
    )
    return caps if declared is None else _within(caps, declared)


_FLAGS = (
    "supports_dynamic_batching", "supports_continuous_batching", "supports_speculative_decoding",
    "supports_lora", "supports_prefix_caching",
)


def _within(caps: ExecutorCapabilities, declared: ExecutorCapabilities) -> ExecutorCapabilities:
    update: dict[str, object] = {
        flag: getattr(caps, flag) and getattr(declared, flag) for flag in _FLAGS
    }
    update["supported_dtypes"] = declared.supported_dtypes
    return caps.model_copy(update=update)
