"""Tensor-parallel scaling on the CPU (issue 16): what the collectives cost per step.

On one CPU socket gloo over loopback cannot speed a 135M model up: the point of
this benchmark is the overhead. Two measurements:

* ``allreduce``: the time of one gloo all-reduce of a ``[rows, hidden]`` fp32 tensor
  (the row-parallel o/down outputs; hidden 576 as the default model) between 2 and
  3 processes, for decode-sized (1, 16 rows) and prefill-sized (256 rows) steps;
  median of ``--iters`` after a warm-up, measured on rank 0.
* ``step``: the default model (SmolLM2-135M, 9 heads / 3 KV heads: TP=1 or 3)
  through the executor at batch 1 and 8: the median decode step, and the time
  rank 0 spends inside all-reduces per step (waiting for the slower rank included).
  Every rank has ``--threads`` threads (default 1, the TP default).

NCCL scaling (the `cuda` backend, one GPU per rank) needs two GPUs and is not
measured here. Run (not part of the test run)::

    FERRUM_HOME=... .venv/bin/python bench/bench_tp.py [--only allreduce|step] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HIDDEN = 576
ROWS = (1, 16, 256)


def _allreduce_rank(rank: int, size: int, port: int, iters: int) -> dict[str, float]:
    import torch
    from ferrum_cuda.tp.group import TpGroup

    torch.set_num_threads(1)
    group = TpGroup(rank=rank, size=size, host="127.0.0.1", port=port, timeout_s=60)
    out = {}
    for rows in ROWS:
        x = torch.randn(rows, HIDDEN)
        times = []
        for i in range(iters + 5):
            t0 = time.perf_counter()
            group.all_reduce(x)
            if i >= 5:
                times.append(time.perf_counter() - t0)
        out[str(rows)] = statistics.median(times) * 1e6
    return out


def bench_allreduce(iters: int) -> dict[str, Any]:
    from ferrum_cuda.tp.group import free_port

    results: dict[str, Any] = {}
    for size in (2, 3):
        port = free_port()
        argv = [sys.executable, __file__, "--_size", str(size), "--_port", str(port),
                "--iters", str(iters)]  # fmt: skip
        workers = [subprocess.Popen([*argv, "--_rank", str(r)]) for r in range(1, size)]
        results[f"tp{size}"] = _allreduce_rank(0, size, port, iters)
        for proc in workers:
            proc.wait(60)
    return results


def bench_step(threads: int, steps: int) -> dict[str, Any]:
    import numpy as np
    from ferrum_core.conformance.harness import Driver, logits_rows

    from ferrum_core.backends import create_executor
    from ferrum_core.protocol import DecodeInput, ExecutorConfig
    from ferrum_core.tensor import HostTensor

    results: dict[str, Any] = {}
    for tp in (1, 3):
        options = {"tensor_parallel_size": tp, "threads": threads, "enable_prefix_caching": False}
        config = ExecutorConfig(max_batch_size=8, executor_options=options,
                                memory_config={"num_kv_blocks": 128})  # fmt: skip
        executor = create_executor(config, backend="torch")
        ops = getattr(getattr(executor, "link", None), "ops", None)
        spent = [0.0]
        if ops is not None:  # time rank 0's all-reduces (waiting for the others included)
            reduce = ops.group.all_reduce

            def timed(
                t: Any, *, startup: bool = False, _r: Any = reduce, spent: Any = spent
            ) -> Any:
                t0 = time.perf_counter()
                out = _r(t, startup=startup)
                spent[0] += time.perf_counter() - t0
                return out

            ops.group.all_reduce = timed
        for batch in (1, 8):
            drv = Driver(executor)
            handles = []
            for b in range(batch):
                row, handle = drv.prefill([1 + b, 100, 200, 300, 400, 500, 600, 700])
                handles.append((int(np.argmax(row)), handle))
            times, reduce_times, counts = [], [], []
            for _ in range(steps):
                inputs = [DecodeInput(HostTensor(np.array([[t]], dtype=np.int64)), h)
                          for t, h in handles]  # fmt: skip
                spent[0], before = 0.0, ops.all_reduces if ops is not None else 0
                t0 = time.perf_counter()
                outs = executor.batch_decode(inputs)
                times.append(time.perf_counter() - t0)
                reduce_times.append(spent[0])
                counts.append((ops.all_reduces if ops is not None else 0) - before)
                handles = [(int(np.argmax(logits_rows(o.logits)[0])), drv.track(o.kv_cache))
                           for o in outs]  # fmt: skip
            drv.close()
            med = statistics.median(times)
            per = statistics.median(reduce_times) / max(1, statistics.median(counts))
            results[f"tp{tp}_batch{batch}"] = {
                "step_ms": round(med * 1e3, 2),
                "allreduces_per_step": int(statistics.median(counts)),
                "allreduce_ms_per_step": round(statistics.median(reduce_times) * 1e3, 2),
                "us_per_allreduce": round(per * 1e6, 1),
            }
        executor.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("allreduce", "step"), default=None)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._rank is not None:
        _allreduce_rank(args._rank, args._size, args._port, args.iters)
        return
    report: dict[str, Any] = {"cpus": os.cpu_count(), "threads_per_rank": args.threads}
    if args.only in (None, "allreduce"):
        report["allreduce_us"] = bench_allreduce(args.iters)
    if args.only in (None, "step"):
        report["decode_step"] = bench_step(args.threads, args.steps)
    report["nccl"] = "not measured: needs two GPUs (this machine has none)"
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for size, rows in report.get("allreduce_us", {}).items():
        cells = ", ".join(f"{r} rows {us:.0f} us" for r, us in rows.items())
        print(f"all-reduce [rows, {HIDDEN}] fp32, {size}: {cells}")
    for key, row in report.get("decode_step", {}).items():
        print(
            f"{key}: step {row['step_ms']} ms, {row['allreduces_per_step']} all-reduces "
            f"= {row['allreduce_ms_per_step']} ms ({row['us_per_allreduce']} us each)"
        )
    print(f"NCCL: {report['nccl']}")


if __name__ == "__main__":
    main()
