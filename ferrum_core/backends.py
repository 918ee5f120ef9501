"""`BackendRegistry`: what plugins register, its states, and deterministic selection."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ferrum_core.errors import (
    BackendSelectionError,
    BackendUnavailableError,
    FerrumError,
    PluginError,
    RegistryError,
    UnknownBackendError,
)
from ferrum_core.hookspecs import MAX_PRIORITY, MIN_PRIORITY, RegisterBackend
from ferrum_core.protocol.capabilities import ExecutorCapabilities
from ferrum_core.protocol.config import ExecutorConfig
from ferrum_core.protocol.executor import ModelExecutor, ModelExecutorFactory

__all__ = [
    "PROBE_TIMEOUT_S", "ProbeResult", "BackendState", "BackendDescriptor", "BackendRecord",
    "BackendRegistry", "RegisterBackend", "get_registry", "reset_registry", "get_backend",
    "create_executor", "one_line", "probe_records",
]

PROBE_TIMEOUT_S = 5.0
"""Seconds a probe may run; one still running then leaves its backend unavailable."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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

    @property
    def source(self) -> str:
        return f"{self.distribution} {self.version} (plugin {self.plugin})"

    def who(self) -> str:
        return f"backend {self.name!r} of {self.source}"

    def factory(self) -> ModelExecutorFactory:
        """Load the factory; a loader that fails or returns a non-factory is a PluginError."""
        try:
            made: object = self.factory_loader()
        except FerrumError:
            raise
        except (Exception, SystemExit) as exc:
            raise PluginError(f"{self.who()}: its factory raised {one_line(exc)}") from exc
        missing = [m for m in ("create_executor", "validate_config")
                   if not callable(getattr(made, m, None))]
        if missing:
            raise PluginError(
                f"{self.who()}: its factory returned {type(made).__name__}, which has no "
                f"{' or '.join(missing)}; expected a ModelExecutorFactory"
            )
        return made  # type: ignore[return-value]  # duck-typed: the two methods used


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


@dataclass
class BackendRegistry:
    """Backends by name. A name claimed twice is a ``duplicate`` for every claimant."""

    records: list[BackendRecord] = field(default_factory=list)
    strict: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _probe_lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, descriptor: BackendDescriptor) -> BackendRecord:
        with self._lock:
            record = BackendRecord(descriptor, priority=descriptor.priority)
            clash = [r for r in self.records if r.name == descriptor.name]
            if clash:
                claimants = [r.descriptor.source for r in [*clash, record]]
                reason = (
                    f"backend name {descriptor.name!r} is registered by "
                    f"{', '.join(claimants[:-1])} and {claimants[-1]}; neither is selected "
                    "(uninstall one, or limit plugins with FERRUM_PLUGINS)"
                )
                if self.strict:
                    raise PluginError(reason)
                for r in [*clash, record]:
                    r.state, r.reason, r.probed = BackendState.DUPLICATE, reason, True
            self.records.append(record)
            return record

    def probe_all(self) -> None:
        """Probe every backend not probed yet, all at once (see :func:`probe_records`)."""
        with self._probe_lock:
            probe_records([r for r in self.records if not r.probed], strict=self.strict)

    def get(self, name: str) -> BackendRecord:
        claimants = [r for r in self.records if r.name == name]
        if not claimants:
            known = ", ".join(sorted({r.name for r in self.records})) or "none"
            raise UnknownBackendError(f"unknown backend {name!r} (registered: {known})")
        record = claimants[0]
        if record.state == BackendState.DUPLICATE:
            raise RegistryError(record.reason)
        with self._probe_lock:
            if not record.probed:
                probe_records([record], strict=self.strict)
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
        except (BackendSelectionError, BackendUnavailableError, UnknownBackendError,
                RegistryError):
            return None
        chosen.selected = True
        return chosen


def _probe_problem(result: object) -> str | None:
    """What is wrong with a probe's answer, or None when it is a sound ProbeResult."""
    if not isinstance(result, ProbeResult):
        return f"returned {type(result).__name__} ({result!r:.60}), not a ProbeResult"
    prio = result.priority
    for name, value, bad in (
        ("available", result.available, not isinstance(result.available, bool)),
        ("reason", result.reason, not isinstance(result.reason, str)),
        ("priority", prio, prio is not None and (type(prio) is not int  # bool is no priority
                                                  or not MIN_PRIORITY <= prio <= MAX_PRIORITY)),
    ):
        if bad:
            return f"returned a ProbeResult whose {name} is invalid: {value!r:.60}"
    return None


@dataclass
class _ProbeRun:
    record: BackendRecord
    result: object = None
    error: BaseException | None = None

    def __call__(self) -> None:
        try:
            self.result = self.record.descriptor.probe()
        except BaseException as exc:  # SystemExit in a probe must not end the host
            self.error = exc


def probe_records(records: Sequence[BackendRecord], *, strict: bool = False) -> None:
    """Run the records' probes in parallel daemon threads, each within ``PROBE_TIMEOUT_S``.

    A probe that raises, returns something other than a sound ``ProbeResult`` or
    does not answer in time leaves its backend ``unavailable`` with that reason
    (a ``PluginError`` in strict mode). A ``KeyboardInterrupt`` still interrupts.
    """
    timeout = PROBE_TIMEOUT_S
    runs = [_ProbeRun(r) for r in records]
    threads = [threading.Thread(target=run, name=f"ferrum-probe-{run.record.name}",
                                daemon=True) for run in runs]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    faults: list[str] = []
    for run, thread in zip(runs, threads, strict=True):
        thread.join(max(0.0, deadline - time.monotonic()))
        record, result, error = run.record, run.result, run.error
        record.probed = True
        if isinstance(error, KeyboardInterrupt):
            raise error
        fault = (f"did not answer within {timeout:g} s" if thread.is_alive()
                 else f"raised {one_line(error)}" if error is not None
                 else _probe_problem(result))
        if fault is not None or not isinstance(result, ProbeResult):
            record.state, record.reason = BackendState.UNAVAILABLE, f"probe {fault}"
            faults.append(f"{record.descriptor.who()}: probe {fault}")
            continue
        record.state = BackendState.AVAILABLE if result.available else BackendState.UNAVAILABLE
        record.reason = result.reason
        if result.priority is not None:
            record.priority = result.priority
    if strict and faults:
        raise PluginError(faults[0])


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
    """Select a backend and build an executor with its factory (checked: a PluginError if not)."""
    descriptor = get_backend(backend)
    factory = descriptor.factory()
    factory.validate_config(config)
    executor: object = factory.create_executor(config)
    if not isinstance(executor, ModelExecutor):
        raise PluginError(
            f"{descriptor.who()}: create_executor returned {type(executor).__name__}, "
            "not a ModelExecutor"
        )
    return executor
