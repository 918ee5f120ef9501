"""Tensor-parallel faults: dead and stalled workers, orphans, taken ports, shapes that do
not split. Every failure is a typed error; no worker outlives its engine."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ferrum_core.conformance.harness import Driver
from ferrum_cuda.tp.shard import check_shardable
from torch_tiny import TinyModel, prompt

from ferrum_core.backends import create_executor
from ferrum_core.errors import BackendError, BackendUnavailableError, UnsupportedError
from ferrum_core.protocol import ExecutorConfig, ModelExecutor

TIMEOUT_S = 3  # the collective timeout of these tests


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """Rank 0 runs on one thread (the TP default): give the other tests theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tp2(model: TinyModel, **options: object) -> ModelExecutor:
    config = ExecutorConfig(
        model_path=str(model.path), max_batch_size=2,
        executor_options={"tensor_parallel_size": 2, "tensor_parallel_timeout_s": TIMEOUT_S,
                          **options},
    )  # fmt: skip
    return create_executor(config, backend="torch")


def _gone(pid: int) -> bool:
    """No process ``pid`` any more (a zombie counts as alive: nobody reaped it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "X"


def _wait_gone(pids: list[int], limit_s: float = 30.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def test_shutdown_stops_the_workers(tiny: Callable[[str], TinyModel]) -> None:
    executor = _tp2(tiny("qwen2"))
    pids = executor.worker_pids  # type: ignore[attr-defined]
    assert len(pids) == 1 and not _gone(pids[0])
    Driver(executor).run(prompt(5, seed=4), [7, 8])
    executor.shutdown()
    assert all(_gone(pid) for pid in pids)  # reaped by shutdown itself


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stalled"])
def test_dead_or_stalled_worker_is_a_typed_error(
    how: signal.Signals, tiny: Callable[[str], TinyModel]
) -> None:
    """SIGKILL: the next call names the dead worker; SIGSTOP: the collective times out."""
    executor = _tp2(tiny("qwen2"))
    (pid,) = executor.worker_pids  # type: ignore[attr-defined]
    drv = Driver(executor)
    try:
        row, handle = drv.prefill(prompt(6, seed=5))
        os.kill(pid, how)
        with pytest.raises(BackendError) as err:
            drv.decode(int(row.argmax()), handle)
        if how == signal.SIGKILL:
            assert f"worker died: rank 1 (pid {pid}) exited with status -9" in str(err.value)
        else:
            assert f"timeout {TIMEOUT_S} s" in str(err.value)
        with pytest.raises(BackendError, match="tensor-parallel"):  # it stays failed
            drv.prefill(prompt(3, seed=6))
    finally:
        executor.shutdown()
    assert _gone(pid)


def _child(model: TinyModel, end: str) -> list[int]:
    """A Python process that builds a TP=2 executor, prints its worker pids and ends by
    ``end`` (``exit``: returning normally, ``kill``: SIGKILL on itself)."""
    script = textwrap.dedent(f"""
        import os, signal
        from ferrum_core.backends import create_executor
        from ferrum_core.protocol import ExecutorConfig
        config = ExecutorConfig(model_path={str(model.path)!r}, max_batch_size=2,
                                executor_options={{"tensor_parallel_size": 2}})
        executor = create_executor(config, backend="torch")
        print(*executor.worker_pids, flush=True)
        if {end!r} == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.stdout.strip(), done.stderr[-2000:]
    return [int(p) for p in done.stdout.split()]


@pytest.mark.parametrize("end", ["exit", "kill"])
def test_no_orphan_after_the_engine_process_ends(
    end: str, tiny: Callable[[str], TinyModel]
) -> None:
    pids = _child(tiny("qwen2"), end)
    assert _wait_gone(pids), f"worker(s) {pids} outlived their engine ({end})"


def test_port_in_use_is_a_clear_error(tiny: Callable[[str], TinyModel]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(BackendUnavailableError, match=f"port {port} .*already in use"):
            _tp2(tiny("qwen2"), tensor_parallel_port=port)


def test_heads_that_do_not_split_are_refused_before_any_process(
    tiny: Callable[[str], TinyModel],
) -> None:
    before = set(os.listdir("/proc"))
    with pytest.raises(UnsupportedError, match="5 attention heads are not a multiple of 2"):
        _tp2(tiny("llama_tied_odd"))
    children = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True,
                              text=True, check=False).stdout.split()  # fmt: skip
    assert not [pid for pid in children if pid not in before]


def test_sharding_rule_names_the_numbers(tiny: Callable[[str], TinyModel]) -> None:
    """The default model's shape (9 heads, 3 KV heads, 1536 intermediate) on 2 and 3 ranks."""
    smol = dataclasses.replace(tiny("qwen2").config, num_attention_heads=9,
                               num_key_value_heads=3, intermediate_size=1536)  # fmt: skip
    check_shardable(smol, 3)
    with pytest.raises(UnsupportedError) as err:
        check_shardable(smol, 2)
    assert "9 attention heads are not a multiple of 2" in str(err.value)
    assert "3 KV heads neither split over 2 ranks nor divide 2" in str(err.value)
    check_shardable(dataclasses.replace(smol, num_attention_heads=8, num_key_value_heads=2,
                                        intermediate_size=96), 4)  # fmt: skip
    with pytest.raises(UnsupportedError, match="intermediate size 97 is not a multiple of 2"):
        check_shardable(dataclasses.replace(smol, num_attention_heads=8, num_key_value_heads=2,
                                            intermediate_size=97), 2)  # fmt: skip
