"""The process-wide backend registry (discovered from entry points on first use),
selection by name, and building an executor with the selected backend's factory.

The registry's types live in :mod:`ferrum_core.backend_registry`; they are
re-exported here, where plugins written for API version 1 import them.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ferrum_core.backend_registry import (
    BackendDescriptor,
    BackendRecord,
    BackendRegistry,
    BackendState,
    probe_records,
)
from ferrum_core.errors import PluginError
from ferrum_core.hookspecs import RegisterBackend
from ferrum_core.plugins import discover
from ferrum_core.probing import ProbeResult, one_line
from ferrum_core.protocol.config import ExecutorConfig
from ferrum_core.protocol.executor import ModelExecutor

if TYPE_CHECKING:
    from ferrum_core.models.loader import LoadedModel

__all__ = [
    "ProbeResult", "BackendState", "BackendDescriptor", "BackendRecord",
    "BackendRegistry", "RegisterBackend", "get_registry", "reset_registry", "get_backend",
    "accepts_model", "create_executor", "one_line", "probe_records",
]

_REGISTRY: BackendRegistry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> BackendRegistry:
    """The process-wide registry, discovered from entry points on first use."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = discover().registry
        return _REGISTRY


def reset_registry(registry: BackendRegistry | None = None) -> None:
    """Forget (or replace) the process-wide registry; tests and long-lived hosts use it."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        _REGISTRY = registry


def get_backend(name: str | None = None) -> BackendDescriptor:
    return get_registry().select(name).descriptor


def create_executor(
    config: ExecutorConfig, backend: str | None = None, *, model: LoadedModel | None = None
) -> ModelExecutor:
    """Select a backend and build an executor with its factory (checked: a PluginError if not).

    ``model`` (from :func:`~ferrum_core.models.load_model`) goes to a factory whose
    ``create_executor`` accepts it, which then owns its weights; a factory written
    before ``model`` existed loads the model itself, and ``model``'s weights are closed.
    """
    descriptor = get_backend(backend)
    factory = descriptor.factory()
    factory.validate_config(config)
    try:
        if model is not None and accepts_model(factory.create_executor):
            executor: object = factory.create_executor(config, model=model)
        else:
            if model is not None:
                model.weights.close()
            executor = factory.create_executor(config)
    except BaseException:
        if model is not None:
            model.weights.close()
        raise
    if not isinstance(executor, ModelExecutor):
        raise PluginError(
            f"{descriptor.who()}: create_executor returned {type(executor).__name__}, "
            "not a ModelExecutor"
        )
    return executor


def accepts_model(create: Callable[..., object]) -> bool:
    """Whether a factory's ``create_executor`` takes the keyword ``model`` (version-1
    factories take only ``config``)."""
    try:
        params = inspect.signature(create).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        (p.name == "model" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        or p.kind == p.VAR_KEYWORD
        for p in params
    )
