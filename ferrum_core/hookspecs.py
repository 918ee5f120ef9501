"""Ferrum's plugin hooks. A plugin's entry-point module implements them with `hookimpl`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ferrum_core.backends import RegisterBackend

__all__ = ["API_VERSION", "PROJECT", "hookimpl", "hookspec", "ferrum_register_backends"]

PROJECT = "ferrum"
API_VERSION = 1
"""Plugin API major version; an entry-point module declares `FERRUM_API_VERSION = 1`."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ferrum_register_backends(register: RegisterBackend) -> None:
    """Register this plugin's backends: ``register(name, factory=..., probe=..., priority=...)``."""
