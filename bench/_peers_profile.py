"""Where batch-1 decode time goes: ONNX Runtime's profiler on ferrum ``cpu`` and on
ONNX Runtime GenAI, side by side (``bench_cpu.py --profile``).

Both engines decode the same prompt with profiling switched on: ONNX Runtime
GenAI through its config (``session_options.enable_profiling``), ferrum ``cpu``
by turning on ``SessionOptions.enable_profiling`` in every ``InferenceSession``
this process creates (the plugin exposes no option for it, and its sessions are
created through ``onnxruntime.InferenceSession``). The traces are then split
per session run; runs much longer than the median (prefill chunks) are dropped,
and per decode token the table shows wall time (from the decode rate), session
run time, and kernel time per operator type.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def profiled_sessions(prefix: Path) -> Iterator[list[Any]]:
    """Every ``onnxruntime.InferenceSession`` made inside profiles to ``prefix*``;
    they are listed in the yielded list (``end_profiling()`` writes a trace)."""
    import onnxruntime as ort

    original = ort.InferenceSession
    made: list[Any] = []

    class Profiled(original):  # type: ignore[misc, valid-type]
        def __init__(self, path: Any, sess_options: Any = None, *args: Any, **kw: Any) -> None:
            options = sess_options or ort.SessionOptions()
            options.enable_profiling = True
            options.profile_file_prefix = str(prefix)
            super().__init__(path, options, *args, **kw)
            made.append(self)

    ort.InferenceSession = Profiled
    try:
        yield made
    finally:
        ort.InferenceSession = original


def ort_genai_profiled(folder: Path, threads: int, prefix: Path) -> Any:
    import onnxruntime_genai as og
    from _peers_cpu import OrtGenAI

    engine = OrtGenAI.__new__(OrtGenAI)
    engine.og = og
    config = og.Config(str(folder))
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1,
               "enable_profiling": str(prefix)}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    engine.model = og.Model(config)
    return engine


def summarise(traces: list[Path]) -> dict[str, Any]:
    """Per decode run: mean session run time and kernel time per op type (ms)."""
    runs: list[tuple[float, float]] = []
    nodes: list[tuple[float, float, str]] = []
    for trace in traces:
        for event in json.loads(trace.read_text()):
            if event.get("cat") == "Session" and event.get("name") == "model_run":
                runs.append((float(event["ts"]), float(event["dur"])))
            elif event.get("cat") == "Node" and str(event.get("name", "")).endswith(
                    "_kernel_time"):
                op = event.get("args", {}).get("op_name", "?")
                nodes.append((float(event["ts"]), float(event["dur"]), op))
    if not runs:
        return {"runs": 0}
    cutoff = 3 * statistics.median(d for _, d in runs)
    decode_runs = sorted((ts, dur) for ts, dur in runs if dur <= cutoff)
    per_op: dict[str, float] = defaultdict(float)
    starts = [ts for ts, _ in decode_runs]
    import bisect

    for ts, dur, op in nodes:
        i = bisect.bisect_right(starts, ts) - 1
        if i >= 0 and ts <= decode_runs[i][0] + decode_runs[i][1]:
            per_op[op] += dur
    n = len(decode_runs)
    return {"runs": n, "dropped_runs": len(runs) - n,
            "run_ms": sum(d for _, d in decode_runs) / n / 1000,
            "ops_ms": {op: t / n / 1000 for op, t in sorted(per_op.items(), key=lambda x: -x[1])}}


def report(results: dict[str, dict[str, Any]]) -> str:
    """A per-token table, one column per engine."""
    names = list(results)
    ops = sorted({op for r in results.values() for op in r.get("ops_ms", {})},
                 key=lambda op: -max(r.get("ops_ms", {}).get(op, 0.0) for r in results.values()))
    head = f"{'ms per decode token':<34}" + "".join(f"{n:>20}" for n in names)
    lines = [head, "-" * len(head)]

    def row(label: str, values: list[float | None]) -> None:
        cells = "".join(f"{'-' if v is None else format(v, '.3f'):>20}" for v in values)
        lines.append(f"{label:<34}{cells}")

    row("wall (1000 / decode tok/s)", [r.get("wall_ms") for r in results.values()])
    row("session run (model_run)", [r.get("run_ms") for r in results.values()])
    row("  kernels, all ops", [sum(r.get("ops_ms", {}).values()) or None
                               for r in results.values()])
    for op in ops:
        row(f"  {op}", [r.get("ops_ms", {}).get(op) for r in results.values()])
    row("outside the session (wall - run)",
        [None if r.get("wall_ms") is None or r.get("run_ms") is None
         else r["wall_ms"] - r["run_ms"] for r in results.values()])
    lines.append("decode runs profiled: " + ", ".join(
        f"{n} {r.get('runs')} (+{r.get('dropped_runs', 0)} prefill dropped)"
        for n, r in results.items()))
    return "\n".join(lines)
