"""Read and write ``.safetensors`` files with numpy only.

The format is an 8-byte little-endian header length, a JSON header mapping
tensor names to ``{dtype, shape, data_offsets}``, then the raw bytes. Reading
it ourselves (instead of ``safetensors.safe_open``) gives three things the
model layer needs: bf16 (numpy has no bf16; the raw bits are widened to
float32), read-only zero-copy views of a memory map, and errors that name the
tensor and the file.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ferrum_core.errors import ModelLoadError

__all__ = ["TensorEntry", "SafetensorsFile", "write_safetensors"]

_NUMPY_DTYPES: dict[str, Any] = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # widened to float32 on read
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "U32": np.uint32,  # MLX-quantised matrices (ferrum_core.models.mlx_quant)
    "BOOL": np.bool_,
}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _NUMPY_DTYPES.items() if k != "BF16"}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors spelling: "F32", "BF16", ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def _whole(value: Any) -> int:
    """A non-negative JSON integer (no bools, floats or strings); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(value)
    return value


def _parse_entry(path: Path, name: str, info: Any, base: int) -> TensorEntry:
    try:
        dtype, shape = str(info["dtype"]), tuple(_whole(d) for d in info["shape"])
        begin, end = (_whole(x) for x in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"{path}: malformed header entry for tensor {name!r}") from None
    if dtype not in _NUMPY_DTYPES:
        raise ModelLoadError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
    expected = math.prod(shape) * np.dtype(_NUMPY_DTYPES[dtype]).itemsize
    if end - begin != expected or begin < 0:
        raise ModelLoadError(
            f"{path}: tensor {name!r} claims shape {list(shape)} ({dtype}) but spans "
            f"{end - begin} bytes instead of {expected}"
        )
    return TensorEntry(name, dtype, shape, base + begin, base + end)


class SafetensorsFile:
    """One memory-mapped safetensors file; the header is checked against the file size."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - lives with the map
        except OSError as exc:
            raise ModelLoadError(
                f"{self.path}: cannot open weights file ({exc.strerror})"
            ) from None
        try:
            self.entries, self.metadata = self._read_header()
            size = self._size()
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except BaseException:
            self._file.close()
            raise

    def _size(self) -> int:
        return self._file.seek(0, 2)

    def _read_header(self) -> tuple[dict[str, TensorEntry], dict[str, str]]:
        size = self._size()
        self._file.seek(0)
        prefix = self._file.read(8)
        if len(prefix) < 8:
            raise ModelLoadError(f"{self.path}: truncated safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER or 8 + length > size:
            raise ModelLoadError(
                f"{self.path}: truncated or corrupt safetensors header "
                f"(header claims {length} bytes, file has {size})"
            )
        try:
            header = json.loads(self._file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{self.path}: corrupt safetensors header ({exc})") from None
        if not isinstance(header, dict):
            raise ModelLoadError(f"{self.path}: corrupt safetensors header (not an object)")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise ModelLoadError(f"{self.path}: corrupt safetensors header (__metadata__ is not"
                                 " an object)")
        entries = {n: _parse_entry(self.path, n, info, 8 + length) for n, info in header.items()}
        for entry in entries.values():
            if entry.end > size:
                raise ModelLoadError(
                    f"{self.path}: tensor {entry.name!r} is truncated (its data ends at byte "
                    f"{entry.end}, the file has {size} bytes)"
                )
        return entries, {str(k): str(v) for k, v in metadata.items()}

    def get(self, name: str) -> np.ndarray:
        """The tensor as numpy: float32/float16 as stored (a read-only view of the
        map; copy before writing), bf16 widened to a new float32 array."""
        entry = self.entries.get(name)
        if entry is None:
            raise ModelLoadError(f"{self.path}: no tensor {name!r}")
        dtype = np.dtype(_NUMPY_DTYPES[entry.dtype])
        count = math.prod(entry.shape)
        if self._map is None or count == 0:
            array = np.zeros(count, dtype=dtype)
        else:
            array = np.frombuffer(self._map, dtype=dtype, count=count, offset=entry.start)
            if entry.start % dtype.itemsize:
                array = array.copy()  # keep every array aligned for torch / BLAS
        if entry.dtype == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array.reshape(entry.shape)

    def close(self) -> None:
        # Arrays handed out may still view the map; mmap.close() would fail on
        # exported buffers, so the map is released when the last view dies.
        self._file.close()


def _header(
    tensors: list[tuple[str, np.dtype[Any], tuple[int, ...]]], meta: dict[str, str]
) -> bytes:
    header: dict[str, Any] = {"__metadata__": meta} if meta else {}
    offset = 0
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": _DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # data starts 8-byte aligned


def write_safetensors(
    path: str | Path,
    tensors: Iterable[tuple[str, np.dtype[Any], tuple[int, ...]]],
    arrays: Iterator[np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Stream tensors into ``path``: the header is written from the declared
    ``(name, dtype, shape)`` list, then ``arrays`` one at a time, so peak memory
    is one tensor, not the model."""
    declared = [(n, np.dtype(d), tuple(s)) for n, d, s in tensors]
    header = _header(declared, metadata or {})
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header)))
        out.write(header)
        for name, dtype, shape in declared:
            array = next(arrays, None)
            if array is None or array.dtype != dtype or tuple(array.shape) != shape:
                got = None if array is None else (array.dtype, array.shape)
                raise ModelLoadError(f"{path}: tensor {name!r} expected {dtype}{shape}, got {got}")
            out.write(np.ascontiguousarray(array).data)
