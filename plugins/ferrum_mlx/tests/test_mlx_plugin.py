"""Registration, the cheap probe, device choice and typed errors of the mlx backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ferrum_mlx.plugin as plugin
import pytest
from click.testing import CliRunner
from ferrum_mlx.factory import MlxExecutorFactory

from ferrum_core.backends import create_executor, get_backend
from ferrum_core.cli.main import cli
from ferrum_core.errors import BackendUnavailableError, InvalidInputError, UnsupportedError
from ferrum_core.protocol import ExecutorConfig
from ferrum_core.types import DataType
from tests.tiny_models import build_tiny_gpt2, build_tiny_model


def test_registered_on_the_cpu_device_here() -> None:
    result = CliRunner().invoke(cli, ["list-backends", "--json"])
    assert result.exit_code == 0, result.stderr
    row = next(b for b in json.loads(result.stdout)["backends"] if b["name"] == "mlx")
    assert (row["state"], row["priority"], row["distribution"]) == ("available", 15, "ferrum-mlx")
    assert "MLX CPU device" in row["reason"]
    caps = get_backend("mlx").capabilities
    assert caps is not None and caps.supported_devices == ("cpu",)
    assert {DataType.INT4, DataType.INT8, DataType.FP32} <= set(caps.supported_dtypes)


def test_metal_where_the_platform_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin.sys, "platform", "darwin")
    monkeypatch.setattr(plugin.platform, "machine", lambda: "arm64")
    assert plugin.default_device() == "metal"
    assert "Metal GPU" in plugin.probe().reason
    assert _registered() == (80, ("metal",))
    monkeypatch.setattr(plugin.platform, "machine", lambda: "x86_64")  # an Intel Mac
    assert plugin.default_device() == "cpu"
    assert _registered() == (15, ("cpu",))


def _registered() -> tuple[int, tuple[str, ...]]:
    """The priority and devices ``ferrum_register_backends`` registers ``mlx`` with now."""
    seen: dict[str, object] = {}

    def register(name: str, **kwargs: object) -> None:
        seen.update(kwargs, name=name)

    plugin.ferrum_register_backends(register)
    caps = seen["capabilities"]
    assert seen["name"] == "mlx" and isinstance(caps, plugin.ExecutorCapabilities)
    return seen["priority"], caps.supported_devices  # type: ignore[return-value]


def test_discovery_and_probe_do_not_import_mlx() -> None:
    code = ("import sys, ferrum_mlx.plugin as p; r = p.probe(); "
            "assert r.available, r; assert 'mlx' not in sys.modules, 'mlx imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_executor_reports_the_instance(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path, "qwen3")
    executor = create_executor(ExecutorConfig(model_path=str(path), dtype=DataType.INT8),
                               backend="mlx")
    caps = executor.capabilities()
    assert caps.supports_native_unified_decode
    assert caps.supported_devices == ("cpu",)
    assert executor.info().model_id == path.name
    executor.shutdown()


def test_bad_input_is_a_typed_error(tmp_path: Path) -> None:
    factory = MlxExecutorFactory()
    gpt2 = build_tiny_gpt2(tmp_path)
    with pytest.raises(UnsupportedError, match="model type 'gpt2'"):
        factory.create_executor(ExecutorConfig(model_path=str(gpt2)))
    with pytest.raises(InvalidInputError, match="group_size"):
        factory.validate_config(ExecutorConfig(executor_options={"group_size": 16}))
    with pytest.raises(InvalidInputError, match="runs on cpu or metal"):
        factory.validate_config(ExecutorConfig(device="cuda:0"))
    with pytest.raises(BackendUnavailableError, match="no Metal device"):
        factory.create_executor(ExecutorConfig(device="metal"))
    # Widths no MLX group divides cannot be quantised from floats: refused, named.
    odd = build_tiny_model(tmp_path, "llama", hidden_size=24, num_attention_heads=3)
    with pytest.raises(UnsupportedError, match="cannot quantise tensor"):
        factory.create_executor(ExecutorConfig(model_path=str(odd), dtype=DataType.INT4))
