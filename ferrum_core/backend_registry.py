"""`BackendRegistry`: what plugins registered (one `BackendDescriptor` per backend), the
states a backend moves through, probing, and deterministic selection.

The process-wide registry built by discovery lives in :mod:`ferrum_core.backends`.
"""

from __future__ import annotations

import json
import os
import threading
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
from ferrum_core.probing import ProbeResult, one_line, run_probes
from ferrum_core.protocol.capabilities import ExecutorCapabilities
from ferrum_core.protocol.executor import ModelExecutorFactory

__all__ = [
    "BackendDescriptor", "BackendRecord", "BackendRegistry", "BackendState", "probe_records",
]


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
    details: Callable[[], object] | None = None

    def describe_details(self) -> dict[str, object] | None:
        """The backend's ``details()`` facts (None when it registered none).

        A ``details`` that raises or returns something other than a JSON-able
        dict yields ``{"error": "<one line>"}``: ``ferrum info`` never fails on it.
        """
        if self.details is None:
            return None
        try:
            facts = self.details()
            if not isinstance(facts, dict):
                raise TypeError(f"details() returned {type(facts).__name__}, not a dict")
            json.dumps(facts)
        except FerrumError as exc:
            return {"error": str(exc)}
        except (Exception, SystemExit) as exc:
            return {"error": f"{self.who()}: details() failed: {one_line(exc)}"}
        return facts

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


def probe_records(records: Sequence[BackendRecord], *, strict: bool = False) -> None:
    """Probe ``records`` in parallel (:func:`~ferrum_core.probing.run_probes`) and set their
    states: a probe that fails, lies or times out leaves its backend ``unavailable`` with
    that reason (a ``PluginError`` in strict mode)."""
    outcomes = run_probes([r.descriptor.probe for r in records], [r.name for r in records])
    faults: list[str] = []
    for record, outcome in zip(records, outcomes, strict=True):
        record.probed = True
        if isinstance(outcome, str):
            record.state, record.reason = BackendState.UNAVAILABLE, f"probe {outcome}"
            faults.append(f"{record.descriptor.who()}: probe {outcome}")
            continue
        record.state = BackendState.AVAILABLE if outcome.available else BackendState.UNAVAILABLE
        record.reason = outcome.reason
        if outcome.priority is not None:
            record.priority = outcome.priority
    if strict and faults:
        raise PluginError(faults[0])
