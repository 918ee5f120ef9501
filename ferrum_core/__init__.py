"""Ferrum: a plugin framework for LLM inference executors.

``import ferrum_core`` stays light: the engine (``LLM``, ``SamplingParams``...)
is imported on first use, so ``ferrum list-backends`` never pays for it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ferrum_core.errors import FerrumError
from ferrum_core.version import __version__

if TYPE_CHECKING:
    from ferrum_core.engine import (
        LLM,
        AsyncLLM,
        CompletionOutput,
        LoRARequest,
        RequestOutput,
        SamplingParams,
    )

__all__ = [
    "LLM",
    "AsyncLLM",
    "CompletionOutput",
    "FerrumError",
    "LoRARequest",
    "RequestOutput",
    "SamplingParams",
    "__version__",
]

_ENGINE_NAMES = frozenset({"LLM", "AsyncLLM", "SamplingParams", "RequestOutput", "CompletionOutput",
                           "LoRARequest"})


def __getattr__(name: str) -> Any:
    # The engine package resolves its own names lazily; this only forwards.
    if name not in _ENGINE_NAMES:
        raise AttributeError(f"module 'ferrum_core' has no attribute {name!r}")
    return getattr(import_module("ferrum_core.engine"), name)
