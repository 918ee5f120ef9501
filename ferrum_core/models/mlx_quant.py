"""MLX affine-quantised folders (mlx-community's ``*-4bit`` / ``*-8bit`` models).

Such a folder's ``config.json`` has a ``quantization`` entry, e.g.
``{"group_size": 64, "bits": 4}``, optionally with per-module overrides
(``"model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8}``, or
``false`` for a module left in floats). Each quantised module ``M`` stores
``M.weight`` (uint32, ``32 // bits`` codes per word, packed as a little-endian
bit stream along each row), ``M.scales`` and ``M.biases`` (one per group of
``group_size`` elements of a row), so that::

    weight[r, c] = scales[r, c // group_size] * code[r, c] + biases[r, c // group_size]

:class:`MlxQuantization` parses the config entry; :class:`MlxQuantTensor` is one
such matrix as stored (what an MLX backend hands to ``mx.quantized_matmul``),
with :meth:`~MlxQuantTensor.dequantize` for backends that compute in floats.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferrum_core.errors import ConfigError, ModelLoadError, UnsupportedError
from ferrum_core.models.quant_blocks import StoredTensor

__all__ = ["MLX_BITS", "MLX_GROUP_SIZES", "MlxQuantSpec", "MlxQuantization", "MlxQuantTensor",
           "mlx_type_name", "quantised_weights"]

MLX_BITS = (2, 3, 4, 5, 6, 8)
MLX_GROUP_SIZES = (32, 64, 128)


def mlx_type_name(bits: int) -> str:
    """The stored-type name of an MLX affine tensor: ``Q4_MLX``, ``Q8_MLX``...

    It starts like the GGUF names of the same width, so ``--dtype auto`` maps
    4 bits and fewer to ``int4`` and 5 to 8 bits to ``int8``."""
    return f"Q{bits}_MLX"


@dataclass(frozen=True, slots=True)
class MlxQuantSpec:
    """How one module is quantised."""

    group_size: int
    bits: int

    @classmethod
    def parse(cls, value: Any, where: str) -> MlxQuantSpec:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object with 'group_size' and 'bits'")
        mode = value.get("mode", "affine")
        if mode != "affine":
            raise UnsupportedError(
                f"{where}: MLX quantisation mode {mode!r} is not supported (only 'affine')"
            )
        group, bits = value.get("group_size"), value.get("bits")
        if type(group) is not int or group not in MLX_GROUP_SIZES:
            raise ConfigError(f"{where}: 'group_size' must be one of {MLX_GROUP_SIZES}, "
                              f"got {group!r}")
        if type(bits) is not int or bits not in MLX_BITS:
            raise ConfigError(f"{where}: 'bits' must be one of {MLX_BITS}, got {bits!r}")
        return cls(group, bits)


@dataclass(frozen=True, slots=True)
class MlxQuantization:
    """The ``quantization`` entry of an MLX folder's ``config.json``."""

    default: MlxQuantSpec
    overrides: dict[str, MlxQuantSpec | None] = field(default_factory=dict)

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> MlxQuantization | None:
        """``None`` when ``raw`` has no ``quantization`` entry (a float checkpoint)."""
        entry = raw.get("quantization")
        if entry is None:
            return None
        if not isinstance(entry, dict):
            raise ConfigError("key 'quantization' must be an object")
        default = MlxQuantSpec.parse(entry, "key 'quantization'")
        overrides: dict[str, MlxQuantSpec | None] = {}
        for key, value in entry.items():
            if isinstance(value, dict):
                overrides[key] = MlxQuantSpec.parse(value, f"key 'quantization.{key}'")
            elif value is False:
                overrides[key] = None
        return cls(default, overrides)

    def spec_for(self, module: str) -> MlxQuantSpec | None:
        """The spec of module ``module`` (``model.layers.0.mlp.up_proj``); ``None``: floats."""
        if module in self.overrides:
            return self.overrides[module]
        return self.default


@dataclass(frozen=True, slots=True)
class MlxQuantTensor:
    """One MLX affine-quantised matrix as stored, under its Hugging Face name.

    ``weight`` is uint32 ``(rows, cols * bits // 32)``; ``scales`` and ``biases``
    are ``(rows, cols // group_size)`` floats as stored (bf16 widened to float32).
    """

    name: str
    shape: tuple[int, int]
    group_size: int
    bits: int
    weight: np.ndarray
    scales: np.ndarray
    biases: np.ndarray

    @property
    def type(self) -> str:
        return mlx_type_name(self.bits)

    @classmethod
    def build(
        cls, name: str, spec: MlxQuantSpec, weight: np.ndarray, scales: np.ndarray,
        biases: np.ndarray,
    ) -> MlxQuantTensor:  # fmt: skip
        """Check the three arrays against each other (ModelLoadError naming ``name``)."""
        if weight.dtype != np.uint32 or weight.ndim != 2:
            raise ModelLoadError(f"MLX-quantised tensor {name!r} must be a 2-D uint32 array, "
                                 f"got {weight.dtype}{list(weight.shape)}")
        rows, cols = weight.shape[0], weight.shape[1] * 32 // spec.bits
        groups = (rows, cols // spec.group_size)
        if cols % spec.group_size or scales.shape != groups or biases.shape != groups:
            raise ModelLoadError(
                f"MLX-quantised tensor {name!r} ({spec.bits} bits, group {spec.group_size}): "
                f"weight {list(weight.shape)} needs scales and biases {list(groups)}, got "
                f"{list(scales.shape)} and {list(biases.shape)}"
            )
        return cls(name, (rows, cols), spec.group_size, spec.bits, weight, scales, biases)

    def stored(self) -> StoredTensor:
        """The packed words as a :class:`StoredTensor` of blocks (one block per group;
        the scales and biases are not in it: use this object)."""
        raw = np.ascontiguousarray(self.weight).view(np.uint8)
        return StoredTensor(self.name, self.shape, self.type, raw, self.group_size,
                            self.group_size * self.bits // 8)

    def codes(self) -> np.ndarray:
        """The integer codes ``(rows, cols)`` as uint8 (unpacked bit stream)."""
        rows, cols = self.shape
        raw = np.ascontiguousarray(self.weight).view(np.uint8)
        bits = np.unpackbits(raw, axis=-1, bitorder="little")[:, : cols * self.bits]
        weights = (1 << np.arange(self.bits, dtype=np.uint16)).astype(np.uint16)
        return (bits.reshape(rows, cols, self.bits) @ weights).astype(np.uint8)

    def dequantize(self) -> np.ndarray:
        """``scales * codes + biases`` in float32, shape ``(rows, cols)``."""
        rows, cols = self.shape
        codes = self.codes().reshape(rows, -1, self.group_size).astype(np.float32)
        scales = np.asarray(self.scales, np.float32)[..., None]
        biases = np.asarray(self.biases, np.float32)[..., None]
        values: np.ndarray = scales * codes + biases
        return values.reshape(rows, cols)


def quantised_weights(
    names: Iterable[str], quantization: MlxQuantization, origin: Path
) -> dict[str, MlxQuantSpec]:
    """Every ``M.weight`` among ``names`` with ``M.scales`` beside it, and its spec.

    A module with scales that ``quantization`` leaves in floats, or without
    ``M.biases``, is a :class:`ModelLoadError` naming ``origin``."""
    present = set(names)
    found: dict[str, MlxQuantSpec] = {}
    for name in present:
        module = name.removesuffix(".weight")
        if module == name or f"{module}.scales" not in present:
            continue
        spec = quantization.spec_for(module)
        if spec is None or f"{module}.biases" not in present:
            raise ModelLoadError(
                f"{origin}: {module}.scales is present but {module} is not an affine-quantised "
                "module (the quantization entry of config.json leaves it in floats, or "
                f"{module}.biases is missing)"
            )
        found[name] = spec
    return found
