"""Which register file the CPU kernels are built for: ``avx512``, ``avx2`` or ``none``.

``avx512``: 32 registers of 16 floats (the wide GEMM tiles and the generated
head-dim 64/128 attention); ``avx2`` (with FMA): 16 registers of 8 floats,
built with ``-mno-avx512f`` so an AVX-512 machine can run (and test) it too;
``none``: neither, so the kernels build without register tiles and the linears
stay on oneDNN. The executor option ``cpu_isa`` (``auto``, ``avx512``,
``avx2``) asks for one; ``FERRUM_CPU_ISA`` overrides it.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from typing import Literal

from ferrum_core.errors import InvalidInputError, UnsupportedError

__all__ = [
    "ISA_CHOICES",
    "Isa",
    "check_isa",
    "cpu_flags",
    "cpu_isas",
    "gemm_isa",
    "resolve_isa",
]

Isa = Literal["avx512", "avx2", "none"]
ISA_CHOICES = ("auto", "avx512", "avx2")
ISA_ENV = "FERRUM_CPU_ISA"


@cache
def cpu_flags() -> str:
    """The CPU's feature flags line (``/proc/cpuinfo``), part of every build's key."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def cpu_isas() -> tuple[Isa, ...]:
    """The register tiles this CPU can run, best first (empty: none)."""
    flags = set(cpu_flags().split())
    found: list[Isa] = []
    if "avx512f" in flags:
        found.append("avx512")
    if {"avx2", "fma"} <= flags:
        found.append("avx2")
    return tuple(found)


def check_isa(value: object, *, source: str = "executor option 'cpu_isa'") -> str:
    """``value`` when it is a choice this CPU can run; a typed error saying why not."""
    if not isinstance(value, str) or value.lower() not in ISA_CHOICES:
        raise InvalidInputError(f"{source} must be one of {', '.join(ISA_CHOICES)}, got {value!r}")
    value = value.lower()
    if value != "auto" and value not in cpu_isas():
        has = ", ".join(cpu_isas()) or "neither AVX-512 nor AVX2 with FMA"
        raise UnsupportedError(f"{source} {value!r}: this CPU cannot run it (it has {has})")
    return value


def resolve_isa(requested: str = "auto") -> Isa:
    """The ISA to build: ``FERRUM_CPU_ISA`` when set, else ``requested``; ``auto`` = best."""
    override = os.environ.get(ISA_ENV, "").strip()
    chosen = check_isa(override, source=ISA_ENV) if override else check_isa(requested)
    if chosen == "avx512":
        return "avx512"
    if chosen == "avx2":
        return "avx2"
    best = cpu_isas()
    return best[0] if best else "none"


def gemm_isa() -> Isa | None:
    """The register file the panel GEMM's tiles are built for by default (``None``: no
    tiles): :func:`resolve_isa` of ``auto``, so ``FERRUM_CPU_ISA`` applies."""
    isa = resolve_isa()
    return None if isa == "none" else isa
