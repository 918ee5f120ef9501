"""A GGUF file's tensors under Hugging Face names, as stored (:class:`GgufTensors`).

The file is memory-mapped by ``gguf.GGUFReader``; :meth:`GgufTensors.stored`
hands out each tensor's own blocks (no dequantisation), :meth:`GgufTensors.get`
the float32 weights the converter writes. llama.cpp stores a llama model's q/k
projections with the rows of each head permuted for its rope; rows are
quantised independently, so both methods undo that permutation on the rows.
Every failure of the reader on a truncated or corrupt file becomes a
:class:`ModelLoadError` naming the file (:func:`open_gguf`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ferrum_core.errors import FerrumError, ModelLoadError
from ferrum_core.models.gguf_metadata import read_metadata
from ferrum_core.models.quant_blocks import StoredTensor, to_float32

__all__ = ["GgufTensors", "open_gguf", "gguf_errors", "hf_tensor_name", "unpermute_rows"]

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
# Architectures whose llama.cpp converter permutes the q/k rows (LlamaModel.permute).
_PERMUTED_ARCHITECTURES = frozenset({"llama"})
_FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})


def hf_tensor_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_RE.match(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ModelLoadError(f"GGUF tensor {gguf_name!r} has no Hugging Face llama equivalent")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"


def unpermute_rows(array: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's ``permute``: its rope pairs rows (2i, 2i+1) of a head,
    ``transformers`` pairs (i, i + head_dim/2). Works on float rows and on rows
    of raw blocks alike (trailing axes are carried along)."""
    rows = array.shape[0]
    if rows % (2 * n_head):
        raise ModelLoadError(f"cannot un-permute {rows} rows into {n_head} heads")
    split = array.reshape(n_head, rows // n_head // 2, 2, *array.shape[1:])
    return split.swapaxes(1, 2).reshape(array.shape)


@contextmanager
def gguf_errors(path: Path) -> Iterator[None]:
    """Turn any failure of gguf-py on a malformed file into a :class:`ModelLoadError`
    naming ``path`` (Ferrum's own errors, ``MemoryError`` and interrupts pass)."""
    try:
        yield
    except (FerrumError, MemoryError):
        raise
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        if len(detail) > 200:
            detail = detail[:197] + "..."
        raise ModelLoadError(f"{path}: not a readable GGUF file ({detail})") from exc


def open_gguf(path: str | Path) -> Any:
    """A memory-mapped ``gguf.GGUFReader`` of ``path``; a missing, truncated or
    corrupt file is a :class:`ModelLoadError` naming it."""
    from gguf import GGUFReader

    source = Path(path)
    if not source.is_file():
        raise ModelLoadError(f"{source}: GGUF file not found")
    with gguf_errors(source):
        return GGUFReader(source)


class GgufTensors:
    """The tensors of one GGUF file, by Hugging Face name.

    ``metadata`` holds every key/value field; ``gguf_names`` every tensor name
    in the file; ``unmapped`` those with no Hugging Face equivalent (they are
    left out of :meth:`names`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        reader = open_gguf(self.path)
        with gguf_errors(self.path):
            self.metadata: dict[str, Any] = read_metadata(reader)
            self.gguf_names: tuple[str, ...] = tuple(t.name for t in reader.tensors)
            self._tensors: dict[str, Any] = {}
            unmapped: list[str] = []
            for tensor in reader.tensors:
                try:
                    self._tensors[hf_tensor_name(tensor.name)] = tensor
                except ModelLoadError:
                    unmapped.append(tensor.name)
        self.unmapped: tuple[str, ...] = tuple(unmapped)
        self.architecture = str(self.metadata.get("general.architecture") or "")
        self._closed = False

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def has(self, name: str) -> bool:
        return name in self._tensors

    def _tensor(self, name: str) -> Any:
        if self._closed:
            raise ModelLoadError(f"{self.path}: GGUF tensors read after close()")
        tensor = self._tensors.get(name)
        if tensor is None:
            raise ModelLoadError(f"{self.path}: GGUF file has no tensor for {name!r}")
        return tensor

    def shape(self, name: str) -> tuple[int, ...]:
        """Hugging Face (row-major) shape; GGUF lists the columns first."""
        return tuple(int(d) for d in reversed(self._tensor(name).shape))

    def type_of(self, name: str) -> str:
        """The GGUF type name (``Q4_1``, ``Q8_0``, ``F32``...)."""
        return str(self._tensor(name).tensor_type.name)

    def types(self, *, elements: bool = False) -> dict[str, int]:
        """How many tensors (of :meth:`names`; with ``elements``, how many
        elements) are stored in each type, e.g. ``{"Q4_1": 210, "Q8_0": 1, ...}``."""
        counts: dict[str, int] = {}
        for tensor in self._tensors.values():
            kind = tensor.tensor_type.name
            counts[kind] = counts.get(kind, 0) + (int(tensor.n_elements) if elements else 1)
        return counts

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], origin: object) -> None:
        """ModelLoadError unless this file holds exactly ``shapes`` (names and shapes)."""
        theirs = {name: self.shape(name) for name in self._tensors}
        if theirs == dict(shapes):
            return
        problems = [f"missing {n!r}" for n in sorted(set(shapes) - set(theirs))]
        problems += [f"extra {n!r}" for n in sorted(set(theirs) - set(shapes))]
        problems += [
            f"{n!r} is {list(theirs[n])}, not {list(shapes[n])}"
            for n in sorted(set(shapes) & set(theirs))
            if shapes[n] != theirs[n]
        ]
        more = " ..." if len(problems) > 3 else ""
        raise ModelLoadError(
            f"{self.path} does not hold the tensors of {origin}: {'; '.join(problems[:3])}{more}"
        )

    def _permuted_heads(self, name: str) -> int | None:
        """Head count whose llama.cpp row permutation ``name`` carries, if any."""
        if self.architecture not in _PERMUTED_ARCHITECTURES:
            return None
        if ".self_attn.q_proj." in name:
            keys = ["head_count"]
        elif ".self_attn.k_proj." in name:
            keys = ["head_count_kv", "head_count"]  # no kv count: as many as q heads
        else:
            return None
        for key in keys:
            value = self.metadata.get(f"{self.architecture}.attention.{key}")
            if value is None:
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
            break
        raise ModelLoadError(
            f"{self.path}: GGUF metadata '{self.architecture}.attention.{keys[0]}' is missing "
            f"or not a positive integer; it is needed to un-permute {name!r}"
        )

    def stored(self, name: str) -> StoredTensor:
        """The tensor's own data (raw blocks for quantised types, BF16 as uint16),
        rows in Hugging Face order. Zero-copy except for the un-permuted q/k."""
        from gguf import GGML_QUANT_SIZES

        tensor = self._tensor(name)
        kind = tensor.tensor_type.name
        block_size, type_size = GGML_QUANT_SIZES[tensor.tensor_type]
        data = tensor.data
        if kind == "BF16":
            data = data.view(np.uint16)  # the reader gives 2 bytes per element
        heads = self._permuted_heads(name)
        if heads is not None:
            if block_size > 1 and data.ndim < 2:
                raise ModelLoadError(
                    f"{self.path}: cannot un-permute {name!r}, a block-quantised vector"
                )
            data = unpermute_rows(data, heads)
        return StoredTensor(name, self.shape(name), kind, data, block_size, type_size)

    def get(self, name: str) -> np.ndarray:
        """float32 weights in Hugging Face order: what the converter writes.

        Block types are dequantised by ``gguf.quants`` (every type gguf-py
        implements; :func:`~ferrum_core.models.quant_blocks.split_blocks`
        reproduces it exactly for the types it splits)."""
        from gguf import GGMLQuantizationType, quants

        stored = self.stored(name)
        if stored.type in _FLOAT_TYPES:
            return to_float32(stored)
        try:
            array = quants.dequantize(stored.data, GGMLQuantizationType[stored.type])
        except NotImplementedError:
            gguf_name = self._tensor(name).name
            raise ModelLoadError(
                f"{self.path}: GGUF tensor {gguf_name!r} uses {stored.type}, "
                "which cannot be dequantised"
            ) from None
        return np.asarray(array, dtype=np.float32).reshape(stored.shape)

    def close(self) -> None:
        """Forget the reader; arrays already handed out keep the map alive."""
        self._closed = True
        self._tensors = {}

    def __enter__(self) -> GgufTensors:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GgufTensors({self.path}, {len(self._tensors)} tensors)"
