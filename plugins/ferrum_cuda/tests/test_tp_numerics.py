"""Tensor parallelism (gloo on the CPU): TP=2 gives TP=1's greedy tokens and logits.

One TP=2 executor per family whose heads split (``llama_mqa_bias`` has one KV head:
it is replicated on both ranks); the same calls on a TP=1 executor are the reference.
Prefix-cache hits, a ragged decode batch and chunked prefill all run through the path
that broadcasts each step to the worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ferrum_core.conformance.harness import Driver
from ferrum_cuda.tp.group import free_port
from torch_tiny import TinyModel, prompt

from ferrum_core.backends import create_executor
from ferrum_core.protocol import ExecutorConfig, ModelExecutor

ATOL = 1e-4
SPLITTING = ("llama_gqa", "llama_mqa_bias", "qwen2", "qwen3", "mistral_window")


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """Rank 0 runs on one thread (the TP default): give the other tests theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _executor(model: TinyModel, tp: int) -> ModelExecutor:
    options = {"tensor_parallel_size": tp, "tensor_parallel_timeout_s": 60}
    config = ExecutorConfig(model_path=str(model.path), max_batch_size=4,
                            executor_options=options,
                            attention_config={"block_size": 4})  # fmt: skip
    return create_executor(config, backend="torch")


def _scenario(executor: ModelExecutor) -> tuple[list[np.ndarray], list[int]]:
    """Logits rows and greedy tokens of: two prompts sharing a prefix, four batched greedy
    decode steps, then a chunked continuation of the first sequence."""
    drv = Driver(executor)
    rows: list[np.ndarray] = []
    base = prompt(11, seed=1)
    r1, h1 = drv.prefill(base)
    r2, h2 = drv.prefill(base[:8] + prompt(3, seed=2))  # 8 cached tokens: two blocks shared
    rows += [r1, r2]
    chosen: list[int] = []
    for _ in range(4):
        t1, t2 = int(np.argmax(r1)), int(np.argmax(r2))
        chosen += [t1, t2]
        (r1, h1), (r2, h2) = drv.decode(t1, h1), drv.decode(t2, h2)
        rows += [r1, r2]
    (last,) = drv.unified([(h1, prompt(6, seed=3), True)])
    assert last is not None
    rows.append(last)
    drv.close()
    return rows, chosen


@pytest.mark.parametrize("family", SPLITTING)
def test_tp2_matches_tp1(family: str, tiny: Callable[[str], TinyModel]) -> None:
    model = tiny(family)
    ref = _executor(model, 1)
    tp = _executor(model, 2)
    try:
        want_rows, want_tokens = _scenario(ref)
        got_rows, got_tokens = _scenario(tp)
        assert got_tokens == want_tokens
        for want, got in zip(want_rows, got_rows, strict=True):
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
        # The oracle too: the first prompt's last logits row against transformers.
        oracle = model.logits(prompt(11, seed=1)).numpy()[-1]
        np.testing.assert_allclose(got_rows[0], oracle, atol=ATOL, rtol=0)
        assert tp.capabilities().supports_tensor_parallelism
        assert not ref.capabilities().supports_tensor_parallelism
        assert tp.capabilities().tensor_parallel_size == 2
        assert ref.capabilities().tensor_parallel_size == 1
        assert not tp.capabilities().supports_lora  # said, not silently wrong
        snapshot = tp.cache_metrics_snapshot() or {}
        assert snapshot["tensor_parallel_size"] == 2
        assert "fused_decode_steps" not in snapshot  # the one-call CPU step is bypassed
        assert "decode_workspace_reuses" not in snapshot  # and the decode workspace
        assert tp.info().num_heads == model.config.num_attention_heads
        assert tp.info().vocab_size == model.config.vocab_size
    finally:
        tp.shutdown()
        ref.shutdown()


def test_llm_and_cli_take_tensor_parallel_size(tiny: Callable[[str], TinyModel]) -> None:
    """``LLM(tensor_parallel_size=2)`` and ``ferrum generate --tensor-parallel-size 2`` give
    the TP=1 greedy text."""
    from ferrum_core.cli.main import cli
    from ferrum_core.engine import LLM, SamplingParams

    model = tiny("qwen2")
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    texts = {}
    for tp in (1, 2):
        llm = LLM(str(model.path), "torch", dtype="fp32", tensor_parallel_size=tp)
        try:
            texts[tp] = llm.generate(["w5 w9 w17 w3"], params)[0].outputs[0].token_ids
        finally:
            llm.close()
    assert texts[1] == texts[2]
    args = ["generate", "w5 w9 w17 w3", "--raw", "-m", str(model.path), "-b", "torch",
            "--dtype", "fp32", "--max-tokens", "5", "--ignore-eos", "--json",
            "--tensor-parallel-size", "2"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["token_ids"] == list(texts[1])


def test_torchrun_launch_joins_that_group(tiny: Callable[[str], TinyModel], tmp_path: Path) -> None:
    """Under ``torchrun`` every process calls ``create_executor``; rank 0 gets the engine,
    rank 1 serves its steps and exits when rank 0 shuts down."""
    model = tiny("llama_gqa")
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import os
        from ferrum_core.conformance.harness import Driver
        from ferrum_core.backends import create_executor
        from ferrum_core.protocol import ExecutorConfig
        config = ExecutorConfig(model_path={str(model.path)!r}, max_batch_size=2,
                                executor_options={{"tensor_parallel_size": 2}})
        executor = create_executor(config, backend="torch")
        rows = Driver(executor).run([5, 9, 17, 3], [7, 8])
        print("rank", os.environ["RANK"], [int(r.argmax()) for r in rows], flush=True)
        executor.shutdown()
    """)
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script)],
        capture_output=True, text=True, timeout=300, check=False,
        cwd=script.parent,  # ferrum_core.conformance imports from anywhere
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ref = _executor(model, 1)
    try:
        want = [int(r.argmax()) for r in Driver(ref).run([5, 9, 17, 3], [7, 8])]
    finally:
        ref.shutdown()
    assert done.stdout.split("\n")[0] == f"rank 0 {want}"  # only rank 0 runs the engine


def test_info_and_supported_types_declare_tensor_parallelism() -> None:
    from ferrum_cuda.factory import TorchExecutorFactory

    from ferrum_core.cli.main import cli
    from ferrum_core.protocol import ExecutorType

    assert ExecutorType.TENSOR_PARALLEL in TorchExecutorFactory("cpu").supported_types()
    result = CliRunner().invoke(cli, ["info", "torch", "--json"])
    assert result.exit_code == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    assert info["capabilities"]["supports_tensor_parallelism"] is True
    assert info["capabilities"]["tensor_parallel_size"] == 1  # static: no model split yet
    assert info["details"]["tensor_parallel"]["collectives"] == "gloo"
    assert info["details"]["tensor_parallel"]["lora"] is False
