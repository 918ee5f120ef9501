"""Rope settings from either ``config.json`` layout.

Classic configs put ``rope_theta`` at the top level and scaling in
``rope_scaling`` (``type`` or ``rope_type``); ``transformers`` 5 writes one
nested ``rope_parameters`` object holding both. A config may carry both
layouts; they must then agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ferrum_core.errors import ConfigError

__all__ = ["SUPPORTED_ROPE_TYPES", "RopeScaling", "parse_rope"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_DEFAULT_THETA = 10000.0


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """Normalised rope scaling: ``rope_type`` is ``default``, ``linear`` or ``llama3``."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None


def _normalise(section: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"key {section!r} must be an object, got {value!r}")
    if value and all(isinstance(v, dict) for v in value.values()):
        # Per-layer-type parameters: fine as long as every layer type agrees.
        variants = list(value.values())
        if any(v != variants[0] for v in variants[1:]):
            raise ConfigError(f"key {section!r} differs per layer type, which is not supported")
        value = variants[0]
    out = dict(value)
    if "type" in out:
        legacy = out.pop("type")
        if out.setdefault("rope_type", legacy) != legacy:
            raise ConfigError(f"keys '{section}.type' and '{section}.rope_type' disagree")
    return out


def _name(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _number(params: dict[str, Any], key: str, where: dict[str, str]) -> float:
    name = _name(where.get(key, "rope_scaling"), key)
    value = params.get(key)
    if value is None:
        raise ConfigError(f"missing required key {name!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        0 < value < math.inf
    ):
        raise ConfigError(f"key {name!r} must be a finite number > 0, got {value!r}")
    return float(value)


def parse_rope(data: dict[str, Any]) -> tuple[float, RopeScaling]:
    """Return ``(rope_theta, RopeScaling)``."""
    merged: dict[str, Any] = {}
    where: dict[str, str] = {}  # key -> section it came from ("" = top level)
    top = {"rope_theta": data.get("rope_theta")}
    sections = (
        ("", top),
        ("rope_scaling", _normalise("rope_scaling", data.get("rope_scaling"))),
        ("rope_parameters", _normalise("rope_parameters", data.get("rope_parameters"))),
    )
    for section, params in sections:
        for key, value in params.items():
            if value is None:
                continue
            if key in merged and merged[key] != value:
                raise ConfigError(
                    f"key {_name(section, key)!r} ({value!r}) contradicts "
                    f"{_name(where[key], key)!r} ({merged[key]!r})"
                )
            merged[key] = value
            where[key] = section
    theta = _number(merged, "rope_theta", where) if "rope_theta" in merged else _DEFAULT_THETA
    rope_type = merged.get("rope_type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"key 'rope_type' is {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    partial = merged.get("partial_rotary_factor", data.get("partial_rotary_factor"))
    if partial is not None and partial != 1.0:
        raise ConfigError(f"key 'partial_rotary_factor' is {partial!r}; only 1.0 is supported")
    if rope_type == "default":
        return theta, RopeScaling()
    factor = _number(merged, "factor", where)
    if rope_type == "linear":
        return theta, RopeScaling(rope_type="linear", factor=factor)
    low = _number(merged, "low_freq_factor", where)
    high = _number(merged, "high_freq_factor", where)
    if low >= high:
        raise ConfigError(
            f"rope 'low_freq_factor' ({low}) must be below 'high_freq_factor' ({high})"
        )
    original = int(_number(merged, "original_max_position_embeddings", where))
    return theta, RopeScaling(
        rope_type="llama3",
        factor=factor,
        low_freq_factor=low,
        high_freq_factor=high,
        original_max_position_embeddings=original,
    )
