"""The shared conformance suite passes for `cpu` in fp32 and in int4 (its GGUF golden)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ferrum_core.cli.main import cli


@pytest.mark.parametrize("dtype", ["fp32", "int4"])
def test_suite_passes(dtype: str) -> None:
    result = CliRunner().invoke(cli, ["conformance", "cpu", "--json", "--dtype", dtype])
    report = json.loads(result.stdout)
    failed = {c["id"]: c["reason"] for c in report["checks"] if c["outcome"] == "failed"}
    assert not failed, failed
    assert result.exit_code == 0, result.stderr[-2000:]
    assert report["dtype"] == dtype
    passed = {c["id"] for c in report["checks"] if c["outcome"] == "passed"}
    assert "unified.native_claim" in passed
    assert f"capabilities.dtype[{dtype}]" in passed
    if dtype == "int4":
        assert "numerics.decode_logits[llama_mha_q4_1]" in passed
    else:
        assert report["summary"]["passed"] >= 60
