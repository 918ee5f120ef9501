"""Model weights from ``*.safetensors`` (single file or sharded), never pickles;
for a model converted from a GGUF, also the GGUF's own blocks (:meth:`WeightSource.stored`)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from types import TracebackType

import numpy as np

from ferrum_core.errors import ModelLoadError
from ferrum_core.models.config import ModelConfig
from ferrum_core.models.expected import expected_tensors
from ferrum_core.models.gguf_tensors import GgufTensors
from ferrum_core.models.mlx_quant import (
    MlxQuantization,
    MlxQuantSpec,
    MlxQuantTensor,
    quantised_weights,
)
from ferrum_core.models.quant_blocks import StoredTensor
from ferrum_core.models.safetensors_io import SafetensorsFile

__all__ = ["INDEX_FILE", "WeightSource"]

INDEX_FILE = "model.safetensors.index.json"
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def _pickle_error(directory: Path) -> ModelLoadError | None:
    pickles = sorted({p.name for pat in _PICKLE_PATTERNS for p in directory.glob(pat)})
    if not pickles:
        return None
    return ModelLoadError(
        f"{directory}: only pickle weights ({', '.join(pickles)}) and no *.safetensors; "
        "Ferrum never loads pickles. Re-save the model with safetensors "
        "(transformers: model.save_pretrained(dir, safe_serialization=True))"
    )


class WeightSource:
    """Named tensors (Hugging Face names) over memory-mapped safetensors files.

    :meth:`get` gives float arrays. :meth:`stored` gives each tensor as its
    file stores it: from the safetensors files, or, once a GGUF is attached
    (:meth:`attach_gguf`, ``from_dir(..., gguf=path)``), the GGUF's own blocks
    while :meth:`get` keeps serving the converted floats.
    """

    def __init__(self, files: list[SafetensorsFile], origin: Path) -> None:
        self.origin = origin  # the directory, index or file the names came from
        self._files = files
        self._gguf_path: Path | None = None
        self._gguf: GgufTensors | None = None
        self._gguf_lock = threading.Lock()
        self._where: dict[str, SafetensorsFile] = {}
        self._mlx: dict[str, MlxQuantSpec] = {}  # MLX-quantised weight names (attach_mlx_quant)
        for file in files:
            for name in file.entries:
                if name in self._where:
                    raise ModelLoadError(
                        f"tensor {name!r} appears in both {self._where[name].path} and {file.path}"
                    )
                self._where[name] = file

    @classmethod
    def from_dir(
        cls, path: str | Path, *, gguf: str | Path | GgufTensors | None = None,
        mlx_quant: MlxQuantization | None = None,
    ) -> WeightSource:  # fmt: skip
        """The weights of a model directory; ``gguf``: the file it was converted
        from, attached with :meth:`attach_gguf`; ``mlx_quant``: the ``quantization``
        entry of an MLX folder (:meth:`attach_mlx_quant`)."""
        source = cls._open_dir(Path(path))
        try:
            if gguf is not None:
                source.attach_gguf(gguf)
            if mlx_quant is not None:
                source.attach_mlx_quant(mlx_quant)
        except BaseException:
            source.close()
            raise
        return source

    @classmethod
    def _open_dir(cls, directory: Path) -> WeightSource:
        if not directory.is_dir():
            raise ModelLoadError(f"{directory}: not a model directory")
        index = directory / INDEX_FILE
        if index.is_file():
            return cls._from_index(index)
        single = directory / "model.safetensors"
        files = [single] if single.is_file() else sorted(directory.glob("*.safetensors"))
        if not files:
            raise _pickle_error(directory) or ModelLoadError(
                f"{directory}: no *.safetensors weights found"
            )
        return cls(_open_all(files), single if single.is_file() else directory)

    @classmethod
    def _from_index(cls, index: Path) -> WeightSource:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            pairs = [(str(k), str(v)) for k, v in weight_map.items()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{index}: unreadable shard index ({exc})") from None
        shard_names = sorted({shard for _, shard in pairs})
        for shard in shard_names:
            if not (index.parent / shard).is_file():
                tensor = next(name for name, s in pairs if s == shard)
                raise ModelLoadError(
                    f"{index}: shard {shard} (holding tensor {tensor!r}) is missing"
                )
        files = _open_all([index.parent / shard for shard in shard_names])
        by_name = {f.path.name: f for f in files}
        for name, shard in pairs:
            if name not in by_name[shard].entries:
                raise ModelLoadError(
                    f"{by_name[shard].path}: missing tensor {name!r} (per {index.name})"
                )
        return cls(files, index)

    def names(self) -> list[str]:
        return sorted(self._where)

    def has(self, name: str) -> bool:
        return name in self._where

    def _file(self, name: str) -> SafetensorsFile:
        file = self._where.get(name)
        if file is None:
            raise ModelLoadError(f"{self.origin}: missing tensor {name!r}")
        return file

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape (an MLX-quantised matrix's logical ``(rows, cols)``)."""
        shape = self._file(name).entries[name].shape
        spec = self._mlx.get(name)
        return shape if spec is None else (shape[0], shape[1] * 32 // spec.bits)

    def dtype(self, name: str) -> str:
        """Stored dtype in safetensors spelling (``F32``, ``F16``, ``BF16``...), or
        ``Q4_MLX``-style for an MLX-quantised matrix."""
        spec = self._mlx.get(name)
        return self._file(name).entries[name].dtype if spec is None else f"Q{spec.bits}_MLX"

    def file_of(self, name: str) -> Path:
        return self._file(name).path

    def get(self, name: str) -> np.ndarray:
        """float32/float16 as stored (read-only, memory-mapped), bf16 upcast to float32;
        an MLX-quantised matrix dequantised to float32."""
        quantised = self.mlx_quantized(name)
        return self._file(name).get(name) if quantised is None else quantised.dequantize()

    def attach_mlx_quant(self, quantization: MlxQuantization) -> None:
        """Serve the MLX-quantised matrices of this folder (:func:`quantised_weights`):
        :meth:`shape`, :meth:`get` are then logical, :meth:`mlx_quantized` as stored."""
        self._mlx = quantised_weights(self._where.keys(), quantization, self.origin)

    def mlx_quantized(self, name: str) -> MlxQuantTensor | None:
        """``name`` as an MLX affine-quantised matrix, or ``None`` when it is not one."""
        spec, module = self._mlx.get(name), name.removesuffix(".weight")
        if spec is None:
            return None
        scales, biases = (self._file(f"{module}.{k}").get(f"{module}.{k}")
                          for k in ("scales", "biases"))
        return MlxQuantTensor.build(name, spec, self._file(name).get(name), scales, biases)

    # -- tensors as stored -------------------------------------------------

    def attach_gguf(self, gguf: str | Path | GgufTensors) -> None:
        """Serve :meth:`stored` from the GGUF these weights were converted from.

        A path is opened on first use (parsing a GGUF header with a large
        vocabulary takes seconds, and :meth:`get` never needs it); an open
        :class:`GgufTensors` is checked now and owned from then on. The GGUF
        must hold exactly these tensor names and shapes, else ModelLoadError.
        """
        if isinstance(gguf, GgufTensors):
            self._check_gguf(gguf)
            path, opened = gguf.path, gguf
        else:
            path, opened = Path(gguf).expanduser(), None
            if not path.is_file():
                raise ModelLoadError(f"{path}: GGUF file not found")
        with self._gguf_lock:
            if self._gguf is not None and self._gguf is not opened:
                self._gguf.close()
            self._gguf_path, self._gguf = path, opened

    @property
    def gguf_path(self) -> Path | None:
        """The attached GGUF file, if any."""
        return self._gguf_path

    @property
    def stored_from_gguf(self) -> bool:
        """Whether :meth:`stored` returns a GGUF's blocks (else the safetensors data)."""
        return self._gguf_path is not None

    def _check_gguf(self, tensors: GgufTensors) -> None:
        tensors.check_shapes({name: self.shape(name) for name in self._where}, self.origin)

    def _gguf_tensors(self) -> GgufTensors | None:
        with self._gguf_lock:
            if self._gguf is None and self._gguf_path is not None:
                tensors = GgufTensors(self._gguf_path)
                try:
                    self._check_gguf(tensors)
                except BaseException:
                    tensors.close()
                    raise
                self._gguf = tensors
            return self._gguf

    def stored(self, name: str) -> StoredTensor:
        """``name`` as stored: the attached GGUF's blocks (rows in Hugging Face
        order), else the safetensors array in its dtype (BF16 as uint16 bits)."""
        tensors = self._gguf_tensors()
        if tensors is not None:
            return tensors.stored(name)
        quantised = self.mlx_quantized(name)
        if quantised is not None:
            return quantised.stored()
        dtype = self.dtype(name)
        array = self.get(name)
        if dtype == "BF16":  # get() widened the bits; narrowing them back is exact
            array = (array.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
        return StoredTensor(name, self.shape(name), dtype, array, 1, array.dtype.itemsize)

    def stored_types(self, *, elements: bool = False) -> dict[str, int]:
        """How many tensors (with ``elements``: elements, as ``stored_dtype`` wants)
        are stored in each type, e.g. ``{"Q4_1": 210, "Q8_0": 1, "F32": 61}``."""
        tensors = self._gguf_tensors()
        if tensors is not None:
            return tensors.types(elements=elements)
        counts: dict[str, int] = {}
        companions = {n.removesuffix(".weight") + s for n in self._mlx for s in (".scales",
                                                                                ".biases")}
        for name in self._where.keys() - companions:
            size = math.prod(self.shape(name)) if elements else 1
            counts[self.dtype(name)] = counts.get(self.dtype(name), 0) + size
        return counts

    def validate(self, config: ModelConfig) -> None:
        """Every tensor ``config`` needs is present with the right shape and a float dtype."""
        expected = expected_tensors(config)
        if config.tie_word_embeddings and self.has("lm_head.weight"):
            expected["lm_head.weight"] = (config.vocab_size, config.hidden_size)
        for name, shape in expected.items():
            got = self.shape(name)
            if got != shape:
                raise ModelLoadError(
                    f"{self.file_of(name)}: tensor {name!r} has shape {list(got)}, "
                    f"the config needs {list(shape)}"
                )
            if self.dtype(name) not in _FLOAT_DTYPES and name not in self._mlx:
                raise ModelLoadError(
                    f"{self.file_of(name)}: tensor {name!r} has dtype {self.dtype(name)}, "
                    "expected a float type"
                )

    def close(self) -> None:
        for file in self._files:
            file.close()
        with self._gguf_lock:
            if self._gguf is not None:
                self._gguf.close()

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        gguf = f", stored from {self._gguf_path.name}" if self._gguf_path else ""
        return f"WeightSource({self.origin}, {len(self._where)} tensors{gguf})"


def _open_all(paths: list[Path]) -> list[SafetensorsFile]:
    opened: list[SafetensorsFile] = []
    try:
        for path in paths:
            opened.append(SafetensorsFile(path))
    except BaseException:
        for file in opened:
            file.close()
        raise
    return opened
