"""The built ONNX model is cached by weight content and options; bad input writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ferrum_cpu.graph
import numpy as np
import pytest
from cpu_helpers import cpu_executor, hf_logits, prefill, rel_err

from ferrum_core.errors import UnsupportedError
from ferrum_core.plugin import DataType

IDS = [1, 5, 9, 13, 17]


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """A fresh FERRUM_HOME; counts graph builds."""
    monkeypatch.setenv("FERRUM_HOME", str(tmp_path / "home"))
    calls: list[int] = []
    real = ferrum_cpu.graph.build_graph

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ferrum_cpu.graph, "build_graph", counting)
    return calls


def _built_models(home: Path) -> list[Path]:
    root = home / "onnx"
    return [p for p in root.iterdir() if p.name != "hashes"] if root.is_dir() else []


def test_second_load_reuses_the_built_model(builds: list[int], tiny: Callable[..., Path],
                                            tmp_path: Path) -> None:  # fmt: skip
    path = tiny("llama")
    cpu_executor(path).shutdown()
    cpu_executor(path).shutdown()
    assert len(builds) == 1
    cpu_executor(path, DataType.INT8).shutdown()  # other options: another model
    assert len(builds) == 2
    assert len(_built_models(tmp_path / "home")) == 2


def test_corrupt_cached_model_is_rebuilt(builds: list[int], tiny: Callable[..., Path],
                                         tmp_path: Path) -> None:  # fmt: skip
    path = tiny("llama")
    cpu_executor(path).shutdown()
    (model_dir,) = _built_models(tmp_path / "home")
    data = model_dir / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped byte in the weights
    data.write_bytes(bytes(raw))
    executor = cpu_executor(path)
    assert len(builds) == 2
    row, _ = prefill(executor, IDS)
    assert rel_err(row, hf_logits(path, IDS)[-1]) < 1e-4
    executor.shutdown()


def test_unsupported_activation_is_typed_and_writes_nothing(
    builds: list[int], tiny: Callable[..., Path], tmp_path: Path
) -> None:
    path = tiny("llama", hidden_act="relu")
    with pytest.raises(UnsupportedError, match="hidden_act 'relu'"):
        cpu_executor(path)
    assert builds == [] and _built_models(tmp_path / "home") == []


def test_unsupported_block_type_is_typed_and_writes_nothing(
    builds: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Q2_K (2-bit K-quant): no MatMulNBits layout keeps it exact."""
    from gguf import GGMLQuantizationType as Q

    from tests.models import gguf_builder

    monkeypatch.setitem(gguf_builder.F16_FIELDS, "Q2_K", (80, 82))  # d, dmin of a Q2_K block

    def q2_k(name: str, array: np.ndarray) -> Any:
        return Q.F32 if array.ndim == 1 else (Q.Q2_K if "ffn_down" in name else Q.Q4_0)

    _, gguf = gguf_builder.build_tiny_llama_and_gguf(
        tmp_path / "m", quant=q2_k, hidden_size=256, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    with pytest.raises(UnsupportedError, match="Q2_K"):
        cpu_executor(gguf, DataType.INT4)
    assert _built_models(tmp_path / "home") == []


def test_unsupported_family_is_typed_and_writes_nothing(builds: list[int],
                                                        tmp_path: Path) -> None:  # fmt: skip
    from tests.tiny_models import build_tiny_gpt2

    with pytest.raises(UnsupportedError, match="model type 'gpt2'"):
        cpu_executor(build_tiny_gpt2(tmp_path))
    assert builds == [] and _built_models(tmp_path / "home") == []
