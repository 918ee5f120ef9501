"""Small shared types the protocol refers to: dtypes, devices, model info."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TokenId", "DataType", "Device", "ModelInfo", "parse_device"]

TokenId = int


class DataType(StrEnum):
    """Compute / storage dtypes (``fp32``, ``fp16``, ``bf16``, ``int8``, ``int4``)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def bytes_per_element(self) -> float:
        return {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}[self.value]


_DEVICE_RE = re.compile(r"^(cpu|metal|cuda:\d+)$")


def parse_device(text: str) -> str:
    """Normalise a device string (``cpu``, ``cuda:N``, ``metal``); ``cuda`` means ``cuda:0``."""
    from ferrum_core.errors import InvalidInputError

    value = text.strip().lower()
    if value == "cuda":
        value = "cuda:0"
    if not _DEVICE_RE.match(value):
        raise InvalidInputError(f"unknown device {text!r}: expected cpu, cuda:N or metal")
    return value


Device = str
"""A device is a string: ``cpu``, ``cuda:N`` or ``metal``."""


class ModelInfo(BaseModel):
    """Facts about a loaded model, as the reference's ``ModelInfo``."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model_id: str
    model_type: str
    num_parameters: int = 0
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_sequence_length: int
    dtype: DataType = DataType.FP32
    device: Device = "cpu"
    version: str | None = None
    license: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
