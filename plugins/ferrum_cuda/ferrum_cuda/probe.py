"""Cheap availability probes for the `cuda` and `torch` backends.

They read package metadata and look for driver files; they never import torch
(``ferrum list-backends`` must stay fast). The factories confirm with torch.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
from pathlib import Path

from ferrum_core.plugin import ProbeResult

__all__ = ["torch_version", "nvidia_driver_present", "probe_cuda", "probe_torch"]

_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl")


def torch_version() -> str | None:
    """The installed torch's version string (e.g. ``2.13.0+cpu``), or ``None``."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def nvidia_driver_present() -> bool:
    if any(Path(name).exists() for name in _DRIVER_FILES):
        return True
    return ctypes.util.find_library("cuda") is not None


def _cpu_only(version: str) -> bool:
    local = version.partition("+")[2].lower()
    return local == "cpu" or local.startswith("cpu.")


def probe_cuda() -> ProbeResult:
    version = torch_version()
    if version is None:
        return ProbeResult(False, "torch is not installed")
    if _cpu_only(version):
        return ProbeResult(False, f"torch {version} is a CPU-only build")
    if not nvidia_driver_present():
        return ProbeResult(False, "no NVIDIA driver found")
    return ProbeResult(True, f"torch {version} with an NVIDIA driver")


def probe_torch() -> ProbeResult:
    version = torch_version()
    if version is None:
        return ProbeResult(False, "torch is not installed")
    return ProbeResult(True, f"torch {version} on the CPU")
