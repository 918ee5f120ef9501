"""`TensorRef`: a thin view over a backend array, so the core imports no torch/mlx/ort.

The core's own tensors are :class:`HostTensor` (numpy on the host). Backends may
hand back their own objects as long as they satisfy the :class:`TensorRef`
protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ferrum_core.errors import InvalidInputError

__all__ = ["TensorRef", "HostTensor", "as_tensor_ref", "tensor_to_tokens", "token_ids"]


@runtime_checkable
class TensorRef(Protocol):
    """What the core needs of any array: its shape, dtype, device and a host copy."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str: ...

    @property
    def device(self) -> str: ...

    def to_numpy(self) -> np.ndarray: ...

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class HostTensor:
    """A numpy array on the host, seen as a :class:`TensorRef`."""

    array: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape)

    @property
    def dtype(self) -> str:
        return str(self.array.dtype)

    @property
    def device(self) -> str:
        return "cpu"

    def to_numpy(self) -> np.ndarray:
        return self.array

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self.array.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.array.__dlpack_device__()

    def __len__(self) -> int:
        return int(self.array.shape[0]) if self.array.ndim else 1


def as_tensor_ref(value: TensorRef | np.ndarray | Sequence[Any], dtype: Any = None) -> TensorRef:
    """Wrap numpy arrays and nested lists as :class:`HostTensor`; pass TensorRefs through."""
    if isinstance(value, HostTensor):
        return value
    if isinstance(value, np.ndarray):
        return HostTensor(value if dtype is None else value.astype(dtype, copy=False))
    if isinstance(value, TensorRef):
        return value
    return HostTensor(np.asarray(value, dtype=dtype))


def tensor_to_tokens(tensor: TensorRef) -> list[int]:
    """Flatten an integer tensor of token ids into a list (as the reference's helper)."""
    array = tensor.to_numpy()
    if array.dtype.kind not in "iu":
        raise InvalidInputError(f"token ids must be integers, got dtype {array.dtype}")
    if array.ndim > 2 or (array.ndim == 2 and array.shape[0] != 1):
        raise InvalidInputError(
            f"expected token ids of shape [seq] or [1, seq], got {list(array.shape)}"
        )
    return [int(t) for t in array.reshape(-1)]


def token_ids(tokens: Sequence[int]) -> HostTensor:
    """Token ids as the ``[1, seq]`` int64 tensor the protocol's inputs take."""
    return HostTensor(np.asarray([list(tokens)], dtype=np.int64))
