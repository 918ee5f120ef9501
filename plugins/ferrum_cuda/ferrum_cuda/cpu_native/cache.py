"""The compiled-kernel cache: load only what this user built, and never leave
a compiler running.

A library in ``$FERRUM_HOME/kernels`` is loaded only when it, its directory and
the record written beside it at build time are this user's and writable by
nobody else, and the library's sha256 is the one recorded: a library planted by
someone else, or damaged (random bytes, truncated), is rebuilt before anything
maps it. The compiler runs in its own process group, killed with everything it
started when this process dies (even by SIGKILL) or the build times out.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ferrum_core.plugin import file_sha256, trust_problem, write_private_file

__all__ = [
    "compile_dying_with_parent",
    "record_library",
    "record_path",
    "shorten",
    "verify_library",
]


def record_path(library: Path) -> Path:
    return library.with_suffix(".json")


def verify_library(library: Path) -> str | None:
    """Why ``library`` must not be loaded (``None``: it is the one this user built)."""
    if not library.exists() and not library.is_symlink():
        return f"{library.name} is not built yet"
    record = record_path(library)
    problem = (
        trust_problem(library.parent, directory=True)
        or trust_problem(library)
        or trust_problem(record)
    )
    if problem is not None:
        return problem
    try:
        wanted = json.loads(record.read_bytes())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{record} is not a build record"
    if file_sha256(library) != wanted:
        return f"{library} is not the library that was built (sha256 differs)"
    return None


def record_library(built: Path, library: Path) -> None:
    """Put ``built`` in place as ``library`` with its record (mode 755/644)."""
    built.chmod(0o755)
    record = {"sha256": file_sha256(built), "size": built.stat().st_size}
    write_private_file(record_path(library), json.dumps(record).encode())
    os.replace(built, library)


def shorten(message: str, limit: int = 400) -> str:
    """A compiler's stderr on one line: its error lines first, at most ``limit`` chars."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    text = " | ".join(errors or lines) or "no message"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The watcher reads the compiler's process group, then waits: "done" ends it,
# end of file (this process died) kills the group.
_WATCH = 'read pg; read word; [ "$word" = done ] || kill -9 "-$pg" 2>/dev/null'

_PRCTL = None
if sys.platform == "linux":
    try:
        _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL when the parent dies."""
    if _PRCTL is not None:
        _PRCTL(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL


def compile_dying_with_parent(
    argv: list[str], timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (a compiler) to completion; it and the processes it starts
    never outlive this process, nor ``timeout`` seconds."""
    read_end, write_end = os.pipe()
    try:
        watcher = subprocess.Popen(
            ["/bin/sh", "-c", _WATCH],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(read_end)
    verdict = b"kill\n"
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )
        os.write(write_end, f"{proc.pid}\n".encode())
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            _kill_group(proc.pid)
            proc.communicate()
            verdict = b"done\n"  # killed and reaped here: nothing for the watcher
            raise
        verdict = b"done\n"
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
    finally:
        with contextlib.suppress(OSError):
            os.write(write_end, verdict)
        os.close(write_end)
        watcher.wait()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
