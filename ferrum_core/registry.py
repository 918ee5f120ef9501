"""`ExecutorRegistry`: named, live executor instances (the engine's target, draft, ...)."""

from __future__ import annotations

import threading

from ferrum_core.errors import RegistryError
from ferrum_core.protocol.capabilities import ExecutorMetrics
from ferrum_core.protocol.executor import ModelExecutor

__all__ = ["ExecutorRegistry"]


class ExecutorRegistry:
    """Thread-safe map of names to executors. A duplicate name is an error."""

    def __init__(self) -> None:
        self._executors: dict[str, ModelExecutor] = {}
        self._lock = threading.Lock()

    def register(self, name: str, executor: ModelExecutor) -> None:
        if not name:
            raise RegistryError("executor name must be non-empty")
        if not isinstance(executor, ModelExecutor):
            raise RegistryError(f"{type(executor).__name__} is not a ModelExecutor")
        with self._lock:
            if name in self._executors:
                raise RegistryError(f"an executor named {name!r} is already registered")
            self._executors[name] = executor

    def get(self, name: str) -> ModelExecutor | None:
        with self._lock:
            return self._executors.get(name)

    def require(self, name: str) -> ModelExecutor:
        executor = self.get(name)
        if executor is None:
            raise RegistryError(f"no executor named {name!r} (have: {self.list_names()})")
        return executor

    def remove(self, name: str) -> ModelExecutor | None:
        with self._lock:
            return self._executors.pop(name, None)

    def list_names(self) -> list[str]:
        with self._lock:
            return sorted(self._executors)

    def get_metrics(self, name: str) -> ExecutorMetrics | None:
        executor = self.get(name)
        return None if executor is None else executor.metrics()

    def __len__(self) -> int:
        with self._lock:
            return len(self._executors)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._executors
