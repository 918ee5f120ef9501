"""``--dtype auto``: weights run as stored where the backend can, else its best precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferrum_core.dtype_choice import dtype_of_stored_type, resolve_dtype, stored_dtype
from ferrum_core.errors import UnsupportedError
from ferrum_core.types import DataType

TORCH = (DataType.FP32, DataType.FP16, DataType.BF16)


@pytest.mark.parametrize(("stored", "dtype"), [
    ("F32", DataType.FP32), ("F16", DataType.FP16), ("BF16", DataType.BF16),
    ("Q8_0", DataType.INT8), ("Q6_K", DataType.INT8), ("Q5_1", DataType.INT8),
    ("Q4_0", DataType.INT4), ("Q4_1", DataType.INT4), ("Q4_K", DataType.INT4),
    ("IQ4_NL", DataType.INT4), ("q4_1", DataType.INT4),
])  # fmt: skip
def test_stored_type_maps_to_the_dtype_that_holds_it(stored: str, dtype: DataType) -> None:
    assert dtype_of_stored_type(stored) == dtype


def test_stored_dtype_counts_elements_not_tensors() -> None:
    # The default model: 210 Q4_1 matrices, one Q8_0 embedding, 61 small F32 norms.
    assert stored_dtype({"Q4_1": 210 * 300_000, "Q8_0": 28_000_000, "F32": 61 * 576}) == (
        DataType.INT4
    )
    assert stored_dtype({"F32": 10, "BF16": 1000}) == DataType.BF16
    assert stored_dtype({}) == DataType.FP32


def test_resolve() -> None:
    assert resolve_dtype("auto", DataType.INT4, TORCH) == DataType.FP32
    assert resolve_dtype("auto", DataType.INT4, (DataType.INT4, DataType.FP32)) == DataType.INT4
    assert resolve_dtype("auto", DataType.BF16, TORCH) == DataType.BF16
    assert resolve_dtype("auto", DataType.BF16, (DataType.FP32,)) == DataType.FP32
    assert resolve_dtype("auto", DataType.FP16, (DataType.BF16, DataType.INT8)) == DataType.BF16
    assert resolve_dtype("fp16", DataType.FP32, (DataType.FP32,)) == DataType.FP16
    with pytest.raises(UnsupportedError):
        resolve_dtype("auto", DataType.FP32, ())


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("bf16"), "llama", dtype="bfloat16")


@pytest.mark.parametrize(("backend", "want"), [("torch", "bf16"), ("example", "fp32")])
def test_llm_auto_runs_the_stored_dtype_where_the_backend_can(
    bf16_model: Path, backend: str, want: str
) -> None:
    from ferrum_core.engine import LLM

    with LLM(str(bf16_model), backend=backend) as llm:
        assert llm.dtype.value == want
        assert llm.registry.get("target").info().dtype.value == want  # the executor reports it


def test_explicit_dtype_wins(bf16_model: Path) -> None:
    from ferrum_core.engine import LLM

    with LLM(str(bf16_model), backend="torch", dtype="fp32") as llm:
        assert llm.dtype == DataType.FP32


def test_cli_json_reports_the_chosen_dtype(bf16_model: Path) -> None:
    from click.testing import CliRunner

    from ferrum_core.cli.main import cli

    result = CliRunner().invoke(cli, ["generate", "-m", str(bf16_model), "-b", "example",
                                      "--max-tokens", "2", "--json", "hi"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["dtype"] == "fp32"


def test_auto_for_a_gguf_reads_its_quantisation(tmp_path: Path) -> None:
    """A Q4_0 GGUF is int4 as stored; the torch backend cannot, so it runs fp32."""
    from gguf import GGMLQuantizationType as Q

    from ferrum_core.dtype_choice import stored_elements
    from ferrum_core.engine import LLM
    from ferrum_core.models import load_model
    from ferrum_core.models.gguf_import import STORED_TYPES_FILE
    from tests.models.gguf_builder import build_tiny_llama_and_gguf

    _, gguf = build_tiny_llama_and_gguf(
        tmp_path, quant=lambda name, a: Q.F32 if a.ndim == 1 else Q.Q4_0
    )
    loaded = load_model(gguf)
    with loaded.weights:
        counts = stored_elements(loaded)
        assert (loaded.path / STORED_TYPES_FILE).is_file()
        assert counts == loaded.weights.stored_types(elements=True)  # the record is right
    assert stored_dtype(counts) == DataType.INT4
    with LLM(str(gguf), backend="torch") as llm:
        assert llm.dtype == DataType.FP32
