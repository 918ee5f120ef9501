"""Plugin discovery: entry points in group ``ferrum``, loaded through pluggy.

Every fault is contained to the plugin that caused it and reported with a
one-line reason; ``FERRUM_STRICT_PLUGINS`` turns faults into errors and
``FERRUM_PLUGINS`` limits which entry points load.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from ferrum_core import hookspecs
from ferrum_core.backends import BackendDescriptor, BackendRegistry, ProbeResult
from ferrum_core.errors import PluginError
from ferrum_core.protocol.capabilities import ExecutorCapabilities
from ferrum_core.protocol.executor import ModelExecutorFactory

__all__ = [
    "ENTRY_POINT_GROUP",
    "Discovery",
    "PluginRecord",
    "PluginState",
    "discover",
    "strict_mode",
]

ENTRY_POINT_GROUP = "ferrum"
_TRUTHY = {"1", "true", "yes", "on"}


class PluginState(StrEnum):
    LOADED = "loaded"
    FAILED = "failed"
    INCOMPATIBLE = "incompatible"
    DISABLED = "disabled"


@dataclass
class PluginRecord:
    entry_point: str
    distribution: str
    version: str
    state: PluginState = PluginState.LOADED
    reason: str = ""


@dataclass
class Discovery:
    plugins: list[PluginRecord] = field(default_factory=list)
    registry: BackendRegistry = field(default_factory=BackendRegistry)


class _Incompatible(Exception):
    pass


def strict_mode(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("FERRUM_STRICT_PLUGINS", "").strip().lower() in _TRUTHY


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _allowed(environ: Mapping[str, str]) -> set[str] | None:
    raw = environ.get("FERRUM_PLUGINS")
    if raw is None or not raw.strip():
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def discover(environ: Mapping[str, str] | None = None) -> Discovery:
    """Load every ``ferrum`` entry point and collect the backends they register."""
    env = os.environ if environ is None else environ
    strict = strict_mode(env)
    allowed = _allowed(env)
    result = Discovery(registry=BackendRegistry(strict=strict))
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        record = PluginRecord(
            entry_point=ep.name,
            distribution=dist.name if dist is not None else "",
            version=dist.version if dist is not None else "",
        )
        result.plugins.append(record)
        if allowed is not None and ep.name not in allowed:
            record.state = PluginState.DISABLED
            record.reason = "not listed in FERRUM_PLUGINS"
            continue
        _load(ep, record, manager, result.registry)
        if strict and record.state != PluginState.LOADED:
            raise PluginError(f"plugin {ep.name} ({record.distribution}): {record.reason}")
    return result


def _load(
    ep: EntryPoint, record: PluginRecord, manager: pluggy.PluginManager, registry: BackendRegistry
) -> None:
    try:
        module = importlib.import_module(ep.module)
        plugin = ep.load()  # the module itself, or the object named after ``:``
    except BaseException as exc:  # SystemExit in a plugin must not end the host
        record.state, record.reason = PluginState.FAILED, _one_line(exc)
        return
    declared = getattr(module, "FERRUM_API_VERSION", None)
    if declared != hookspecs.API_VERSION:
        record.state = PluginState.INCOMPATIBLE
        record.reason = (
            f"plugin API version {declared!r}; this ferrum-core speaks {hookspecs.API_VERSION}"
        )
        return
    pending: list[BackendDescriptor] = []
    try:
        # Two distributions may use the same entry-point name: key pluggy by both.
        manager.register(plugin, name=f"{record.distribution}:{ep.name}")
        manager.check_pending()  # a misspelled hook is a fault, not a silent no-op
        caller = manager.subset_hook_caller(
            "ferrum_register_backends",
            remove_plugins=[p for p in manager.get_plugins() if p is not plugin],
        )
        caller(register=_register_callback(pending, record))
    except _Incompatible as exc:
        record.state, record.reason = PluginState.INCOMPATIBLE, str(exc)
        _unregister(manager, plugin)
        return
    except PluginError:
        raise
    except BaseException as exc:
        record.state, record.reason = PluginState.FAILED, _one_line(exc)
        _unregister(manager, plugin)
        return
    if not pending:
        record.reason = "registered no backends"
    for descriptor in pending:
        registry.add(descriptor)


def _unregister(manager: pluggy.PluginManager, plugin: object) -> None:
    if manager.is_registered(plugin):
        manager.unregister(plugin)


def _register_callback(
    pending: list[BackendDescriptor], record: PluginRecord
) -> Callable[..., None]:
    def register(
        name: str,
        *,
        factory: Callable[[], ModelExecutorFactory],
        probe: Callable[[], ProbeResult],
        priority: int,
        capabilities: ExecutorCapabilities | None = None,
        api_version: int = hookspecs.API_VERSION,
        description: str = "",
        **unknown: Any,
    ) -> None:
        if api_version != hookspecs.API_VERSION:
            raise _Incompatible(
                f"backend {name!r} declares API version {api_version!r}; "
                f"this ferrum-core speaks {hookspecs.API_VERSION}"
            )
        if unknown:
            raise TypeError(f"register() got unexpected arguments {sorted(unknown)}")
        if not isinstance(name, str) or not name:
            raise TypeError("backend name must be a non-empty string")
        if not callable(factory) or not callable(probe):
            raise TypeError(f"backend {name!r}: factory and probe must be callables")
        pending.append(
            BackendDescriptor(
                name=name,
                factory_loader=factory,
                probe=probe,
                priority=int(priority),
                capabilities=capabilities,
                description=description,
                plugin=record.entry_point,
                distribution=record.distribution,
                version=record.version,
            )
        )

    return register
