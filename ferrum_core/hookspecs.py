"""Ferrum's plugin hooks. A plugin's entry-point module implements them with `hookimpl`.

A distribution declares, in its own metadata, every backend name it registers:
one entry point per name in the group :data:`BACKENDS_GROUP`, e.g.::

    [project.entry-points.ferrum]
    mine = "my_plugin.plugin"

    [project.entry-points."ferrum.backends"]
    mine = "my_plugin.plugin"

Registering a name the distribution does not declare fails the plugin; the
names in :data:`RESERVED_BACKEND_NAMES` belong to Ferrum's own distributions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from ferrum_core.probing import ProbeResult
    from ferrum_core.protocol.capabilities import ExecutorCapabilities
    from ferrum_core.protocol.executor import ModelExecutorFactory

__all__ = [
    "API_VERSION",
    "BACKENDS_GROUP",
    "BACKEND_NAME_PATTERN",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "PROJECT",
    "RESERVED_BACKEND_NAMES",
    "RegisterBackend",
    "hookimpl",
    "hookspec",
    "ferrum_register_backends",
]

PROJECT = "ferrum"
API_VERSION = 1
"""Plugin API major version; an entry-point module declares `FERRUM_API_VERSION = 1`."""

BACKENDS_GROUP = "ferrum.backends"
"""Entry-point group in which a distribution names each backend it registers."""

RESERVED_BACKEND_NAMES: dict[str, str] = {
    "cuda": "ferrum-cuda",
    "torch": "ferrum-cuda",
    "cpu": "ferrum-cpu",
    "mlx": "ferrum-mlx",
}
"""Backend name -> the only distribution that may register it."""

BACKEND_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
"""A backend name: lowercase letters, digits, ``-`` and ``_``, at most 32 characters."""

MIN_PRIORITY = 0
MAX_PRIORITY = 100
"""Bounds of a registered (or probed) priority, inclusive."""



class RegisterBackend(Protocol):
    """The ``register`` callback handed to :func:`ferrum_register_backends`."""

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
        details: Callable[[], dict[str, object]] | None = None,
    ) -> None: ...


hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ferrum_register_backends(register: RegisterBackend) -> None:
    """Register this plugin's backends: ``register(name, factory=..., probe=..., priority=...)``.

    ``name`` is a short lowercase identifier declared in the distribution's
    ``ferrum.backends`` entry points; ``priority`` an int from 0 to 100;
    ``factory`` and ``probe`` callables taking no arguments (the probe returns a
    ``ProbeResult`` within ``ferrum_core.probing.PROBE_TIMEOUT_S`` seconds);
    ``capabilities`` an ``ExecutorCapabilities`` or None; ``details`` None or a
    callable taking no arguments that returns a JSON-able dict of backend facts
    (``ferrum info NAME --json`` prints it under ``"details"``). An invalid call
    fails the plugin.
    """
