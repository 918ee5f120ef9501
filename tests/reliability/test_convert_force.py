"""`ferrum convert --force` replaces only what an earlier conversion wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ferrum_core.cli.convert import convert
from ferrum_core.cli.main import cli
from ferrum_core.models.cache import WRITE_MARKER, ReplaceRefusedError
from ferrum_core.models.gguf_import import CONVERTER_VERSION
from tests.models.gguf_builder import build_tiny_llama_and_gguf


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama_and_gguf(tmp_path_factory.mktemp("gguf"))[1]


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_force_refuses_a_directory_no_conversion_wrote(gguf: Path, tmp_path: Path) -> None:
    mine = tmp_path / "my-project"
    (mine / "src").mkdir(parents=True)
    (mine / "src" / "main.py").write_text("print('precious')\n")
    before = _tree(mine)
    result = CliRunner().invoke(cli, ["convert", str(gguf), str(mine), "--force"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "not written by a conversion" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _tree(mine) == before
    direct = CliRunner().invoke(convert, [str(gguf), str(mine), "--force"])
    assert isinstance(direct.exception, ReplaceRefusedError)


def test_force_refuses_the_current_directory(
    gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("keep me")
    monkeypatch.chdir(here)
    result = CliRunner().invoke(cli, ["convert", str(gguf), ".", "--force"])
    assert result.exit_code == 1 and "current directory" in result.stderr
    assert _tree(here) == ["notes.txt"]
    parent = CliRunner().invoke(cli, ["convert", str(gguf), "..", "--force"])
    assert parent.exit_code == 1 and (tmp_path / "here" / "notes.txt").exists()


def test_force_refuses_a_directory_holding_the_source(gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert CliRunner().invoke(convert, [str(gguf), str(out), "--no-progress"]).exit_code == 0
    inside = out / gguf.name
    inside.write_bytes(gguf.read_bytes())
    result = CliRunner().invoke(cli, ["convert", str(inside), str(out), "--force"])
    assert result.exit_code == 1 and "holds the source" in result.stderr
    assert inside.exists()


def test_force_replaces_an_earlier_conversion(gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    runner = CliRunner()
    assert runner.invoke(convert, [str(gguf), str(out), "--no-progress"]).exit_code == 0
    marker = json.loads((out / WRITE_MARKER).read_text())
    assert marker["written_by"] == "ferrum"
    assert marker["source"] == str(gguf.resolve())
    assert marker["converter_version"] == CONVERTER_VERSION
    (out / "stale.txt").write_text("from before")
    again = runner.invoke(convert, [str(gguf), str(out), "--force", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporaries left


@pytest.mark.parametrize("out", ["/proc/ferrum-convert-out", "/proc/self/ferrum-out/x"])
def test_convert_into_a_directory_it_cannot_write(gguf: Path, out: str) -> None:
    """/proc refuses new entries even to root (tests here run as root, which ignores modes)."""
    result = CliRunner().invoke(cli, ["convert", str(gguf), out, "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "cannot" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
