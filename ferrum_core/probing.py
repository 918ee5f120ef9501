"""Running backend probes: guarded, in parallel daemon threads, each within a time limit.

A probe is a plugin's cheap "may this backend run here?" check. Whatever it
does — raise (``SystemExit`` included), return something other than a sound
:class:`ProbeResult`, or hang — it cannot take the host down: the backend is
reported ``unavailable`` with the reason. ``KeyboardInterrupt`` still interrupts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ferrum_core.hookspecs import MAX_PRIORITY, MIN_PRIORITY

__all__ = ["PROBE_TIMEOUT_S", "ProbeResult", "one_line", "run_probes"]

PROBE_TIMEOUT_S = 5.0
"""Seconds a probe may run; one still running then leaves its backend unavailable."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """A cheap availability check's answer; ``priority`` may override the registered one."""

    available: bool
    reason: str = ""
    priority: int | None = None


def _probe_problem(result: object) -> str | None:
    """What is wrong with a probe's answer, or None when it is a sound ProbeResult."""
    if not isinstance(result, ProbeResult):
        return f"returned {type(result).__name__} ({result!r:.60}), not a ProbeResult"
    prio = result.priority
    for name, value, bad in (
        ("available", result.available, not isinstance(result.available, bool)),
        ("reason", result.reason, not isinstance(result.reason, str)),
        ("priority", prio, prio is not None and (type(prio) is not int  # bool is no priority
                                                  or not MIN_PRIORITY <= prio <= MAX_PRIORITY)),
    ):
        if bad:
            return f"returned a ProbeResult whose {name} is invalid: {value!r:.60}"
    return None


@dataclass
class _ProbeRun:
    probe: Callable[[], object]
    result: object = None
    error: BaseException | None = None

    def __call__(self) -> None:
        try:
            self.result = self.probe()
        except BaseException as exc:  # SystemExit in a probe must not end the host
            self.error = exc


def run_probes(
    probes: Sequence[Callable[[], object]], names: Sequence[str]
) -> list[ProbeResult | str]:
    """Each probe's sound :class:`ProbeResult`, or a one-line fault: all run at once and
    share one deadline of :data:`PROBE_TIMEOUT_S` seconds."""
    timeout = PROBE_TIMEOUT_S
    runs = [_ProbeRun(probe) for probe in probes]
    threads = [threading.Thread(target=run, name=f"ferrum-probe-{name}", daemon=True)
               for run, name in zip(runs, names, strict=True)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    outcomes: list[ProbeResult | str] = []
    for run, thread in zip(runs, threads, strict=True):
        thread.join(max(0.0, deadline - time.monotonic()))
        if isinstance(run.error, KeyboardInterrupt):
            raise run.error
        if thread.is_alive():
            outcomes.append(f"did not answer within {timeout:g} s")
        elif run.error is not None:
            outcomes.append(f"raised {one_line(run.error)}")
        elif isinstance(run.result, ProbeResult) and _probe_problem(run.result) is None:
            outcomes.append(run.result)
        else:
            outcomes.append(_probe_problem(run.result) or "returned an unsound answer")
    return outcomes
