"""``--dtype auto``: the dtype a model runs in on a backend, from how its weights are stored.

A GGUF runs in its own quantisation where the backend can, otherwise in the
best precision the backend supports; a Hugging Face folder in its stored dtype
where the backend can, otherwise fp32 (or the best the backend has).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from ferrum_core.errors import UnsupportedError
from ferrum_core.types import DataType

if TYPE_CHECKING:
    from ferrum_core.models.loader import LoadedModel
    from ferrum_core.protocol.config import ExecutorConfig

__all__ = ["AUTO", "DtypeChoice", "KV_CACHE_DTYPES", "PRECISION_ORDER", "dtype_of_stored_type",
           "kv_cache_dtype", "resolve_dtype", "stored_dtype", "stored_elements"]

AUTO = "auto"
DtypeChoice = DataType | Literal["auto"]

KV_CACHE_DTYPES = {"fp32": DataType.FP32, "bf16": DataType.BF16, "fp16": DataType.FP16}
"""The values of executor option ``kv_cache_dtype`` besides ``auto`` (the compute dtype)."""

PRECISION_ORDER = (DataType.FP32, DataType.BF16, DataType.FP16, DataType.INT8, DataType.INT4)
"""Best precision first: what ``auto`` falls back on when the stored dtype cannot run."""

_FLOAT_TYPES = {"F64": DataType.FP32, "F32": DataType.FP32, "F16": DataType.FP16,
                "BF16": DataType.BF16}
_EIGHT_BIT = ("Q8", "Q6", "Q5", "I8")


def dtype_of_stored_type(stored_type: str) -> DataType:
    """The Ferrum dtype that holds a stored tensor type without loss of its precision.

    Safetensors and GGUF float types map to themselves; 5- to 8-bit GGUF
    blocks (``Q8_0``, ``Q6_K``, ``Q5_1``...) to ``int8``; 4 bits and fewer
    (``Q4_0``, ``Q4_1``, ``Q4_K``, ``IQ4_NL``, ``Q3_K``...) to ``int4``.
    """
    name = stored_type.upper()
    if name in _FLOAT_TYPES:
        return _FLOAT_TYPES[name]
    if name.startswith(_EIGHT_BIT):
        return DataType.INT8
    return DataType.INT4


def stored_dtype(elements_by_type: Mapping[str, int]) -> DataType:
    """The dtype most parameters are stored in (counted in elements, not tensors)."""
    totals: dict[DataType, int] = {}
    for stored_type, count in elements_by_type.items():
        dtype = dtype_of_stored_type(stored_type)
        totals[dtype] = totals.get(dtype, 0) + int(count)
    if not totals:
        return DataType.FP32
    return max(totals, key=lambda d: (totals[d], -PRECISION_ORDER.index(d)))


def resolve_dtype(
    requested: DtypeChoice | str, stored: DataType, supported: Sequence[DataType]
) -> DataType:
    """``requested`` itself, or for ``auto`` the stored dtype where supported, else the best."""
    if requested != AUTO:
        return DataType(requested)
    if stored in supported:
        return stored
    for dtype in PRECISION_ORDER:
        if dtype in supported:
            return dtype
    raise UnsupportedError("the backend declares no supported dtype")


def stored_elements(loaded: LoadedModel) -> dict[str, int]:
    """Parameters per stored type (``F32``, ``BF16``, ``Q4_1``...), as the files hold them.

    For a converted GGUF the counts the converter recorded are read (opening the
    GGUF itself parses its whole vocabulary, seconds for a real model).
    """
    from ferrum_core.models.gguf_import import STORED_TYPES_FILE

    recorded = loaded.path / STORED_TYPES_FILE
    if loaded.gguf is not None and recorded.is_file():
        try:
            data = json.loads(recorded.read_text(encoding="utf-8"))
            if isinstance(data, dict) and all(
                isinstance(k, str) and type(v) is int for k, v in data.items()
            ):
                return dict(data)
        except (OSError, ValueError):
            pass  # an unreadable record: count from the GGUF below
    return loaded.weights.stored_types(elements=True)


def kv_cache_dtype(config: ExecutorConfig) -> DataType | None:
    """Executor option ``kv_cache_dtype``: ``None`` for ``auto`` (the default: the compute
    dtype), else the KV cache's dtype; any other value is an InvalidInputError."""
    from ferrum_core.errors import InvalidInputError

    value = config.executor_options.get("kv_cache_dtype", AUTO)
    name = value.lower() if isinstance(value, str) else None
    if name == AUTO:
        return None
    if name in KV_CACHE_DTYPES:
        return KV_CACHE_DTYPES[name]
    raise InvalidInputError(
        f"executor option 'kv_cache_dtype' must be one of auto, {', '.join(KV_CACHE_DTYPES)}, "
        f"got {value!r}"
    )
