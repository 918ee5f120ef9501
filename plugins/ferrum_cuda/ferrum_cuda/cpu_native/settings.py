"""What the executor options ask of the CPU kernels, what is used, and why not.

Executor options (validated by the factory's ``validate_config``):

- ``cpu_kernels`` (bool, default true): the fused fp32 kernels.
- ``cpu_gemm`` (bool, default true): their panel GEMM for the linears (else oneDNN).
- ``cpu_isa`` (``auto`` | ``avx512`` | ``avx2``, default ``auto``): the register tiles.

``FERRUM_CPU_KERNELS``, ``FERRUM_CPU_GEMM`` (``0``/``1``) and ``FERRUM_CPU_ISA``
override them when set (for a run without touching the code that builds the
executor). :func:`choose_native` turns them, the device, the dtype and the KV
dtype into a :class:`NativeUse`, whose :meth:`~NativeUse.report` the executor
shows (``cache_metrics_snapshot()["cpu_kernels"]``): the build in use
(``avx512``, ``avx2``, ``generic`` without either, or ``off``) and the reason when
off. :func:`native_details` is what ``ferrum info torch --json`` prints. No torch
is imported until kernels are loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ferrum_core.errors import FerrumError, InvalidInputError
from ferrum_core.plugin import DataType
from ferrum_cuda.cpu_native.isa import check_isa, cpu_isas, resolve_isa

if TYPE_CHECKING:
    from ferrum_cuda.cpu_native.kernels import CpuKernels

__all__ = ["NativeOptions", "NativeUse", "choose_native", "env_bool", "native_details"]

_BOOL_ENV = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}  # fmt: skip


def env_bool(name: str) -> bool | None:
    """``FERRUM_CPU_KERNELS``-style switch: ``None`` unset, else its value (a typed error
    for anything but 0/1/true/false/yes/no/on/off)."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return None
    if raw not in _BOOL_ENV:
        raise InvalidInputError(f"{name}={os.environ[name]!r}: expected 0 or 1")
    return _BOOL_ENV[raw]


@dataclass(frozen=True, slots=True)
class NativeOptions:
    """The options as given (``kernels``/``gemm``/``isa``: ``cpu_kernels``/``cpu_gemm``/
    ``cpu_isa``), before the environment's overrides."""

    kernels: bool = True
    gemm: bool = True
    isa: str = "auto"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> NativeOptions:
        """Read and check the three options (a typed error names a bad one)."""
        values: dict[str, Any] = {}
        for key, field in (("cpu_kernels", "kernels"), ("cpu_gemm", "gemm")):
            value = options.get(key)
            if value is not None and not isinstance(value, bool):
                raise InvalidInputError(f"executor option {key!r} must be a bool, got {value!r}")
            if value is not None:
                values[field] = value
        if options.get("cpu_isa") is not None:
            values["isa"] = check_isa(options["cpu_isa"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class NativeUse:
    """The kernels one model uses (``kernels`` ``None``: the torch ops; ``reason`` says why)."""

    kernels: CpuKernels | None
    build: str  # "avx512" | "avx2" | "generic" | "off"
    reason: str | None = None
    gemm: bool = False  # the panel GEMM serves the linears
    kv_fused: bool = False  # rope + KV store + attention in C (fp32 KV only)
    kv_reason: str | None = None

    def report(self) -> dict[str, Any]:
        """JSON-able: ``{"use", "reason", "gemm", "attention"}``."""
        attention = "fused" if self.kv_fused else "torch"
        if self.kernels is not None and not self.kv_fused:
            attention += f" ({self.kv_reason})"
        return {
            "use": self.build,
            "reason": self.reason,
            "gemm": "panel" if self.gemm else "onednn",
            "attention": attention,
        }


def _off(reason: str) -> NativeUse:
    return NativeUse(None, "off", reason)


def choose_native(
    options: NativeOptions, device_type: str, dtype: DataType, kv_dtype: DataType
) -> NativeUse:
    """The kernels a model on ``device_type`` (``cpu``, ``cuda``) with this compute dtype
    and KV dtype uses."""
    dtype_name, kv_name = DataType(dtype).value, DataType(kv_dtype).value
    if device_type != "cpu":
        return _off(f"the model runs on {device_type}")
    if dtype_name != "fp32":
        return _off(f"dtype {dtype_name}: the kernels are fp32")
    kernels_on = env_bool("FERRUM_CPU_KERNELS")
    if kernels_on is False or (kernels_on is None and not options.kernels):
        return _off("FERRUM_CPU_KERNELS=0" if kernels_on is False else "cpu_kernels=false")
    from ferrum_cuda.cpu_native.kernels import cpu_kernels, kernels_problem

    isa = resolve_isa(options.isa)
    kernels = cpu_kernels(isa)
    if kernels is None:
        return _off(kernels_problem(isa) or "the kernels did not load")
    gemm_env = env_bool("FERRUM_CPU_GEMM")
    gemm = (options.gemm if gemm_env is None else gemm_env) and isa != "none"
    kv_fused = kv_name == "fp32"
    return NativeUse(
        kernels,
        "generic" if isa == "none" else isa,
        gemm=gemm,
        kv_fused=kv_fused,
        kv_reason=None if kv_fused else f"kv_cache_dtype {kv_name}: the fused attention is fp32",
    )


def native_details() -> dict[str, Any]:
    """What ``ferrum info torch --json`` reports: the ISA a build would use, whether that
    build is cached, where; cheap (no torch, no compile)."""
    from ferrum_cuda.cpu_native.build import compiler, library_path
    from ferrum_cuda.cpu_native.cache import verify_library
    from ferrum_cuda.cpu_native.source import source_digest

    try:
        isa = resolve_isa()
    except FerrumError as exc:  # a bad FERRUM_CPU_ISA: say so, not crash `ferrum info`
        return {"cpu_kernels": {"error": str(exc)}}
    library = library_path(isa)
    return {
        "cpu_kernels": {
            "isa": isa,
            "cpu_isas": list(cpu_isas()),
            "compiler": compiler(),
            "library": None if library is None else str(library),
            "cached": library is not None and verify_library(library) is None,
            "source_sha256": source_digest()[:12],
        },
        "kv_cache_dtypes": ["auto", "fp32", "bf16", "fp16"],
    }
