"""Compiling the CPU kernels' C source once per CPU, compiler and source.

The library goes to ``$FERRUM_HOME/kernels`` under a hash of everything that
shapes it (source, flags, compiler, CPU flags), so a ``FERRUM_HOME`` shared by
machines never mixes builds, and it is loaded with the argument types of every
exported function. ``None`` when there is no compiler or the build fails.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ferrum_cuda.cpu_kernels_src import kernel_source

__all__ = ["build_library", "gemm_isa"]

# No -ffast-math: only what torch's own build allows (vectorised floor needs no traps).
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
          "-shared", "-fPIC"]  # fmt: skip


_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
_SIGNATURES = {
    "ferrum_rms_norm": [_P, _P, _P, _I, _I, _F],
    "ferrum_add_rms_norm": [_P, _P, _P, _P, _I, _I, _F],
    "ferrum_silu_mul": [_P, _P, _I, _I],
    "ferrum_rope_store": [_P, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P],
    "ferrum_store_columns": [_P, _P, _I, _P, _P, _I, _I, _I, _P, _I, _I, _I],
    "ferrum_decode_attention": [_P, _I, _P, _P, _I, _I, _I, _P, _P, _P, _I, _I, _I, _I, _I, _F],
    "ferrum_pack_panels": [_P, _P, _I, _I],
    "ferrum_panel_gemm": [_P, _I, _P, _P, _P, _I, _I, _I, _I, _P, _I],
    "ferrum_decode_step": [_P, _I, _P, _P, _P, _P, _P, _P, *[_I] * 7, _F, _F, *[_P] * 6,
                           *[_I] * 4, _P, _P, _I],
}


def _cache_dir() -> Path:
    return Path(os.environ.get("FERRUM_HOME") or "~/.cache/ferrum").expanduser() / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def gemm_isa() -> str | None:
    """The register file the panel GEMM's tiles are generated for, ``None``: no tiles.

    ``"avx512"`` (32 registers of 16 floats) or ``"avx2"`` (16 of 8, with FMA).
    ``FERRUM_CPU_ISA=avx2`` builds the AVX2 kernels on an AVX-512 machine too
    (with ``-mno-avx512f``), which is how they are tested and measured here.
    """
    flags = _cpu_flags().split()
    if "avx512f" in flags and os.environ.get("FERRUM_CPU_ISA", "") != "avx2":
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return None


def build_library() -> ctypes.CDLL | None:
    """The kernels for this CPU, compiled (once) and loaded with their signatures."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    isa = gemm_isa()
    source = kernel_source(wide=isa == "avx512")
    flags = [*_FLAGS, "-mno-avx512f"] if isa == "avx2" else _FLAGS
    # -march=native: a FERRUM_HOME shared between machines must not mix their builds.
    key = "\n".join([source, " ".join(flags), compiler, platform.machine(), _cpu_flags()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    target = _cache_dir() / f"ferrum_cpu_{digest}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _say(f"ferrum-cuda: building the fp32 CPU kernels for this CPU ({isa or 'no panel GEMM'}),"
             f" once, into {target.parent} (~10 s)")  # fmt: skip
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src = Path(tmp) / "kernels.c"
            src.write_text(source)
            out = Path(tmp) / "kernels.so"
            done = subprocess.run(
                [compiler, *flags, str(src), "-o", str(out)],
                capture_output=True,
                timeout=120,
                check=False,
            )
            if done.returncode != 0:
                return None
            os.replace(out, target)  # atomic: concurrent builders agree on the result
    # libgomp.so.1 resolves to the copy torch already loaded: one OpenMP runtime.
    lib = ctypes.CDLL(str(target))
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    return lib


def _say(line: str) -> None:
    """One line on an interactive stderr (above any progress bar); silent in scripts."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
