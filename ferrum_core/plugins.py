"""Plugin discovery: entry points in group ``ferrum``, loaded through pluggy.

Every fault is contained to the plugin that caused it and reported with a
one-line reason; ``FERRUM_STRICT_PLUGINS`` turns faults into errors and
``FERRUM_PLUGINS`` limits which entry points load. What a plugin registers is
validated, and it may register only the backend names its distribution
declares in the ``ferrum.backends`` entry-point group (reserved names only
from their own distributions).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any

import pluggy
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ferrum_core import hookspecs
from ferrum_core.backend_registry import BackendDescriptor, BackendRegistry
from ferrum_core.errors import PluginError
from ferrum_core.hookspecs import BACKENDS_GROUP, RESERVED_BACKEND_NAMES
from ferrum_core.probing import one_line
from ferrum_core.protocol.capabilities import ExecutorCapabilities

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


class Registration(BaseModel):
    """One ``register(...)`` call, validated (strict: no coercion, right types only)."""

    model_config = ConfigDict(
        strict=True, frozen=True, extra="forbid", arbitrary_types_allowed=True
    )

    name: Annotated[str, Field(pattern=hookspecs.BACKEND_NAME_PATTERN)]
    factory: Callable[[], Any]
    probe: Callable[[], Any]
    priority: Annotated[int, Field(ge=hookspecs.MIN_PRIORITY, le=hookspecs.MAX_PRIORITY)]
    capabilities: ExecutorCapabilities | None = None
    description: str = ""
    details: Callable[[], Any] | None = None


class _Rejected(Exception):
    """A registration the core refused; raised into the hook and recorded."""


def strict_mode(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("FERRUM_STRICT_PLUGINS", "").strip().lower() in _TRUTHY


def _canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _allowed(environ: Mapping[str, str]) -> set[str] | None:
    raw = environ.get("FERRUM_PLUGINS")
    if raw is None or not raw.strip():
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _declarations() -> dict[str, set[str]]:
    """Backend name -> canonical names of the distributions declaring it."""
    declared: dict[str, set[str]] = {}
    for ep in entry_points(group=BACKENDS_GROUP):
        dist = getattr(ep, "dist", None)
        declared.setdefault(ep.name, set()).add(_canonical(dist.name if dist else ""))
    return declared


def discover(environ: Mapping[str, str] | None = None) -> Discovery:
    """Load every ``ferrum`` entry point and collect the backends they register."""
    env = os.environ if environ is None else environ
    strict = strict_mode(env)
    allowed = _allowed(env)
    result = Discovery(registry=BackendRegistry(strict=strict))
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    declared = _declarations()
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
        _load(ep, record, manager, result.registry, declared)
        if strict and record.state != PluginState.LOADED:
            raise PluginError(f"plugin {ep.name} ({record.distribution}): {record.reason}")
    return result


def _load(
    ep: EntryPoint,
    record: PluginRecord,
    manager: pluggy.PluginManager,
    registry: BackendRegistry,
    declared: dict[str, set[str]],
) -> None:
    """Load one plugin into ``record`` and ``registry``."""
    try:
        module = importlib.import_module(ep.module)
        plugin = ep.load()  # the module itself, or the object named after ``:``
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit in a plugin must not end the host
        record.state, record.reason = PluginState.FAILED, one_line(exc)
        return
    api = getattr(module, "FERRUM_API_VERSION", None)
    if api != hookspecs.API_VERSION:
        record.state = PluginState.INCOMPATIBLE
        record.reason = (
            f"plugin API version {api!r}; this ferrum-core speaks {hookspecs.API_VERSION}"
        )
        return
    calls = _Registrations(record, declared)
    try:
        # Two distributions may use the same entry-point name: key pluggy by both.
        manager.register(plugin, name=f"{record.distribution}:{ep.name}")
        manager.check_pending()  # a misspelled hook is a fault, not a silent no-op
        caller = manager.subset_hook_caller(
            "ferrum_register_backends",
            remove_plugins=[p for p in manager.get_plugins() if p is not plugin],
        )
        caller(register=calls.register)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if not calls.faults:
            calls.faults.append((PluginState.FAILED, one_line(exc)))
    if calls.faults:  # the first refusal counts, even if the hook swallowed it
        record.state, record.reason = calls.faults[0]
        _unregister(manager, plugin)
        return
    if not calls.pending:
        record.reason = "registered no backends"
    for descriptor in calls.pending:
        registry.add(descriptor)


def _unregister(manager: pluggy.PluginManager, plugin: object) -> None:
    if manager.is_registered(plugin):
        manager.unregister(plugin)


def _validation_reason(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
        + ("" if err["type"] == "missing" else f" (got {err['input']!r:.40})")
        for err in exc.errors()
    ]
    return "; ".join(" ".join(p.split()) for p in parts)


@dataclass
class _Registrations:
    """The ``register`` callback of one plugin: validates, checks names, collects."""

    record: PluginRecord
    declared: dict[str, set[str]]
    pending: list[BackendDescriptor] = field(default_factory=list)
    faults: list[tuple[PluginState, str]] = field(default_factory=list)

    @property
    def own(self) -> set[str]:
        me = _canonical(self.record.distribution)
        return {name for name, dists in self.declared.items() if me in dists}

    def _refuse(self, reason: str, state: PluginState = PluginState.FAILED) -> _Rejected:
        self.faults.append((state, reason))
        return _Rejected(reason)

    def register(
        self, name: object = None, *, api_version: object = hookspecs.API_VERSION, **kwargs: Any
    ) -> None:
        if api_version != hookspecs.API_VERSION:
            raise self._refuse(
                f"backend {name!r} declares API version {api_version!r}; "
                f"this ferrum-core speaks {hookspecs.API_VERSION}",
                PluginState.INCOMPATIBLE,
            )
        try:
            reg = Registration.model_validate({"name": name, **kwargs})
        except ValidationError as exc:
            raise self._refuse(
                f"invalid register({name!r:.40}): {_validation_reason(exc)}"
            ) from None
        problem = self._ownership_problem(reg.name)
        if problem:
            raise self._refuse(problem)
        record = self.record
        self.pending.append(
            BackendDescriptor(
                name=reg.name, factory_loader=reg.factory, probe=reg.probe,
                priority=reg.priority, capabilities=reg.capabilities,
                description=reg.description, plugin=record.entry_point,
                distribution=record.distribution, version=record.version,
                details=reg.details,
            )
        )

    def _ownership_problem(self, name: str) -> str | None:
        me, dist = _canonical(self.record.distribution), self.record.distribution
        owner = RESERVED_BACKEND_NAMES.get(name)
        if owner is not None and owner != me:
            return f"backend name {name!r} is reserved for {owner}; {dist} may not register it"
        if any(d.name == name for d in self.pending):
            return f"registers backend {name!r} twice"
        if name not in self.own:
            named = ", ".join(sorted(self.own)) or "nothing"
            others = sorted(self.declared.get(name, set()) - {me})
            taken = f" ({' and '.join(others)} declares it)" if others else ""
            return (
                f"registers backend {name!r}, which {dist} does not declare{taken}: its "
                f"{BACKENDS_GROUP!r} entry points name {named}; add {name} = \"<module>\" under "
                f"[project.entry-points.\"{BACKENDS_GROUP}\"]"
            )
        return None
