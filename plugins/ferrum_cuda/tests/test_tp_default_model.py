"""Tensor parallelism on the real default model (SmolLM2-135M: 9 heads, 3 KV heads), and
the conformance suite at TP=2 (goldens whose heads do not split are skipped, with why)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from ferrum_core.engine import LLM, SamplingParams
from ferrum_core.errors import UnsupportedError

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """Rank 0 runs on one thread (the TP default): give the other tests theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _greedy(tp: int) -> list[int]:
    llm = LLM(None, "torch", dtype="fp32", tensor_parallel_size=tp, num_kv_blocks=64)
    try:
        ids = llm.encode_chat(QUESTION)
        params = SamplingParams(max_tokens=8, temperature=0.0)
        return list(llm.generate([{"prompt_token_ids": ids}], params)[0].outputs[0].token_ids)
    finally:
        llm.close()


def test_default_model_tp3_gives_tp1_tokens() -> None:
    assert _greedy(3) == _greedy(1)


def test_default_model_tp2_is_the_clean_error() -> None:
    with pytest.raises(UnsupportedError) as err:
        LLM(None, "torch", dtype="fp32", tensor_parallel_size=2)
    message = str(err.value)
    assert "9 attention heads are not a multiple of 2" in message
    assert "3 KV heads neither split over 2 ranks nor divide 2" in message


def test_conformance_suite_passes_at_tp2() -> None:
    from ferrum_core.cli.main import cli

    result = CliRunner().invoke(
        cli, ["conformance", "torch", "--option", "tensor_parallel_size=2", "--json"]
    )
    report = json.loads(result.stdout)
    failed = {c["id"]: c["reason"] for c in report["checks"] if c["outcome"] == "failed"}
    assert not failed, failed
    assert result.exit_code == 0, result.stderr[-2000:]
    skipped = {c["id"]: c["reason"] for c in report["checks"] if c["outcome"] == "skipped"}
    refused = [r for r in skipped.values() if "does not fit" in r]
    assert refused and all("3 attention heads are not a multiple of 2" in r for r in refused)
    assert report["summary"]["passed"] >= 75
