"""The `cpu` backend's registration, cheap probe, options and device handling."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from cpu_helpers import cpu_executor

from ferrum_core.cli.main import cli
from ferrum_core.errors import BackendUnavailableError, InvalidInputError, UnsupportedError
from ferrum_core.plugin import DataType, ExecutorConfig


def test_listed_available_with_priority_50() -> None:
    result = CliRunner().invoke(cli, ["list-backends", "--json"])
    assert result.exit_code == 0, result.stderr
    (cpu,) = [b for b in json.loads(result.stdout)["backends"] if b["name"] == "cpu"]
    assert (cpu["state"], cpu["priority"], cpu["distribution"]) == ("available", 50, "ferrum-cpu")
    import importlib.metadata

    assert f"onnxruntime {importlib.metadata.version('onnxruntime')}" in cpu["reason"]


def test_probe_imports_neither_onnx_nor_onnxruntime() -> None:
    code = ("import sys; from ferrum_cpu.plugin import probe_cpu; r = probe_cpu(); "
            "assert r.available, r.reason; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_options_are_typed_errors(tiny: Callable[..., Path]) -> None:
    from ferrum_cpu.factory import CpuExecutorFactory

    factory = CpuExecutorFactory()
    path = str(tiny("llama"))
    with pytest.raises(UnsupportedError, match="dtype 'bf16'"):
        factory.validate_config(ExecutorConfig(model_path=path, dtype=DataType.BF16))
    for options, error in (({"threads": 0}, InvalidInputError),
                           ({"accuracy_level": 7}, InvalidInputError),
                           ({"block_size": 48}, InvalidInputError),
                           ({"kv_cache_dtype": "fp16"}, UnsupportedError)):  # fmt: skip
        with pytest.raises(error):
            factory.validate_config(ExecutorConfig(model_path=path, executor_options=options))


def test_threads_and_device(tiny: Callable[..., Path]) -> None:
    import onnxruntime as ort

    executor = cpu_executor(tiny("llama"), threads=1)
    session = executor._model.runner.session
    assert session.get_session_options().intra_op_num_threads == 1
    assert executor.capabilities().supported_devices == ("cpu",)
    executor.shutdown()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA: cuda:0 is accepted here")
    config = ExecutorConfig(model_path=str(tiny("llama")), device="cuda:0")
    from ferrum_cpu.factory import CpuExecutorFactory

    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        CpuExecutorFactory().create_executor(config)
