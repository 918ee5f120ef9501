"""Compiling the CPU kernels' C sources once per CPU, compiler, ISA and source.

The library goes to ``$FERRUM_HOME/kernels/ferrum_cpu_<source>_<build>.so``:
``<source>`` is a hash of the C files shipped (:func:`source_digest`), ``<build>``
one of everything else that shapes it (flags, ISA, compiler, CPU flags), so a
``FERRUM_HOME`` shared by machines never mixes builds. Builds of other sources
(an older ferrum-cuda) are removed. A library is loaded only after
:mod:`ferrum_cuda.cpu_native.cache` has checked it is the one this user built,
with the argument types of every exported function.

Without a compiler, or when the build fails, :func:`build_library` returns
``None`` and says so once on stderr; a failed compile keeps the compiler's whole
message in ``$FERRUM_HOME/logs`` and names the file in that line.
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

from ferrum_core.plugin import make_temp_dir, remove_stale_temps, secure_dir, write_private_file
from ferrum_cuda.cpu_native.cache import (
    compile_dying_with_parent,
    record_library,
    record_path,
    shorten,
    verify_library,
)
from ferrum_cuda.cpu_native.isa import Isa, cpu_flags, resolve_isa
from ferrum_cuda.cpu_native.source import ENTRY, source_digest, source_files

__all__ = [
    "build_failure", "build_library", "build_log_path", "compiler", "kernels_dir",
    "library_path", "remove_stale_builds",
]  # fmt: skip

# No -ffast-math: only what torch's own build allows (vectorised floor needs no traps).
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
          "-shared", "-fPIC"]  # fmt: skip
_PREFIX = "ferrum_cpu_"
_LOG_PREFIX = "cpu-kernels-"

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
    # table, layers, norm0 .. scratch, batch .. vocab, eps, scale, cos .. vws, strides,
    # cols, bounds, width
    "ferrum_decode_step": [_P, _I, *[_P] * 6, *[_I] * 7, _F, _F, *[_P] * 6, *[_I] * 4, _P, _P, _I],
}


def _home() -> Path:
    return Path(os.environ.get("FERRUM_HOME") or "~/.cache/ferrum").expanduser()


def kernels_dir() -> Path:
    return _home() / "kernels"


def compiler() -> str | None:
    """``$CC`` (default ``cc``), else ``gcc``, as found on ``PATH``; ``None``: no compiler."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _flags(isa: Isa) -> list[str]:
    wide = [f"-DFERRUM_WIDE={int(isa == 'avx512')}"]
    return [*_FLAGS, *wide, "-mno-avx512f"] if isa == "avx2" else [*_FLAGS, *wide]


def _library_path(cc: str, isa: Isa) -> Path:
    key = "\n".join([" ".join(_flags(isa)), cc, platform.machine(), cpu_flags()])
    build = hashlib.sha256(key.encode()).hexdigest()[:12]
    return kernels_dir() / f"{_PREFIX}{source_digest()[:12]}_{build}.so"


def library_path(isa: Isa | None = None) -> Path | None:
    """Where :func:`build_library` keeps the library for ``isa`` (default: this CPU's
    best, or ``FERRUM_CPU_ISA``); ``None`` without a compiler."""
    cc = compiler()
    return None if cc is None else _library_path(cc, isa or resolve_isa())


def build_log_path(library: Path) -> Path:
    """Where a failed build of ``library`` leaves the compiler's message."""
    return _home() / "logs" / f"{_LOG_PREFIX}{library.stem}.log"


def build_library(isa: Isa | None = None) -> ctypes.CDLL | None:
    """The kernels for this CPU, compiled (once) and loaded with their signatures.

    Only a library this user built, whose sha256 matches its build record, is
    loaded; any other is rebuilt (one line on stderr says why). ``None`` when
    there is no compiler or the build fails: :func:`build_failure` says why.
    """
    _FAILURE.clear()
    isa = isa or resolve_isa()
    cc = compiler()
    if cc is None:
        _fail("no C compiler (CC, cc or gcc on PATH)")
        return None
    target = _library_path(cc, isa)
    directory = target.parent
    refused = secure_dir(directory)
    if refused is not None:
        _fail(f"not using the kernel cache: {refused}; set FERRUM_HOME")
        return None
    remove_stale_temps(directory)
    remove_stale_builds(directory)
    problem = verify_library(target)
    if problem is not None:
        if target.exists() or target.is_symlink() or record_path(target).exists():
            _warn(f"ferrum-cuda: rebuilding the CPU kernels: {problem}")
        else:
            _say(f"ferrum-cuda: building the fp32 CPU kernels for this CPU ({isa}), once,"
                 f" into {directory} (~10 s)")  # fmt: skip
        failure = _compile(cc, _flags(isa), target)
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
_SAID: set[str] = set()  # failure lines already printed by this process


def remove_stale_builds(directory: Path) -> list[Path]:
    """Remove this user's libraries, records and logs built from other C sources."""
    current = f"{_PREFIX}{source_digest()[:12]}_"
    removed = []
    for folder, prefix in ((directory, _PREFIX), (_home() / "logs", _LOG_PREFIX + _PREFIX)):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            name = entry.name.removeprefix(_LOG_PREFIX) if folder != directory else entry.name
            if not entry.name.startswith(prefix) or name.startswith(current):
                continue
            try:
                if entry.lstat().st_uid == os.getuid() and not entry.is_dir():
                    entry.unlink()
                    removed.append(entry)
            except OSError:
                continue
    return removed


def _compile(cc: str, flags: list[str], target: Path) -> str | None:
    """Build ``target`` and its record; the reason when the compiler fails."""
    tmp = make_temp_dir(target.parent, target.stem)
    log = build_log_path(target)
    try:
        for name, data in source_files().items():
            (tmp / name).write_bytes(data)
        out = tmp / "kernels.so"
        argv = [cc, *flags, str(tmp / ENTRY), "-o", str(out)]
        done = compile_dying_with_parent(argv, 120)
        if done.returncode != 0 or not out.is_file():
            message = done.stderr.decode(errors="replace")
            where = _keep_log(log, argv, message)
            return (f"{Path(cc).name} failed (exit {done.returncode}): {shorten(message)}"
                    f"{where}")  # fmt: skip
        record_library(out, target)  # atomic: concurrent builders agree on the result
        log.unlink(missing_ok=True)
        return None
    except subprocess.TimeoutExpired:
        return f"{Path(cc).name} took over 120 s and was stopped"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _keep_log(log: Path, argv: list[str], message: str) -> str:
    """Write the compiler's whole message to ``log``; the clause naming it (or nothing)."""
    if secure_dir(log.parent) is not None:
        return ""
    try:
        write_private_file(log, f"$ {' '.join(argv)}\n{message}".encode())
    except OSError:
        return ""
    return f" (the compiler's whole message: {log})"


def _fail(reason: str) -> None:
    _FAILURE[:] = [reason]
    if reason not in _SAID:
        _SAID.add(reason)
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
