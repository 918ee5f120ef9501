"""Weights for the graph builder, as the chosen dtype wants them.

``fp32`` reads float arrays (a GGUF's blocks dequantised); ``int8``/``int4``
read each matrix as stored, so a GGUF's blocks reach :mod:`ferrum_cpu.quant`
untouched (float matrices are quantised there). Projections that read the
same input (q/k/v, gate/up) are concatenated into one matrix when they share
a representation: float arrays always, GGUF blocks when of one type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ferrum_cpu.linear import Mode

if TYPE_CHECKING:
    from ferrum_core.plugin import StoredTensor, WeightSource

__all__ = ["ModelWeights", "Projection"]



@dataclass(frozen=True, slots=True)
class Projection:
    """Linear maps of one input: ``fused`` (one matrix) or ``separate`` (one per part)."""

    parts: tuple[str, ...]
    rows: tuple[int, ...]
    fused: tuple[StoredTensor | np.ndarray, np.ndarray | None] | None
    separate: tuple[tuple[StoredTensor | np.ndarray, np.ndarray | None], ...] = ()


class ModelWeights:
    """Reads matrices and vectors under Hugging Face names for one ``mode``."""

    def __init__(self, source: WeightSource, mode: Mode) -> None:
        self.source = source
        self.mode = mode

    def vector(self, name: str) -> np.ndarray:
        return np.asarray(self.source.get(name), dtype=np.float32)

    def bias(self, name: str) -> np.ndarray | None:
        return self.vector(name) if self.source.has(name) else None

    def matrix(self, name: str) -> StoredTensor | np.ndarray:
        if self.mode != "fp32":
            stored = self.source.stored(name)
            if stored.quantized:
                return stored
        return np.asarray(self.source.get(name), dtype=np.float32)

    def projection(self, prefix: str, parts: tuple[str, ...], *, bias: bool) -> Projection:
        """``prefix.{part}_proj`` for each part, fused when the representations allow."""
        mats = [self.matrix(f"{prefix}.{part}_proj.weight") for part in parts]
        biases = [self.bias(f"{prefix}.{part}_proj.bias") if bias else None for part in parts]
        rows = tuple(int(m.shape[0]) for m in mats)
        separate = tuple(zip(mats, biases, strict=True))
        if len(parts) == 1:
            return Projection(parts, rows, None, separate)
        fused_bias = None
        if any(b is not None for b in biases):
            fused_bias = np.concatenate(
                [b if b is not None else np.zeros(r, np.float32) for b, r in zip(biases, rows,
                                                                                strict=True)]
            )
        fused = _concat(mats)
        if fused is None:
            return Projection(parts, rows, None, separate)
        return Projection(parts, rows, (fused, fused_bias))


def _concat(mats: list[StoredTensor | np.ndarray]) -> StoredTensor | np.ndarray | None:
    if all(isinstance(m, np.ndarray) for m in mats):
        return np.concatenate(mats, axis=0)  # type: ignore[arg-type]
    from ferrum_core.plugin import StoredTensor

    stored = [m for m in mats if isinstance(m, StoredTensor)]
    if len(stored) != len(mats):
        return None
    first = stored[0]
    same = all(
        (s.type, s.block_size, s.type_size, s.shape[1:]) ==
        (first.type, first.block_size, first.type_size, first.shape[1:]) for s in stored
    )  # fmt: skip
    if not same:
        return None
    data = np.concatenate([s.data for s in stored], axis=0)
    shape = (sum(s.shape[0] for s in stored), *first.shape[1:])
    return StoredTensor(first.name.rsplit(".", 2)[0] + ".fused.weight", shape, first.type, data,
                        first.block_size, first.type_size)
