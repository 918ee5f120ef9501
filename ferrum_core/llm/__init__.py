"""The LLM executor (core semantics) and the model-math contract backends implement."""

from ferrum_core.llm.decoder import (
    ActiveLoraAdapter,
    DecodeItem,
    DecoderOnlyLLM,
    LlmRuntimeConfig,
    UnifiedItem,
)
from ferrum_core.llm.executor import LlmExecutor
from ferrum_core.llm.handle import LlmKvCacheHandle

__all__ = [
    "ActiveLoraAdapter",
    "DecodeItem",
    "DecoderOnlyLLM",
    "LlmExecutor",
    "LlmKvCacheHandle",
    "LlmRuntimeConfig",
    "UnifiedItem",
]
