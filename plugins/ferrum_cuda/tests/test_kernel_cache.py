"""The kernel cache loads only what this user built, rebuilds what is damaged,
says why, and leaves no compiler or temporary behind a killed build.

Real gcc builds in child processes: one full build per scenario that needs
one (a planted library, a truncated one), the rest reuse its result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ferrum_cuda.cpu_native.cache import record_library, verify_library

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")

_BUILD = (
    "import sys\n"
    "from ferrum_cuda.cpu_native.build import build_library, build_failure, library_path\n"
    "lib = build_library()\n"
    "print(library_path()); print(lib is not None); print(build_failure())\n"
)

_EVIL_C = """
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(getenv("FERRUM_PWNED"), "w"); if (f) { fputs("ran", f); fclose(f); }
}
"""


def _run(home: Path, *, env: dict[str, str] | None = None) -> tuple[Path, bool, str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _BUILD],
        env={**os.environ, "FERRUM_HOME": str(home), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr  # no SIGBUS, no traceback
    path, loaded, failure = done.stdout.split("\n")[:3]
    return Path(path), loaded == "True", failure, done.stderr


def _planted_library(tmp: Path) -> Path:
    src = tmp / "evil.c"
    src.write_text(_EVIL_C)
    out = tmp / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A planted library under the cache's own name (another user's, with a
    record of its hash): never run, rebuilt, and the rebuilt one loaded."""
    home = tmp_path_factory.mktemp("home")
    target = Path(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from ferrum_cuda.cpu_native.build import library_path as p; print(p())",
            ],
            env={**os.environ, "FERRUM_HOME": str(home)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    target.parent.mkdir(parents=True)
    record_library(_planted_library(home), target)
    if os.getuid() == 0:
        for path in (target, target.with_suffix(".json")):
            os.chown(path, 65534, 65534)
    else:
        target.chmod(0o777)  # a file we cannot chown: world-writable instead
    pwned = home / "pwned"
    path, loaded, failure, stderr = _run(home, env={"FERRUM_PWNED": str(pwned)})
    assert not pwned.exists(), "the planted library's constructor ran"
    assert path == target and loaded, failure
    assert "rebuilding the CPU kernels" in stderr
    assert ("owned by uid 65534" if os.getuid() == 0 else "world-writable") in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert verify_library(target) is None
    return target


def test_rebuilt_library_is_reused_silently(built: Path) -> None:
    stamp = built.stat()
    path, loaded, _, stderr = _run(built.parent.parent)
    assert loaded and path == built and stderr == ""
    assert (built.stat().st_ino, built.stat().st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)


def test_what_is_refused_and_why(built: Path, tmp_path: Path) -> None:
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    lib = kernels / built.name
    shutil.copy(built, lib)
    shutil.copy(built.with_suffix(".json"), lib.with_suffix(".json"))
    assert verify_library(lib) is None
    lib.write_bytes(os.urandom(lib.stat().st_size))  # random bytes, same size
    assert "sha256 differs" in str(verify_library(lib))
    shutil.copy(built, lib)
    lib.with_suffix(".json").unlink()
    assert "json is missing" in str(verify_library(lib))
    shutil.copy(built.with_suffix(".json"), lib.with_suffix(".json"))
    lib.with_suffix(".json").chmod(0o666)
    assert "group/world-writable" in str(verify_library(lib))
    lib.with_suffix(".json").chmod(0o644)
    kernels.chmod(0o777)
    assert "group/world-writable" in str(verify_library(lib))
    kernels.chmod(0o755)
    lib.unlink()
    lib.symlink_to(built)
    assert "symbolic link" in str(verify_library(lib))


def _copy_home(built: Path, home: Path) -> Path:
    kernels = home / "kernels"
    kernels.mkdir(parents=True)
    for path in (built, built.with_suffix(".json")):
        shutil.copy(path, kernels / path.name)
    return kernels / built.name


def test_truncated_library_is_rebuilt_not_sigbus(built: Path, tmp_path: Path) -> None:
    lib = _copy_home(built, tmp_path / "home")
    with open(lib, "r+b") as handle:
        handle.truncate(lib.stat().st_size // 3)
    path, loaded, failure, stderr = _run(tmp_path / "home")
    assert loaded and path == lib, failure
    assert "rebuilding the CPU kernels" in stderr and "sha256 differs" in stderr
    assert lib.read_bytes() == built.read_bytes()


def test_compiler_error_is_the_fallback_reason(tmp_path: Path) -> None:
    cc = tmp_path / "bad-cc"
    cc.write_text('#!/bin/sh\nexec gcc -fno-such-flag-ferrum "$@"\n')
    cc.chmod(0o755)
    path, loaded, failure, stderr = _run(tmp_path / "home", env={"CC": str(cc)})
    assert not loaded
    assert "bad-cc failed" in failure and "-fno-such-flag-ferrum" in failure
    assert stderr.count("\n") == 1 and failure in stderr
    assert [p.name for p in path.parent.iterdir()] == []  # no temporary left


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (process group, command line) of every process now."""
    found: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            found[int(entry.name)] = (int(stat[2]), cmdline)
    return found


def _describe(pids: set[int]) -> list[str]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/stat").read_text()[:80])
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_killed_build_leaves_no_compiler_and_next_run_cleans_up(
    built: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    child = subprocess.Popen(
        [sys.executable, "-c", _BUILD],
        env={**os.environ, "FERRUM_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    compiler_group = None
    deadline = time.monotonic() + 60
    while compiler_group is None and time.monotonic() < deadline and child.poll() is None:
        for group, cmdline in _processes().values():
            if "cc1" in cmdline.split(" ")[0] and str(home) in cmdline:
                compiler_group = group
        time.sleep(0.05)
    assert compiler_group is not None, "the compiler was never seen running"
    # Stopped, the compiler cannot finish on its own: only a kill ends it.
    os.killpg(compiler_group, signal.SIGSTOP)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    survivors = {0}
    deadline = time.monotonic() + 30
    try:
        while survivors and time.monotonic() < deadline:
            survivors = {pid for pid, (grp, _) in _processes().items() if grp == compiler_group}
            time.sleep(0.05)
        assert not survivors, f"the compiler outlived its parent: {_describe(survivors)}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(compiler_group, signal.SIGKILL)
    temps = [p for p in (home / "kernels").iterdir() if ".tmp-" in p.name]
    assert temps, "the killed build left no temporary to clean (killed too late?)"

    lib = home / "kernels" / built.name
    for path in (built, built.with_suffix(".json")):
        shutil.copy(path, lib.parent / path.name)  # the next run needs no build
    path, loaded, failure, _ = _run(home)
    assert loaded and path == lib, failure
    assert sorted(p.name for p in lib.parent.iterdir()) == sorted(
        [lib.name, lib.with_suffix(".json").name]
    )
