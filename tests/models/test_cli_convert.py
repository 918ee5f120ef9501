"""`ferrum convert` through click's test runner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ferrum_core.cli.convert import convert
from ferrum_core.models import load_model
from tests.models.gguf_builder import build_tiny_llama_and_gguf, mixed_quants


def test_convert_json_summary(tmp_path: Path) -> None:
    _, gguf_path = build_tiny_llama_and_gguf(tmp_path, quant=mixed_quants)
    out = tmp_path / "out"
    result = CliRunner().invoke(convert, [str(gguf_path), str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["output"] == str(out.absolute()) and summary["model_type"] == "llama"
    assert summary["files"] == sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in summary["files"] and summary["bytes"] > 0
    assert load_model(out).config.num_attention_heads == 3


def test_convert_human_output_and_force(tmp_path: Path) -> None:
    _, gguf_path = build_tiny_llama_and_gguf(tmp_path)
    out = tmp_path / "out"
    runner = CliRunner()
    first = runner.invoke(convert, [str(gguf_path), str(out), "--no-progress"])
    assert first.exit_code == 0 and first.stdout.startswith("Converted ")
    again = runner.invoke(convert, [str(gguf_path), str(out)])
    assert again.exit_code != 0 and "already exists" in str(again.exception)
    forced = runner.invoke(convert, [str(gguf_path), str(out), "--force", "--no-progress"])
    assert forced.exit_code == 0, forced.output


def test_errors_are_one_line_exit_1_through_the_main_group(tmp_path: Path) -> None:
    from ferrum_core.cli.main import cli

    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all")
    result = CliRunner().invoke(cli, ["convert", str(bogus), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "bogus.gguf" in result.stderr and "Traceback" not in result.output
    missing = CliRunner().invoke(cli, ["convert", str(tmp_path / "none.gguf"), str(tmp_path / "o")])
    assert missing.exit_code == 2  # click usage error: the file does not exist
