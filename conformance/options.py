"""The run settings every executor of the suite is built with: dtype and executor options.

``ferrum conformance NAME --dtype D --option key=value`` and
``pytest --ferrum-backend NAME --ferrum-dtype D --ferrum-option key=value``
set them; each value is parsed as JSON when it parses (``threads=2`` is the
int 2, ``cpu_kernels=false`` the bool False) and kept as a string otherwise.

A lossy KV cache (executor option ``kv_cache_dtype``, see DESIGN.md "KV dtype")
rounds every stored key and value, so a run with one is judged at the larger of
the compute dtype's tolerance and the KV dtype's (:data:`KV_CACHE_TOLERANCE`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ferrum_core.errors import InvalidInputError, UnsupportedError
from ferrum_core.protocol import ExecutorCapabilities
from ferrum_core.types import DataType

__all__ = [
    "DTYPE_CHOICES", "KV_CACHE_TOLERANCE", "kv_tolerance", "parse_dtype", "parse_option",
    "parse_options", "preflight", "run_dtype",
]

DTYPE_CHOICES = tuple(d.value for d in DataType)

KV_CACHE_TOLERANCE: dict[str, float] = {
    "fp32": 0.0,  # exact storage: the compute dtype's tolerance alone
    "fp16": 4e-3,  # 11-bit significands: ~8x less rounding than bf16
    "bf16": 1.5e-2,  # 8-bit significands; fp32 compute measured at <= 5e-3 on the goldens
}
"""Relative tolerance a KV cache stored in each dtype needs, whatever the compute dtype
(``auto``, the compute dtype itself, adds nothing)."""


def parse_dtype(text: str) -> DataType:
    try:
        return DataType(text.strip().lower())
    except ValueError:
        raise InvalidInputError(
            f"unknown dtype {text!r}: expected one of {', '.join(DTYPE_CHOICES)}"
        ) from None


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` -> ``(key, value)``; the value as JSON when it parses, else the string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InvalidInputError(f"executor option {text!r} is not of the form key=value")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def parse_options(texts: Iterable[str]) -> dict[str, Any]:
    """Several ``key=value`` options; a key given twice is an error, not a silent override."""
    options: dict[str, Any] = {}
    for text in texts:
        key, value = parse_option(text)
        if key in options:
            raise InvalidInputError(f"executor option {key!r} is given twice")
        options[key] = value
    return options


def kv_tolerance(options: dict[str, Any]) -> float:
    """The tolerance the run's ``kv_cache_dtype`` option needs (0.0: none, or ``auto``)."""
    value = options.get("kv_cache_dtype")
    return KV_CACHE_TOLERANCE.get(value.lower(), 0.0) if isinstance(value, str) else 0.0


def run_dtype(requested: DataType | None, caps: ExecutorCapabilities | None) -> DataType:
    """The run's dtype: the one asked for, else fp32 where declared, else the first declared."""
    if requested is not None:
        return requested
    if caps is None or DataType.FP32 in caps.supported_dtypes or not caps.supported_dtypes:
        return DataType.FP32
    return caps.supported_dtypes[0]


def preflight(backend: str, dtype: DataType | None, options: dict[str, Any]) -> None:
    """Refuse, before any check runs, settings the backend cannot take (a FerrumError).

    A dtype the backend does not declare, or a config its factory's ``validate_config``
    rejects (an unknown option value, say), would otherwise skip or fail every check.
    """
    from ferrum_core.conformance.oracle import golden_model, primary_for

    from ferrum_core.backends import get_backend
    from ferrum_core.protocol import ExecutorConfig

    descriptor = get_backend(backend)
    caps = descriptor.capabilities
    chosen = run_dtype(dtype, caps)
    if dtype is not None and caps is not None and dtype not in caps.supported_dtypes:
        declared = ", ".join(d.value for d in caps.supported_dtypes) or "none"
        raise UnsupportedError(
            f"backend {backend!r} does not declare dtype {dtype.value} (it declares {declared})"
        )
    config = ExecutorConfig(
        model_path=str(golden_model(primary_for(chosen)).path),
        dtype=chosen,
        executor_options=dict(options),
    )
    descriptor.factory().validate_config(config)
