"""The CPU kernels' sources, options and visibility: what is built, what is used, and why not.

The generated C is what the generator writes; the executor options
``cpu_kernels`` / ``cpu_gemm`` / ``cpu_isa`` are checked and honoured, the
``FERRUM_CPU_*`` variables override them; the executor and ``ferrum info``
report what is in use; no compiler and failed compiles are said once, with
the compiler's message kept in a log; builds of older sources are removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ferrum_cuda.cpu_native import generate, isa
from ferrum_cuda.cpu_native.build import build_log_path, library_path, remove_stale_builds
from ferrum_cuda.cpu_native.source import CSRC, ENTRY, source_files
from ferrum_cuda.factory import TorchExecutorFactory
from torch_tiny import TinyModel

from ferrum_core.errors import InvalidInputError, UnsupportedError
from ferrum_core.protocol import ExecutorConfig
from ferrum_core.types import DataType

has_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")


def test_committed_generated_c_is_what_the_generator_writes(tmp_path: Path) -> None:
    for name, text in generate.generated_files().items():
        assert (CSRC / name).read_text() == text, f"{name}: run python -m {generate.__name__}"
    assert generate.main(["--check"]) == 0
    # Written afresh into an empty folder, --check then agrees with it too.
    assert generate.main([], tmp_path) == 0
    assert generate.main(["--check"], tmp_path) == 0
    (tmp_path / "gen_layer_fields.h").write_text("/* edited by hand */\n")
    assert generate.main(["--check"], tmp_path) == 1


def test_every_include_is_shipped() -> None:
    """The sources are one translation unit: every file it includes is package data."""
    files = source_files()
    assert ENTRY in files
    for name, data in files.items():
        for included in re.findall(rb'#include "([^"]+)"', data):
            assert included.decode() in files, f"{name} includes a missing {included!r}"


def _config(model: TinyModel | None = None, **options: object) -> ExecutorConfig:
    path = str(model.path) if model is not None else "unused"
    return ExecutorConfig(model_path=path, dtype=DataType.FP32, executor_options=options)


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"cpu_kernels": "yes"}, InvalidInputError, "'cpu_kernels' must be a bool"),
        ({"cpu_gemm": 1}, InvalidInputError, "'cpu_gemm' must be a bool"),
        ({"cpu_isa": "sse2"}, InvalidInputError, "must be one of auto, avx512, avx2"),
        ({"kv_cache_dtype": "int8"}, InvalidInputError, "one of auto, fp32, bf16, fp16"),
    ],
)
def test_bad_option_values_are_typed_errors(
    options: dict[str, object], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        TorchExecutorFactory("cpu").validate_config(_config(**options))


def test_an_isa_the_cpu_lacks_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isa, "cpu_flags", lambda: "flags : fpu sse2 avx2 fma")
    factory = TorchExecutorFactory("cpu")
    factory.validate_config(_config(cpu_isa="avx2"))
    with pytest.raises(UnsupportedError, match="'avx512': this CPU cannot run it"):
        factory.validate_config(_config(cpu_isa="avx512"))
    monkeypatch.setenv("FERRUM_CPU_ISA", "avx512")
    with pytest.raises(UnsupportedError, match="FERRUM_CPU_ISA 'avx512'"):
        isa.resolve_isa("auto")
    monkeypatch.setenv("FERRUM_CPU_ISA", "fastest")
    with pytest.raises(InvalidInputError, match="FERRUM_CPU_ISA must be one of"):
        isa.resolve_isa("auto")


def _report(llm: object) -> dict[str, object]:
    snapshot = llm.cache_metrics_snapshot()  # type: ignore[attr-defined]
    report: dict[str, object] = snapshot["cpu_kernels"]
    return report


@has_gcc
def test_options_and_their_overrides(
    tiny: Callable[[str], TinyModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny("llama_gqa")
    best = isa.cpu_isas()[0] if isa.cpu_isas() else "generic"
    assert _report(model.build()) == {"use": best, "reason": None,
                                      "gemm": "onednn" if best == "generic" else "panel",
                                      "attention": "fused"}  # fmt: skip
    off = model.build(fused_kernels=False)
    assert off.kernels is None and _report(off)["use"] == "off"
    assert _report(off)["reason"] == "cpu_kernels=false"
    no_gemm = model.build(cpu_gemm=False)
    assert _report(no_gemm)["gemm"] == "onednn" and no_gemm.weights.layers[0].qkv.kernels is None
    assert no_gemm.kernels is not None  # the other kernels stay on
    # The variables win over the options, both ways.
    monkeypatch.setenv("FERRUM_CPU_KERNELS", "0")
    assert _report(model.build())["reason"] == "FERRUM_CPU_KERNELS=0"
    monkeypatch.setenv("FERRUM_CPU_KERNELS", "1")
    assert _report(model.build(fused_kernels=False))["use"] == best
    monkeypatch.setenv("FERRUM_CPU_GEMM", "1")
    assert _report(model.build(cpu_gemm=False))["gemm"] == ("onednn" if best == "generic"
                                                            else "panel")  # fmt: skip
    monkeypatch.setenv("FERRUM_CPU_GEMM", "maybe")
    with pytest.raises(InvalidInputError, match="FERRUM_CPU_GEMM='maybe': expected 0 or 1"):
        model.build()


@has_gcc
def test_cpu_isa_option_builds_that_isa(tiny: Callable[[str], TinyModel]) -> None:
    if "avx2" not in isa.cpu_isas():
        pytest.skip("no AVX2 on this CPU")
    llm = tiny("llama_gqa").build(cpu_isa="avx2")
    assert _report(llm)["use"] == "avx2"


def test_executor_reports_what_it_uses(tiny: Callable[[str], TinyModel]) -> None:
    """Through the factory: an fp32 executor names its build (or why not), bf16 says off."""
    from ferrum_core.backends import create_executor

    model = tiny("llama_gqa")
    fp32 = create_executor(_config(model, cpu_kernels=False), backend="torch")
    try:
        assert fp32.cache_metrics_snapshot()["cpu_kernels"]["reason"] == "cpu_kernels=false"
    finally:
        fp32.shutdown()
    config = ExecutorConfig(model_path=str(model.path), dtype=DataType.BF16)
    bf16 = create_executor(config, backend="torch")
    try:
        report = bf16.cache_metrics_snapshot()["cpu_kernels"]
        assert report["use"] == "off" and report["reason"] == "dtype bf16: the kernels are fp32"
    finally:
        bf16.shutdown()


def _python(code: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "FERRUM_HOME": str(home), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_no_compiler_is_said_once(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    code = (
        "from ferrum_cuda.cpu_native.kernels import cpu_kernels, kernels_problem\n"
        "assert cpu_kernels('avx2') is None and cpu_kernels('avx512') is None\n"
        "print(kernels_problem('avx2'))\n"
    )
    done = _python(code, tmp_path / "home", CC="/nonexistent/cc", PATH=str(empty))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no C compiler (CC, cc or gcc on PATH)"
    said = "ferrum-cuda: CPU kernels not used (torch ops instead): no C compiler"
    assert done.stderr.splitlines() == [f"{said} (CC, cc or gcc on PATH)"]


@has_gcc
def test_failed_compile_keeps_the_message_in_a_log(tmp_path: Path) -> None:
    cc = tmp_path / "bad-cc"
    cc.write_text('#!/bin/sh\necho "bad-cc: error: the whole story, line 1" >&2\n'
                  'echo "and line 2 of it" >&2\nexit 3\n')  # fmt: skip
    cc.chmod(0o755)
    home = tmp_path / "home"
    code = (
        "from ferrum_cuda.cpu_native.build import build_library, library_path, build_log_path\n"
        "assert build_library() is None\n"
        "print(build_log_path(library_path()))\n"
    )
    done = _python(code, home, CC=str(cc))
    assert done.returncode == 0, done.stderr
    log = Path(done.stdout.strip())
    assert log.parent == home / "logs"
    text = log.read_text()
    assert "the whole story, line 1" in text and "and line 2 of it" in text
    assert str(cc) in text.splitlines()[0]  # the command line that failed
    (line,) = done.stderr.splitlines()
    assert "bad-cc failed (exit 3)" in line and str(log) in line
    assert list((home / "kernels").iterdir()) == []


def test_builds_of_other_sources_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERRUM_HOME", str(tmp_path))
    current = library_path()
    if current is None:
        pytest.skip("no C compiler: no library name")
    kernels, logs = tmp_path / "kernels", tmp_path / "logs"
    kernels.mkdir()
    logs.mkdir()
    keep = [current, current.with_suffix(".json"), build_log_path(current),
            kernels / "notes.txt"]  # fmt: skip
    old = [kernels / "ferrum_cpu_251d6f50d9059ed0.so", kernels / "ferrum_cpu_251d6f50d9059ed0.json",
           kernels / "ferrum_cpu_000000000000_111111111111.so",
           logs / "cpu-kernels-ferrum_cpu_000000000000_111111111111.log"]  # fmt: skip
    for path in keep + old:
        path.write_text("x")
    removed = remove_stale_builds(kernels)
    assert sorted(removed) == sorted(old)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in old)


def _info(home: Path) -> dict[str, object]:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ferrum")), "info", "torch", "--json"],
        env={**os.environ, "FERRUM_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    facts: dict[str, object] = json.loads(done.stdout)["details"]["cpu_kernels"]
    return facts


def test_ferrum_info_reports_the_isa_and_the_cache(tmp_path: Path) -> None:
    fresh = _info(tmp_path)
    assert fresh["isa"] == (isa.cpu_isas()[0] if isa.cpu_isas() else "none")
    assert fresh["cached"] is False  # a fresh FERRUM_HOME: nothing built yet
    if fresh["compiler"] is None:
        return
    assert str(fresh["library"]).startswith(str(tmp_path / "kernels"))
    from ferrum_cuda.cpu_native.kernels import cpu_kernels

    assert cpu_kernels() is not None  # built (or found) in this process's FERRUM_HOME
    home = Path(os.environ.get("FERRUM_HOME") or "~/.cache/ferrum").expanduser()
    built = _info(home)
    assert built["cached"] is True and built["library"] == str(library_path())
