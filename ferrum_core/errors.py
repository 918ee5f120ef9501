"""Ferrum's error hierarchy.

Every error a user can provoke is a :class:`FerrumError` subclass; the CLI
prints it as one line and exits with status 1.
"""

from __future__ import annotations

__all__ = [
    "FerrumError",
    "UnknownBackendError",
    "BackendUnavailableError",
    "BackendSelectionError",
    "UnsupportedError",
    "InvalidInputError",
    "CapacityError",
    "KvPoolExhaustedError",
    "UnknownCacheError",
    "PluginError",
    "ModelLoadError",
    "ConfigError",
    "RegistryError",
    "ExecutorStateError",
    "BackendError",
]


class FerrumError(Exception):
    """Base class of every error Ferrum raises on purpose."""


class UnknownBackendError(FerrumError):
    """No backend with that name is registered."""


class BackendUnavailableError(FerrumError):
    """The backend is registered but cannot run here (its probe said no)."""


class BackendSelectionError(FerrumError):
    """Automatic selection could not pick exactly one backend."""


class UnsupportedError(FerrumError):
    """The executor or model does not implement this operation."""


class InvalidInputError(FerrumError):
    """Malformed input: wrong shape, out-of-vocabulary id, empty prompt..."""


class CapacityError(InvalidInputError):
    """The request does not fit: prompt over capacity, batch too large."""


class KvPoolExhaustedError(CapacityError):
    """The paged KV pool has no free block left; the caller may preempt and retry."""


class UnknownCacheError(InvalidInputError):
    """A KV cache id that this executor never issued, or already released."""


class PluginError(FerrumError):
    """A plugin failed to import, raised in its hook, or is incompatible."""


class ModelLoadError(FerrumError):
    """Weights or tokenizer files are missing, truncated or mis-shaped."""


class ConfigError(ModelLoadError):
    """config.json is missing a required key or contradicts itself."""


class RegistryError(FerrumError):
    """Duplicate or missing names in a registry."""


class ExecutorStateError(FerrumError):
    """The executor is not in a state that accepts this call (e.g. after shutdown)."""


class BackendError(FerrumError):
    """A backend failed in a way it did not classify; the original is chained."""
