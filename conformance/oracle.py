"""The oracle: golden models shipped with the suite, their expected logits, tolerances."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from ferrum_core.conformance import GOLDEN_DIR

from ferrum_core.protocol import AttentionType
from ferrum_core.types import DataType

__all__ = [
    "GoldenModel",
    "golden_models",
    "golden_model",
    "golden_lora",
    "gguf_goldens",
    "numeric_goldens",
    "primary_for",
    "PRIMARY",
    "QUANTISED",
    "TOLERANCE",
    "assert_close",
    "set_tolerance_floor",
    "tolerance",
    "tolerance_note",
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

QUANTISED = (DataType.INT8, DataType.INT4)
"""Dtypes whose numerics are judged on GGUF goldens (the same weights, dequantised)."""


@dataclass(frozen=True)
class GoldenModel:
    name: str
    path: Path  # what an executor loads: a model directory, or one holding a single .gguf
    family: str
    prompt_ids: tuple[int, ...]
    prefill_logits: np.ndarray  # [n, vocab]: every prompt position
    decode_ids: tuple[int, ...]
    decode_logits: np.ndarray  # [k, vocab]: after each decode token
    config: dict[str, Any] = field(default_factory=dict)  # config.json (of the base for GGUF)
    quant: str | None = None  # GGUF quantisation type (``Q8_0``...), None for safetensors
    dtype: DataType | None = None  # the quantised dtype a GGUF golden proves

    @property
    def vocab_size(self) -> int:
        return int(self.prefill_logits.shape[1])

    @property
    def attention(self) -> frozenset[AttentionType]:
        """The attention mechanisms a backend needs to run this model."""
        heads = int(self.config.get("num_attention_heads", 0))
        kv_heads = int(self.config.get("num_key_value_heads") or heads)
        if kv_heads == heads:
            kinds = {AttentionType.MULTI_HEAD}
        elif kv_heads == 1:
            kinds = {AttentionType.MULTI_QUERY}
        else:
            kinds = {AttentionType.GROUPED_QUERY}
        if self.config.get("sliding_window") is not None:
            kinds.add(AttentionType.SLIDING_WINDOW)
        return frozenset(kinds)


def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    data: dict[str, Any] = json.loads(file.read_text()) if file.is_file() else {}
    return data


def _load(path: Path, name: str, family: str, **extra: Any) -> GoldenModel:
    extra.setdefault("config", _read_config(path))
    with np.load(path / "expected.npz", allow_pickle=False) as data:
        return GoldenModel(
            name=name,
            path=path,
            family=family,
            prompt_ids=tuple(int(t) for t in data["prompt_ids"]),
            prefill_logits=np.asarray(data["prefill_logits"], np.float32),
            decode_ids=tuple(int(t) for t in data["decode_ids"]),
            decode_logits=np.asarray(data["decode_logits"], np.float32),
            **extra,
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


@cache
def gguf_goldens(root: Path = GOLDEN_DIR) -> dict[str, GoldenModel]:
    """GGUF goldens: a golden model's weights quantised, expected logits on them dequantised."""
    out = {}
    for name, meta in sorted(_manifest(root).get("gguf", {}).items()):
        base = root / str(meta["base"])
        out[name] = _load(root / name, name, "llama", config=_read_config(base),
                          quant=str(meta["quant"]), dtype=DataType(meta["dtype"]))
    return out


def numeric_goldens(dtype: DataType) -> list[str]:
    """The goldens a run in ``dtype`` compares numerics on: for int8/int4 the GGUF files of
    that dtype (the same weights the backend runs, dequantised), else every float golden."""
    if dtype in QUANTISED:
        return [name for name, g in gguf_goldens().items() if g.dtype == dtype]
    return sorted(golden_models())


def primary_for(dtype: DataType) -> str:
    """The golden the behavioural checks run on: ``PRIMARY``, or the GGUF golden of a
    quantised dtype (a quantised backend is sure to load its own format)."""
    names = numeric_goldens(dtype) if dtype in QUANTISED else []
    return names[0] if names else PRIMARY


def golden_lora(root: Path = GOLDEN_DIR) -> tuple[GoldenModel, GoldenModel]:
    """``(adapter, base model)``: a PEFT LoRA adapter directory and the model it applies to."""
    meta = _manifest(root)["lora"]
    name = str(meta["name"])
    return _load(root / name, name, "lora"), golden_model(str(meta["base"]))


def golden_model(name: str) -> GoldenModel:
    found = golden_models().get(name) or gguf_goldens().get(name)
    if found is None:
        raise KeyError(f"no golden model {name!r}")
    return found


_FLOOR: list[float] = [0.0]  # the run's least tolerance (a lossy KV cache: options.py)


def set_tolerance_floor(value: float) -> None:
    """Judge this run at no less than ``value`` (see ``options.kv_tolerance``)."""
    _FLOOR[0] = value


def tolerance(dtype: DataType) -> float:
    """The relative tolerance a check at ``dtype`` applies in this run."""
    return max(TOLERANCE[dtype], _FLOOR[0])


def tolerance_note(dtype: DataType) -> str:
    return f"{dtype.value} tolerance {tolerance(dtype):g} relative"


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
    limit = tolerance(dtype) * scale
    if err > limit:
        raise AssertionError(
            f"{what}: max |diff| {err:.3g} exceeds the {dtype.value} tolerance {limit:.3g} "
            f"(relative {err / scale:.3g} > {tolerance(dtype):g})"
        )
