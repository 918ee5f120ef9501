"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) on the cpu backend."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ferrum_core.cli.main import cli


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "auto"])
def test_default_model_knows_the_capital_of_france(dtype: str) -> None:
    result = CliRunner().invoke(cli, [
        "generate", "What is the capital of France?", "--backend", "cpu", "--dtype", dtype,
        "--max-tokens", "16", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert "Paris" in json.dumps(out)
    if dtype == "auto":  # the GGUF's own quantisation (Q4_1 mostly)
        assert "int4" in result.stderr + result.stdout
