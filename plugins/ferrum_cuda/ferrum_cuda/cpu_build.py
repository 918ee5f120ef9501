"""Compiling the CPU kernels' C source once per CPU, compiler and source.

The library goes to ``$FERRUM_HOME/kernels`` under a hash of everything that
shapes it (source, flags, compiler, CPU flags), so a ``FERRUM_HOME`` shared by
machines never mixes builds, and it is loaded (after :mod:`ferrum_cuda.kernel_cache`
has checked it is the one this user built) with the argument types of every
exported function. ``None`` when there is no compiler or the build fails, with
the reason (the compiler's message, shortened) in :func:`build_failure`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from ferrum_core.plugin import make_temp_dir, remove_stale_temps, secure_dir
from ferrum_cuda.cpu_kernels_src import kernel_source
from ferrum_cuda.kernel_cache import (
    compile_dying_with_parent,
    record_library,
    record_path,
    shorten,
    verify_library,
)

__all__ = ["build_failure", "build_library", "gemm_isa", "library_path"]

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
    "ferrum_decode_step": [
        _P,
        _I,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        *[_I] * 7,
        _F,
        _F,
        *[_P] * 6,
        *[_I] * 4,
        _P,
        _P,
        _I,
    ],
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


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _library_path(compiler: str, source: str, flags: list[str]) -> Path:
    # -march=native: a FERRUM_HOME shared between machines must not mix their builds.
    key = "\n".join([source, " ".join(flags), compiler, platform.machine(), _cpu_flags()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return _cache_dir() / f"ferrum_cpu_{digest}.so"


def library_path() -> Path | None:
    """Where :func:`build_library` keeps the library for this CPU and compiler."""
    compiler, isa = _compiler(), gemm_isa()
    if compiler is None:
        return None
    flags = [*_FLAGS, "-mno-avx512f"] if isa == "avx2" else _FLAGS
    return _library_path(compiler, kernel_source(wide=isa == "avx512"), flags)


def build_library() -> ctypes.CDLL | None:
    """The kernels for this CPU, compiled (once) and loaded with their signatures.

    Only a library this user built, whose sha256 matches its build record, is
    loaded; any other is rebuilt (one line on stderr says why). ``None`` when
    there is no compiler or the build fails: :func:`build_failure` says why.
    """
    _FAILURE.clear()
    compiler = _compiler()
    if compiler is None:
        _fail("no C compiler (CC, cc or gcc)", quiet=True)
        return None
    isa = gemm_isa()
    source = kernel_source(wide=isa == "avx512")
    flags = [*_FLAGS, "-mno-avx512f"] if isa == "avx2" else _FLAGS
    target = _library_path(compiler, source, flags)
    directory = target.parent
    refused = secure_dir(directory)
    if refused is not None:
        _fail(f"not using the kernel cache: {refused}; set FERRUM_HOME")
        return None
    remove_stale_temps(directory)
    problem = verify_library(target)
    if problem is not None:
        if target.exists() or target.is_symlink() or record_path(target).exists():
            _warn(f"ferrum-cuda: rebuilding the CPU kernels: {problem}")
        else:
            _say(f"ferrum-cuda: building the fp32 CPU kernels for this CPU"
                 f" ({isa or 'no panel GEMM'}), once, into {directory} (~10 s)")  # fmt: skip
        failure = _compile(compiler, flags, source, target)
        if failure is not None:
            _fail(failure)
            return None
        problem = verify_library(target)
        if problem is not None:  # another process replaced it meanwhile
            _fail(f"the library built is not the one found: {problem}")
            return None
    # libgomp.so.1 resolves to the copy torch already loaded: one OpenMP runtime.
    lib = ctypes.CDLL(str(target))
    for name, argtypes in _SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            _fail(f"{target} has no {name}")
            return None
        fn.argtypes, fn.restype = argtypes, None
    return lib


def build_failure() -> str | None:
    """Why the last :func:`build_library` returned ``None`` (``None``: it did not)."""
    return _FAILURE[0] if _FAILURE else None


_FAILURE: list[str] = []


def _compile(compiler: str, flags: list[str], source: str, target: Path) -> str | None:
    """Build ``target`` and its record; the reason when the compiler fails."""
    tmp = make_temp_dir(target.parent, target.stem)
    try:
        src = tmp / "kernels.c"
        src.write_text(source)
        out = tmp / "kernels.so"
        done = compile_dying_with_parent([compiler, *flags, str(src), "-o", str(out)], 120)
        if done.returncode != 0 or not out.is_file():
            message = shorten(done.stderr.decode(errors="replace"))
            return f"{Path(compiler).name} failed (exit {done.returncode}): {message}"
        record_library(out, target)  # atomic: concurrent builders agree on the result
        return None
    except subprocess.TimeoutExpired:
        return f"{Path(compiler).name} took over 120 s and was stopped"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fail(reason: str, *, quiet: bool = False) -> None:
    _FAILURE[:] = [reason]
    if not quiet:
        _warn(f"ferrum-cuda: CPU kernels not used (torch ops instead): {reason}")


def _warn(line: str) -> None:
    """One line on stderr, terminal or not (above any progress bar)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def _say(line: str) -> None:
    """One line on an interactive stderr (above any progress bar); silent in scripts."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
