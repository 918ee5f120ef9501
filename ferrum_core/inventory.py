"""The report behind `ferrum list-backends`: plugins, backends, states, selection."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from ferrum_core.backends import BackendRegistry, reset_registry
from ferrum_core.hookspecs import API_VERSION
from ferrum_core.plugins import discover
from ferrum_core.version import __version__

__all__ = ["PluginEntry", "BackendEntry", "BackendsReport", "backends_report"]


class PluginEntry(BaseModel):
    entry_point: str
    distribution: str
    version: str
    state: str
    reason: str


class BackendEntry(BaseModel):
    name: str
    plugin: str
    distribution: str
    version: str
    state: str
    reason: str
    priority: int
    selected: bool


class BackendsReport(BaseModel):
    ferrum_version: str
    api_version: int
    plugins: list[PluginEntry]
    backends: list[BackendEntry]


def backends_report(environ: Mapping[str, str] | None = None) -> BackendsReport:
    """Discover plugins afresh, probe every backend and mark the one selection picks."""
    found = discover(environ)
    registry: BackendRegistry = found.registry
    registry.probe_all()
    registry.mark_selected(environ)
    reset_registry(registry)
    return BackendsReport(
        ferrum_version=__version__,
        api_version=API_VERSION,
        plugins=[
            PluginEntry(
                entry_point=p.entry_point,
                distribution=p.distribution,
                version=p.version,
                state=p.state.value,
                reason=p.reason,
            )
            for p in found.plugins
        ],
        backends=[
            BackendEntry(
                name=r.name,
                plugin=r.descriptor.plugin,
                distribution=r.descriptor.distribution,
                version=r.descriptor.version,
                state=r.state.value,
                reason=r.reason,
                priority=r.priority,
                selected=r.selected,
            )
            for r in registry.records
        ],
    )
