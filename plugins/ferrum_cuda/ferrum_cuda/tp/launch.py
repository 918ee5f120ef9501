"""The worker processes of rank 0: ``python -m ferrum_cuda.tp.worker`` subprocesses.

Subprocesses rather than multiprocessing's spawn, which re-imports the user's
``__main__``. Each worker reads its spec from ``FERRUM_TP_SPEC`` and holds the
read end of a pipe on its stdin: it exits as soon as that closes, that is when
rank 0 stops it or dies, so no worker outlives its engine. ``stop`` (also run at
garbage collection and interpreter exit) closes the pipes, waits a moment and
kills what is left. Each worker's output goes to ``$FERRUM_HOME/logs/tp-rank<N>-<pid>.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ferrum_core.errors import BackendError
from ferrum_core.plugin import ferrum_home

__all__ = ["SPEC_ENV", "WorkerSet"]

SPEC_ENV = "FERRUM_TP_SPEC"
STOP_GRACE_S = 5.0
T = TypeVar("T")


def _stop(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    for proc in procs:
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class WorkerSet:
    """Ranks ``1 .. size-1`` of a group whose rank 0 is this process."""

    def __init__(self, spec: dict[str, Any], size: int, threads: int) -> None:
        logs = ferrum_home() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        # The package's parent on the path, even where it runs from a source checkout.
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        try:
            for rank in range(1, size):
                env = {**os.environ, SPEC_ENV: json.dumps({**spec, "rank": rank}),
                       "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}  # fmt: skip
                log_path = logs / f"tp-rank{rank}-{os.getpid()}.log"
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "ferrum_cuda.tp.worker"],
                        env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,  # Ctrl-C reaches rank 0, which stops them
                    )  # fmt: skip
                self.procs.append(proc)
                self.logs.append(log_path)
        finally:
            self._finalizer = weakref.finalize(self, _stop, list(self.procs), STOP_GRACE_S)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def dead(self) -> list[str]:
        """``rank N (pid P) exited with status S`` for each worker that has exited."""
        return [
            f"rank {rank} (pid {proc.pid}) exited with status {proc.returncode}{self._tail(rank)}"
            for rank, proc in enumerate(self.procs, start=1)
            if proc.poll() is not None
        ]

    def check(self) -> None:
        """Raise :class:`BackendError` if a worker has exited."""
        dead = self.dead()
        if dead:
            raise BackendError("tensor-parallel worker died: " + "; ".join(dead))

    def while_alive(self, body: Callable[[], T], what: str) -> T:
        """Run ``body`` (which waits on the workers) in a thread, failing fast if one dies."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = body()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=run, name="ferrum-tp-wait", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.05)
            if thread.is_alive() and self.dead():
                raise BackendError(f"tensor-parallel worker died during {what}: "
                                   + "; ".join(self.dead()))  # fmt: skip
        if "error" in box:
            raise box["error"]
        value: T = box["value"]
        return value

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Close the workers' pipes (they exit), kill any still there after ``grace``."""
        self._finalizer.detach()
        _stop(self.procs, grace)

    def _tail(self, rank: int) -> str:
        try:
            lines = self.logs[rank - 1].read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f" (log {self.logs[rank - 1]}: {lines[-1].strip()})" if lines else ""
