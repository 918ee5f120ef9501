"""``FERRUM_BATCH_DECODE_PROF``: where a ``batch_decode`` call spends its time.

Prints the reference's line on every 8th call of an executor (calls 0, 8, 16...)::

    [exec-batch-decode-prof] call#8 m=4 total=812us prep=21us \
        model_block=770us(lock_acq=3us model_call=760us) wrap=21us

(one line; broken here to fit). ``prep`` is parsing and validating the
inputs, ``model_block`` waiting for the model lock plus the model call
(``lock_acq`` and ``model_call``), ``wrap`` building the outputs. Off (the
default), nothing is timed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from ferrum_core.llm.decoder import UnifiedItem
from ferrum_core.llm.metadata import ProfileFlags
from ferrum_core.llm.session import StepTimes

__all__ = ["DECODE_PROF_EVERY", "DecodeProfiler", "report_prefill"]

DECODE_PROF_EVERY = 8


def _us(seconds: float) -> int:
    return int(seconds * 1e6)


class DecodeProfiler:
    """Counts one executor's profiled ``batch_decode`` calls and prints every 8th."""

    def __init__(self) -> None:
        self._calls = itertools.count()

    def report(self, m: int, t0: float, t_prep: float, t_model: float, times: StepTimes) -> None:
        """``t0`` call start, ``t_prep`` inputs ready, ``t_model`` model done (perf_counter)."""
        n = next(self._calls)
        if n % DECODE_PROF_EVERY:
            return
        now = time.perf_counter()
        ProfileFlags.emit(
            f"[exec-batch-decode-prof] call#{n} m={m} total={_us(now - t0)}us"
            f" prep={_us(t_prep - t0)}us model_block={_us(t_model - t_prep)}us"
            f"(lock_acq={_us(times.lock_acq)}us model_call={_us(times.model_call)}us)"
            f" wrap={_us(now - t_model)}us"
        )


def report_prefill(items: Sequence[UnifiedItem], native: bool, t0: float) -> None:
    """``FERRUM_BATCH_PREFILL_PROF``: the reference's line for every ``batch_prefill``."""
    ProfileFlags.emit(
        f"[batch-prefill] n_items={len(items)} total_q={sum(len(i.tokens) for i in items)}"
        f" fallback={not native} elapsed={_us(time.perf_counter() - t0)}us"
    )
