"""The engine: continuous batching, sampling, speculative decoding, LoRA, the `LLM` API.

Names load on first use, so the scheduler and block logic can be imported
(and tested) without numpy or a backend.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferrum_core.engine.async_llm import AsyncLLM
    from ferrum_core.engine.config import EngineConfig
    from ferrum_core.engine.engine import LLMEngine
    from ferrum_core.engine.llm import LLM
    from ferrum_core.engine.lora import LoRARequest
    from ferrum_core.engine.outputs import (
        CompletionOutput,
        EngineStats,
        RequestMetrics,
        RequestOutput,
        StreamDelta,
    )
    from ferrum_core.engine.sampling_params import SamplingParams
    from ferrum_core.engine.speculative import SpeculativePair

__all__ = [
    "AsyncLLM",
    "CompletionOutput",
    "EngineConfig",
    "EngineStats",
    "LLM",
    "LLMEngine",
    "LoRARequest",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "SpeculativePair",
    "StreamDelta",
]

_HOME = {
    "AsyncLLM": "async_llm",
    "CompletionOutput": "outputs",
    "EngineConfig": "config",
    "EngineStats": "outputs",
    "LLM": "llm",
    "LLMEngine": "engine",
    "LoRARequest": "lora",
    "RequestMetrics": "outputs",
    "RequestOutput": "outputs",
    "SamplingParams": "sampling_params",
    "SpeculativePair": "speculative",
    "StreamDelta": "outputs",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'ferrum_core.engine' has no attribute {name!r}")
    return getattr(import_module(f"ferrum_core.engine.{module}"), name)
