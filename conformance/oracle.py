"""The oracle: golden models shipped with the suite, their expected logits, tolerances."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from conformance import GOLDEN_DIR
from ferrum_core.types import DataType

__all__ = [
    "GoldenModel",
    "golden_models",
    "golden_model",
    "golden_lora",
    "PRIMARY",
    "TOLERANCE",
    "assert_close",
]

PRIMARY = "llama_gqa"
"""The golden model the behavioural checks run on unless ``--ferrum-model`` names another."""

TOLERANCE: dict[DataType, float] = {
    DataType.FP32: 2e-3,  # leaves room for TF32-style matmuls, still catches an eps mix-up
    DataType.FP16: 2e-2,
    DataType.BF16: 6e-2,
    DataType.INT8: 0.15,
    DataType.INT4: 0.3,
}
"""Largest allowed ``max|got - want|``, relative to ``max(1, max|want|)``, per dtype."""


@dataclass(frozen=True)
class GoldenModel:
    name: str
    path: Path
    family: str
    prompt_ids: tuple[int, ...]
    prefill_logits: np.ndarray  # [n, vocab]: every prompt position
    decode_ids: tuple[int, ...]
    decode_logits: np.ndarray  # [k, vocab]: after each decode token

    @property
    def vocab_size(self) -> int:
        return int(self.prefill_logits.shape[1])


def _load(path: Path, name: str, family: str) -> GoldenModel:
    with np.load(path / "expected.npz", allow_pickle=False) as data:
        return GoldenModel(
            name=name,
            path=path,
            family=family,
            prompt_ids=tuple(int(t) for t in data["prompt_ids"]),
            prefill_logits=np.asarray(data["prefill_logits"], np.float32),
            decode_ids=tuple(int(t) for t in data["decode_ids"]),
            decode_logits=np.asarray(data["decode_logits"], np.float32),
        )


@cache
def _manifest(root: Path = GOLDEN_DIR) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "manifest.json").read_text())
    return data


@cache
def golden_models(root: Path = GOLDEN_DIR) -> dict[str, GoldenModel]:
    models = _manifest(root)["models"]
    return {name: _load(root / name, name, str(meta["family"]))
            for name, meta in sorted(models.items())}


def golden_lora(root: Path = GOLDEN_DIR) -> tuple[GoldenModel, GoldenModel]:
    """``(adapter, base model)``: a PEFT LoRA adapter directory and the model it applies to."""
    meta = _manifest(root)["lora"]
    name = str(meta["name"])
    return _load(root / name, name, "lora"), golden_model(str(meta["base"]))


def golden_model(name: str) -> GoldenModel:
    return golden_models()[name]


def assert_close(got: np.ndarray | None, want: np.ndarray, dtype: DataType, what: str) -> None:
    """Fail with the size of the miss when ``got`` is outside the dtype's tolerance."""
    if got is None:
        raise AssertionError(f"{what}: no logits")
    got = np.asarray(got, dtype=np.float32)
    want = np.asarray(want, dtype=np.float32)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {list(got.shape)}, expected {list(want.shape)}")
    if not np.all(np.isfinite(got)):
        raise AssertionError(f"{what}: non-finite logits")
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    limit = TOLERANCE[dtype] * scale
    if err > limit:
        raise AssertionError(
            f"{what}: max |diff| {err:.3g} exceeds the {dtype.value} tolerance {limit:.3g} "
            f"(relative {err / scale:.2e} > {TOLERANCE[dtype]:.0e})"
        )
