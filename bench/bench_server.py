"""Drive `ferrum serve` with N concurrent streaming clients and compare with `ferrum bench`.

Both run the same engine settings (model, backend, dtype, threads, max_num_seqs = N) on
random token prompts of --prompt-len, generating exactly --output-len tokens (EOS
ignored, greedy). Prints output tokens/s and time to first token side by side, and the
server/offline throughput ratio (target >= 0.9 at 16 clients), with the CPU seconds
the server process and the client used while driving.

``--variant LABEL:ITEM,...`` adds another server to every round (ITEM: ``K=V`` for
its environment, ``tree=DIR`` to import ``ferrum_core`` from a copy of the sources in
DIR), so that a change is compared with what it replaces in interleaved pairs; the
order of the runs rotates from round to round.

    .venv/bin/python bench/bench_server.py -n 16 --repeat 3 [--model DIR] [--backend B] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

from ferrum_core.engine.benchmark import random_prompts


def _engine_args(args: argparse.Namespace) -> list[str]:
    out = ["--dtype", args.dtype]
    for flag, value in (("--model", args.model), ("--backend", args.backend),
                        ("--threads", args.threads)):
        if value is not None:
            out += [flag, str(value)]
    return out


def offline(args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "ferrum_core.cli.main", "bench", "--json",
               "-n", str(args.num_clients), "--prompt-len", str(args.prompt_len),
               "--output-len", str(args.output_len), "--max-num-seqs", str(args.num_clients),
               *_engine_args(args)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


async def _one(client: httpx.AsyncClient, url: str, prompt: list[int], output_len: int
               ) -> tuple[float, int, float]:
    """(ttft, completion tokens, finish time) of one streamed request."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": output_len, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, tokens = -1.0, 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft < 0 and chunk.get("choices"):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return ttft, tokens, time.perf_counter()


async def _drive(base: str, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    url = f"{base}/v1/completions"
    limits = httpx.Limits(max_connections=len(prompts) + 1)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await _one(client, url, prompts[0], 4)  # warm-up, as `ferrum bench` does
        start = time.perf_counter()
        results = await asyncio.gather(*(_one(client, url, p, output_len) for p in prompts))
    wall = max(r[2] for r in results) - start
    ttfts = sorted(r[0] for r in results)
    generated = sum(r[1] for r in results)
    return {"wall_s": wall, "generated_tokens": generated,
            "output_tokens_per_s": generated / wall, "ttft_mean_s": statistics.mean(ttfts),
            "ttft_p50_s": ttfts[len(ttfts) // 2],
            "ttft_p90_s": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))]}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of every thread of a process so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def served(args: argparse.Namespace, extra_env: dict[str, str] | None = None,
           tree: str | None = None) -> dict[str, Any]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "ferrum_core.cli.main", "serve", "--port", str(port),
               "--served-model-name", "bench", "--max-num-seqs", str(args.num_clients),
               *_engine_args(args)]
    env = {k: v for k, v in os.environ.items() if k != "FERRUM_API_KEY"}
    env.update(extra_env or {})
    # a source tree to import ferrum_core from: `python -m` puts the cwd first on sys.path
    process = subprocess.Popen(command, env=env, cwd=tree)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"ferrum serve exited {process.returncode}")
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        prompts = random_prompts(args.vocab_size, args.num_clients, args.prompt_len,
                                 args.seed)
        server_cpu, client_cpu = _cpu_s(process.pid), _client_cpu_s()
        report = asyncio.run(_drive(base, prompts, args.output_len))
        report["server_cpu_s"] = _cpu_s(process.pid) - server_cpu  # incl. the warm-up
        report["client_cpu_s"] = _client_cpu_s() - client_cpu
        return report
    finally:
        process.terminate()
        process.wait(timeout=60)


def _variant(spec: str) -> tuple[str, dict[str, str], str | None]:
    label, _, items = spec.partition(":")
    env: dict[str, str] = {}
    tree = None
    for item in filter(None, items.split(",")):
        key, _, value = item.partition("=")
        if key == "tree":
            tree = os.path.abspath(value)
        else:
            env[key] = value
    return label, env, tree


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median throughput (its TTFT figures come with it)."""
    ordered = sorted(runs, key=lambda r: r["output_tokens_per_s"])
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--num-clients", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--vocab-size", type=int, default=49152,
                        help="Prompt ids are drawn below this (the default model's vocab).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="Interleaved offline/server rounds; the median run of each counts.")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:ITEM,...",
                        help="Another server per round: ITEM is K=V (environment) or tree=DIR.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    servers = [("serve", {}, None), *(_variant(spec) for spec in args.variant)]
    runs: dict[str, list[dict[str, Any]]] = {"bench": [], **{s[0]: [] for s in servers}}
    jobs: list[tuple[str, Any]] = [("bench", lambda: offline(args))]
    jobs += [(label, lambda env=env, tree=tree: served(args, env, tree))
             for label, env, tree in servers]
    for round_ in range(args.repeat):
        shift = round_ % len(jobs)
        for label, job in jobs[shift:] + jobs[:shift]:
            runs[label].append(job())
    medians = {label: _median_run(r) for label, r in runs.items()}
    engine = medians["bench"]
    ratios = {label: medians[label]["output_tokens_per_s"] / engine["output_tokens_per_s"]
              for label, _, _ in servers}
    if args.json:
        print(json.dumps({"offline": engine, "server": medians["serve"],
                          "ratio": ratios["serve"], "ratios": ratios, "medians": medians,
                          "runs": {k: [r["output_tokens_per_s"] for r in v]
                                   for k, v in runs.items()}}))
        return
    labels = list(runs)
    print(f"{args.num_clients} clients x ({args.prompt_len} -> {args.output_len}), "
          f"{engine['backend']} / {engine['dtype']}, median of {args.repeat}")
    print(f"{'':20}" + "".join(f"{label:>14}" for label in labels))
    for name, key in (("output tok/s", "output_tokens_per_s"), ("TTFT mean s", "ttft_mean_s"),
                      ("TTFT p50 s", "ttft_p50_s"), ("TTFT p90 s", "ttft_p90_s"),
                      ("wall s", "wall_s"), ("server CPU s", "server_cpu_s"),
                      ("client CPU s", "client_cpu_s")):
        cells = [medians[label].get(key) for label in labels]
        print(f"{name:20}" + "".join(f"{c:>14.3f}" if c is not None else f"{'-':>14}"
                                     for c in cells))
    for round_ in range(args.repeat):
        print(f"round {round_ + 1} tok/s: " + "  ".join(
            f"{label} {runs[label][round_]['output_tokens_per_s']:.0f}" for label in labels))
    for label, ratio in ratios.items():
        print(f"{label} / offline throughput: {ratio:.2f}x (target >= 0.90x)")


if __name__ == "__main__":
    main()
