"""int8 runs are judged on the GGUF golden: the same Q8_0 weights, dequantised.

An honest test backend declares int8 and runs the example backend's numpy model on
the weights the GGUF import dequantises; it passes ``--ferrum-dtype int8``. A liar
that declares the same but computes on weights coarsened to a few levels per
tensor misses the int8 tolerance on the GGUF golden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from ferrum_core.errors import UnsupportedError
from ferrum_core.protocol import ExecutorConfig
from ferrum_core.types import DataType
from tests.test_conformance_support import LiarFactory, registered, run_report

pytest_plugins = ["pytester"]

ferrum_example_backend = pytest.importorskip("ferrum_example_backend")
from ferrum_example_backend.model import NumpyLlama  # noqa: E402

INT8 = {"supported_dtypes": (DataType.INT8,)}


class Int8Llama(NumpyLlama):
    """The numpy model, reporting int8: it computes on the dequantised GGUF weights."""

    DTYPE = DataType.INT8

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runtime = dataclasses.replace(
            self._runtime, dtype=self.DTYPE, supported_dtypes=(self.DTYPE,)
        )


class Int4Llama(Int8Llama):
    DTYPE = DataType.INT4


class Coarse:
    """A weight source whose matrices are rounded to 7 levels with one scale per tensor."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def has(self, name: str) -> bool:
        return bool(self.source.has(name))

    def get(self, name: str) -> np.ndarray:
        array = np.asarray(self.source.get(name), dtype=np.float32)
        if array.ndim != 2:
            return array
        scale = float(np.abs(array).max()) / 3 or 1.0
        return np.round(array / scale).astype(np.float32) * scale


class CoarseInt8Llama(Int8Llama):
    @classmethod
    def from_weights(cls, config: Any, source: Any, *, max_batch_size: int = 256) -> NumpyLlama:
        return super().from_weights(config, Coarse(source), max_batch_size=max_batch_size)


class Int8Factory(LiarFactory):
    def validate_config(self, config: ExecutorConfig) -> None:
        wanted = getattr(self.model_cls, "DTYPE", DataType.INT8)
        if config.dtype != wanted:
            raise UnsupportedError(f"this test backend runs {wanted.value} only, "
                                   f"not {config.dtype.value}")


@pytest.fixture
def int8_backends() -> Iterator[None]:
    backends = {"int8-honest": (Int8Factory(Int8Llama), INT8),
                "int8-coarse": (Int8Factory(CoarseInt8Llama), INT8),
                "int4-honest": (Int8Factory(Int4Llama), {"supported_dtypes": (DataType.INT4,)})}
    with registered(backends):
        yield


def _checks(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {check["id"]: check for check in report["checks"]}


@pytest.mark.usefixtures("int8_backends")
def test_honest_int8_backend_passes_on_the_gguf_golden(pytester: pytest.Pytester) -> None:
    report = run_report(pytester, "int8-honest", "--ferrum-dtype", "int8")
    checks = _checks(report)
    failed = {cid: c["reason"] for cid, c in checks.items() if c["outcome"] == "failed"}
    assert not failed, failed
    assert (report["dtype"], report["tolerance"]) == ("int8", 0.15)
    numerics = {cid for cid in checks if cid.startswith("numerics.")}
    assert numerics == {f"numerics.{name}[llama_mha_q8_0]" for name in
                        ("prefill_logits", "chunked_prefill_logits", "decode_logits",
                         "all_positions")}
    assert all(checks[cid]["outcome"] == "passed" for cid in numerics)
    assert checks["capabilities.dtype[int8]"]["outcome"] == "passed"
    assert checks["protocol.info_matches_config"]["outcome"] == "passed"  # on the GGUF golden
    assert checks["capabilities.dtype[fp32]"]["reason"] == "the run is limited to --dtype int8"


@pytest.mark.usefixtures("int8_backends")
def test_int8_liar_misses_the_int8_tolerance(pytester: pytest.Pytester) -> None:
    checks = _checks(run_report(pytester, "int8-coarse", "--ferrum-dtype", "int8"))
    decode = checks["numerics.decode_logits[llama_mha_q8_0]"]
    assert decode["outcome"] == "failed", decode
    assert "exceeds the int8 tolerance" in decode["reason"]
    assert checks["capabilities.dtype[int8]"]["outcome"] == "failed"


@pytest.mark.usefixtures("int8_backends")
def test_int4_runs_on_the_q4_1_golden(pytester: pytest.Pytester) -> None:
    """Without --ferrum-dtype, a backend that declares only int4 runs in int4."""
    report = run_report(pytester, "int4-honest", "-k", "numerics or dtype")
    checks = _checks(report)
    assert (report["dtype"], report["tolerance"]) == ("int4", 0.3)
    assert report["summary"]["failed"] == 0, checks
    assert checks["numerics.decode_logits[llama_mha_q4_1]"]["outcome"] == "passed"
    assert checks["capabilities.dtype[int4]"]["outcome"] == "passed"
