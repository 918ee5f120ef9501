"""The real default model (SmolLM2-135M-Instruct Q4_1 GGUF) answers on the mlx backend."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ferrum_core.cli.main import cli


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "ran_as"), [("fp32", "fp32"), ("auto", "int4")])
def test_default_model_knows_the_capital_of_france(dtype: str, ran_as: str) -> None:
    result = CliRunner().invoke(cli, [
        "generate", "--backend", "mlx", "--dtype", dtype, "--max-tokens", "16", "--json",
        "What is the capital of France?",
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert (answer["backend"], answer["dtype"]) == ("mlx", ran_as)  # auto: the GGUF's own
    assert "Paris" in answer["text"]
