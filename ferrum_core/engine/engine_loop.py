"""`EngineLoop`: the one daemon thread that steps an `LLM`'s engine for `AsyncLLM`.

Callers hand it commands (add, abort, forget: small callables run in the thread
with the `LLM`'s lock held) and wake it; it steps the engine while any request
is unfinished and sleeps otherwise; ``after_step`` runs after every step (and
after commands), still in the thread, to hand the step's outputs over at once.
Every step takes the same lock as the synchronous `LLM` calls, so a thread using
the `LLM` directly shares the batches and never steps concurrently with the loop.
A failing step fails the requests in flight (through `LLM._step`); a failing
command is logged; the thread survives both.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ferrum_core.engine.outputs import EngineStats

if TYPE_CHECKING:
    from ferrum_core.engine.llm import LLM

__all__ = ["EngineLoop"]

log = logging.getLogger(__name__)

Command = Callable[[], None]


class EngineLoop:
    def __init__(self, llm: LLM, *, on_exit: Command | None = None,
                 after_step: Command | None = None) -> None:
        self._llm = llm
        self._after_step = after_step
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._on_exit = on_exit
        self.num_steps = 0
        self.last_stats: EngineStats = llm.engine.load()
        self.thread = threading.Thread(target=self._run, name="ferrum-engine-loop", daemon=True)
        self.thread.start()

    @property
    def is_alive(self) -> bool:
        return self.thread.is_alive() and not self._stopping

    def submit(self, command: Command) -> None:
        """Run ``command`` in the loop thread (lock held) before its next step."""
        self._commands.put(command)
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread after its current step (returns once it has exited)."""
        self._stopping = True
        self._wake.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _run(self) -> None:
        llm = self._llm
        while True:
            self._wake.wait()
            self._wake.clear()  # before draining: a later submit wakes the next wait
            if self._stopping:
                break
            with llm._lock:
                self._drain()
                busy = llm.engine.has_unfinished_requests()
                if busy:
                    self.num_steps += 1
                    llm._step(self._snapshot)  # fresh stats before any delta is seen
                else:
                    self._snapshot()
                self._handed_over()
            if busy:
                self._wake.set()
                time.sleep(0)  # let waiting threads take the lock between steps
        with llm._lock:
            self._drain()
            if self._on_exit is not None:
                self._on_exit()
            self._handed_over()

    def _handed_over(self) -> None:
        """After each locked section: ``after_step`` (hands the step's deltas over)."""
        if self._after_step is not None:
            try:
                self._after_step()
            except Exception:
                log.exception("engine loop hand-over failed")

    def _drain(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            except Exception:  # a command reports its own errors; never kill the loop
                log.exception("engine loop command failed")

    def _snapshot(self) -> None:
        try:
            self.last_stats = self._llm.engine.load()
        except Exception:  # a backend that cannot report its pool mid-shutdown
            log.debug("engine stats unavailable", exc_info=True)
