"""Tensors as stored (:class:`StoredTensor`) and GGUF blocks split into
scales, minimums and integer codes (:func:`split_blocks`).

A block-quantised matrix is stored row by row; each row is a run of blocks of
``block_size`` elements in ``type_size`` bytes. :func:`split_blocks` decodes
every block of a supported type into ``scales`` and ``mins`` (float32, one per
group of ``group_size`` elements) and ``codes`` (small integers) such that::

    weights = (scales[..., None] * codes + mins[..., None]).reshape(shape)

equals ``gguf.quants.dequantize`` of the same bytes exactly: the products and
sums are the float32 operations gguf-py (and ggml) perform, in the same order.

=====  ==========  ===========  ==========================  ==============
type   group_size  codes        scale                       min
=====  ==========  ===========  ==========================  ==============
Q4_0   32          uint8 0..15  d                           -8 d
Q4_1   32          uint8 0..15  d                           m
Q5_0   32          uint8 0..31  d                           -16 d
Q5_1   32          uint8 0..31  d                           m
Q8_0   32          int8         d                           0
Q4_K   32          uint8 0..15  d * sc (6-bit sc)           -(dmin * m)
Q5_K   32          uint8 0..31  d * sc (6-bit sc)           -(dmin * m)
Q6_K   16          int8 -32..31 d * sc (int8 sc)            0
=====  ==========  ===========  ==========================  ==============

``d``, ``m`` and ``dmin`` are the block's float16 fields widened to float32.
K-quants (256-element super-blocks) are exposed at sub-block granularity: a
row of ``cols`` elements has ``cols // group_size`` groups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ferrum_core.errors import ModelLoadError, UnsupportedError

__all__ = ["BLOCK_TYPES", "StoredTensor", "QuantBlocks", "split_blocks", "to_float32"]

BLOCK_TYPES: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}
"""The types :func:`split_blocks` decodes: ``(block_size, type_size)``."""


@dataclass(frozen=True, slots=True)
class StoredTensor:
    """One tensor exactly as its file stores it, under its Hugging Face name.

    ``shape`` is the Hugging Face (row-major) shape, e.g. ``(rows, cols)``.
    ``type`` is the GGUF/ggml type name (``Q4_1``, ``Q8_0``, ``F16``...) or,
    from safetensors, the dtype spelling (``F32``, ``F16``, ``BF16``).
    ``data`` is, for block-quantised types (``block_size > 1``), a uint8 array
    ``(*shape[:-1], bytes_per_row)`` of the raw blocks; for float types the
    array as stored in ``shape`` (BF16 as its uint16 bits). Arrays may be
    read-only views of a memory map. ``type_size`` is the bytes per block.
    """

    name: str
    shape: tuple[int, ...]
    type: str
    data: np.ndarray
    block_size: int = 1
    type_size: int = 4

    @property
    def quantized(self) -> bool:
        """Whether ``data`` holds blocks (not one value per element)."""
        return self.block_size > 1


@dataclass(frozen=True, slots=True)
class QuantBlocks:
    """A block-quantised tensor split per group of ``group_size`` elements:
    ``scales``/``mins`` float32 ``(*shape[:-1], groups)``, ``codes`` integers
    ``(*shape[:-1], groups, group_size)``. See the module docstring."""

    type: str
    shape: tuple[int, ...]
    group_size: int
    scales: np.ndarray
    mins: np.ndarray
    codes: np.ndarray

    def dequantize(self) -> np.ndarray:
        """``scales * codes + mins`` as a float32 array of ``shape``."""
        values: np.ndarray = self.scales[..., None] * self.codes + self.mins[..., None]
        return values.astype(np.float32, copy=False).reshape(self.shape)


_Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # scales (B, S), mins (B, S), codes (B, S, G)


def _f16(raw: np.ndarray) -> np.ndarray:
    """``(B, 2)`` bytes -> ``(B, 1)`` float32."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """``(B, 16)`` bytes -> ``(B, 32)``: byte j holds element j (low) and j + 16 (high)."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """``(B, 4)`` little-endian uint32 -> ``(B, 32)``: bit i is element i's bit 4."""
    return np.unpackbits(qh, axis=-1, bitorder="little") << np.uint8(4)


def _q4_0(b: np.ndarray) -> _Split:
    d = _f16(b[:, 0:2])
    return d, -8 * d, _nibbles(b[:, 2:])[:, None, :]


def _q4_1(b: np.ndarray) -> _Split:
    return _f16(b[:, 0:2]), _f16(b[:, 2:4]), _nibbles(b[:, 4:])[:, None, :]


def _q5_0(b: np.ndarray) -> _Split:
    d = _f16(b[:, 0:2])
    return d, -16 * d, (_nibbles(b[:, 6:]) | _fifth_bits(b[:, 2:6]))[:, None, :]


def _q5_1(b: np.ndarray) -> _Split:
    codes = _nibbles(b[:, 8:]) | _fifth_bits(b[:, 4:8])
    return _f16(b[:, 0:2]), _f16(b[:, 2:4]), codes[:, None, :]


def _q8_0(b: np.ndarray) -> _Split:
    d = _f16(b[:, 0:2])
    return d, np.zeros_like(d), np.ascontiguousarray(b[:, 2:]).view(np.int8)[:, None, :]


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: ``d * sc`` and ``-(dmin * m)`` per 32-element sub-block, from
    ``d``, ``dmin`` and the 12 bytes that pack eight 6-bit ``sc`` and ``m``."""
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    packed = b[:, 4:16].reshape(-1, 3, 4)
    lo, mid, hi = packed[:, 0], packed[:, 1], packed[:, 2]
    sc = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 2) & 0x30)], axis=-1)
    m = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 2) & 0x30)], axis=-1)
    return d * sc.astype(np.float32), -(dmin * m.astype(np.float32))


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """``(B, 128)`` -> ``(B, 8, 32)``: 32-byte chunk i holds sub-block 2i (low
    nibbles) and 2i + 1 (high nibbles)."""
    chunks = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return (chunks & np.uint8(0x0F)).reshape(-1, 8, 32)


def _q4_k(b: np.ndarray) -> _Split:
    scales, mins = _k_scales(b)
    return scales, mins, _k_nibbles(b[:, 16:144])


def _q5_k(b: np.ndarray) -> _Split:
    scales, mins = _k_scales(b)
    high = np.unpackbits(b[:, 16:48, None], axis=-1, bitorder="little")  # (B, 32 elems, 8 subs)
    return scales, mins, _k_nibbles(b[:, 48:176]) | (high.transpose(0, 2, 1) << np.uint8(4))


def _q6_k(b: np.ndarray) -> _Split:
    low = b[:, 0:128].reshape(-1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    high = b[:, 128:192].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(
        1, 1, 4, 1
    )
    low = (low & np.uint8(0x0F)).reshape(-1, 8, 32)
    high = (high & np.uint8(0x03)).reshape(-1, 8, 32)
    codes = ((low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)).reshape(-1, 16, 16)
    sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    scales = _f16(b[:, 208:210]) * sc
    return scales, np.zeros_like(scales), codes


_DECODERS: dict[str, Callable[[np.ndarray], _Split]] = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}


def split_blocks(stored: StoredTensor) -> QuantBlocks:
    """Decode the blocks of ``stored`` into :class:`QuantBlocks` (vectorised).

    Raises :class:`UnsupportedError` for a type outside :data:`BLOCK_TYPES`
    (float types included) and :class:`ModelLoadError` when ``data`` does not
    have the size its shape and type imply.
    """
    decoder = _DECODERS.get(stored.type)
    if decoder is None:
        raise UnsupportedError(
            f"type {stored.type} of tensor {stored.name!r} cannot be split into blocks "
            f"(supported: {', '.join(BLOCK_TYPES)})"
        )
    block_size, type_size = BLOCK_TYPES[stored.type]
    lead, cols = stored.shape[:-1], (stored.shape[-1] if stored.shape else 0)
    want = (*lead, cols // block_size * type_size)
    data = stored.data
    if not stored.shape or cols % block_size or data.shape != want or data.dtype != np.uint8:
        raise ModelLoadError(
            f"tensor {stored.name!r} ({stored.type}, shape {list(stored.shape)}) has data "
            f"{data.dtype}{list(data.shape)}; expected uint8{list(want)}"
        )
    scales, mins, codes = decoder(np.ascontiguousarray(data).reshape(-1, type_size))
    group = codes.shape[-1]
    groups = cols // group
    return QuantBlocks(
        type=stored.type,
        shape=stored.shape,
        group_size=group,
        scales=scales.reshape(*lead, groups),
        mins=mins.reshape(*lead, groups),
        codes=codes.reshape(*lead, groups, group),
    )


def to_float32(stored: StoredTensor) -> np.ndarray:
    """``stored`` as float32 in its shape: float types widened (BF16 bits
    shifted into float32), supported block types by :func:`split_blocks`."""
    if stored.quantized:
        return split_blocks(stored).dequantize()
    if stored.type == "BF16":
        bits = np.asarray(stored.data, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32).reshape(stored.shape)
    return np.asarray(stored.data, dtype=np.float32).reshape(stored.shape)
