"""`BackendRegistry`: what plugins register, its states, and deterministic selection."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from ferrum_core.errors import (
    BackendSelectionError,
    BackendUnavailableError,
    PluginError,
    UnknownBackendError,
)
from ferrum_core.protocol.capabilities import ExecutorCapabilities
from ferrum_core.protocol.config import ExecutorConfig
from ferrum_core.protocol.executor import ModelExecutor, ModelExecutorFactory

__all__ = [
    "ProbeResult",
    "BackendState",
    "BackendDescriptor",
    "BackendRecord",
    "BackendRegistry",
    "RegisterBackend",
    "get_registry",
    "reset_registry",
    "get_backend",
    "create_executor",
]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """A cheap availability check's answer; ``priority`` may override the registered one."""

    available: bool
    reason: str = ""
    priority: int | None = None


class BackendState(StrEnum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class BackendDescriptor:
    """What a plugin registered for one backend."""

    name: str
    factory_loader: Callable[[], ModelExecutorFactory]
    probe: Callable[[], ProbeResult]
    priority: int
    capabilities: ExecutorCapabilities | None = None
    description: str = ""
    plugin: str = ""  # entry-point name
    distribution: str = ""
    version: str = ""

    def factory(self) -> ModelExecutorFactory:
        return self.factory_loader()


@dataclass
class BackendRecord:
    descriptor: BackendDescriptor
    state: BackendState = BackendState.UNAVAILABLE
    reason: str = ""
    priority: int = 0
    selected: bool = False
    probed: bool = False

    @property
    def name(self) -> str:
        return self.descriptor.name


class RegisterBackend(Protocol):
    def __call__(
        self,
        name: str,
        *,
        factory: Callable[[], ModelExecutorFactory],
        probe: Callable[[], ProbeResult],
        priority: int,
        capabilities: ExecutorCapabilities | None = None,
        api_version: int = 1,
        description: str = "",
    ) -> None: ...


@dataclass
class BackendRegistry:
    """Backends by name. The first distribution to claim a name keeps it."""

    records: list[BackendRecord] = field(default_factory=list)
    strict: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, descriptor: BackendDescriptor) -> BackendRecord:
        with self._lock:
            owner = self._owner(descriptor.name)
            record = BackendRecord(descriptor, priority=descriptor.priority)
            if owner is not None:
                a, b = owner.descriptor, descriptor
                record.state = BackendState.DUPLICATE
                record.probed = True
                record.reason = (
                    f"backend name {b.name!r} is already registered by {a.distribution} "
                    f"{a.version} (plugin {a.plugin}); {b.distribution} {b.version} "
                    f"(plugin {b.plugin}) registers it too"
                )
                if self.strict:
                    raise PluginError(record.reason)
            self.records.append(record)
            return record

    def _owner(self, name: str) -> BackendRecord | None:
        for record in self.records:
            if record.name == name and record.state != BackendState.DUPLICATE:
                return record
        return None

    def probe_all(self) -> None:
        for record in self.records:
            if not record.probed:
                _probe(record)

    def get(self, name: str) -> BackendRecord:
        record = self._owner(name)
        if record is None:
            known = ", ".join(sorted({r.name for r in self.records})) or "none"
            raise UnknownBackendError(f"unknown backend {name!r} (registered: {known})")
        if not record.probed:
            _probe(record)
        return record

    def select(
        self, explicit: str | None = None, environ: Mapping[str, str] | None = None
    ) -> BackendRecord:
        """Explicit name > ``FERRUM_BACKEND`` > highest priority among available backends."""
        env = os.environ if environ is None else environ
        name = explicit or env.get("FERRUM_BACKEND") or None
        if name:
            record = self.get(name)
            if record.state != BackendState.AVAILABLE:
                raise BackendUnavailableError(f"backend {name!r} is unavailable: {record.reason}")
            return record
        self.probe_all()
        available = [r for r in self.records if r.state == BackendState.AVAILABLE]
        if not available:
            raise BackendUnavailableError(
                "no backend is available; install one, e.g. `pip install ferrum-cuda`"
                " (see `ferrum list-backends`)"
            )
        top = max(r.priority for r in available)
        tied = sorted(r.name for r in available if r.priority == top)
        if len(tied) > 1:
            raise BackendSelectionError(
                f"backends {' and '.join(tied)} share the top priority {top}; "
                "choose one with --backend or FERRUM_BACKEND"
            )
        return next(r for r in available if r.priority == top)

    def mark_selected(self, environ: Mapping[str, str] | None = None) -> BackendRecord | None:
        """Flag the backend selection would pick without an explicit name (None if it fails)."""
        for record in self.records:
            record.selected = False
        try:
            chosen = self.select(None, environ)
        except (BackendSelectionError, BackendUnavailableError, UnknownBackendError):
            return None
        chosen.selected = True
        return chosen


def _probe(record: BackendRecord) -> None:
    record.probed = True
    try:
        result = record.descriptor.probe()
    except Exception as exc:  # a probe bug marks that backend, nothing else
        record.state = BackendState.UNAVAILABLE
        record.reason = f"probe raised {type(exc).__name__}: {exc}"
        return
    record.state = BackendState.AVAILABLE if result.available else BackendState.UNAVAILABLE
    record.reason = result.reason
    if result.priority is not None:
        record.priority = result.priority


_REGISTRY: BackendRegistry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> BackendRegistry:
    """The process-wide registry, discovered from entry points on first use."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            from ferrum_core.plugins import discover

            _REGISTRY = discover().registry
        return _REGISTRY


def reset_registry(registry: BackendRegistry | None = None) -> None:
    """Forget (or replace) the process-wide registry; tests and long-lived hosts use it."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        _REGISTRY = registry


def get_backend(name: str | None = None) -> BackendDescriptor:
    return get_registry().select(name).descriptor


def create_executor(config: ExecutorConfig, backend: str | None = None) -> ModelExecutor:
    """Select a backend and build an executor with its factory."""
    factory = get_backend(backend).factory()
    factory.validate_config(config)
    return factory.create_executor(config)
