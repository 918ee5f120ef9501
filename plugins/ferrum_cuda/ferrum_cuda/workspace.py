"""The decode workspace: the decode group's keys and values kept contiguous across steps.

Gathering every key of every decoding sequence out of the paged pool each
step moves more memory than the weights once contexts grow. While the decode
group stays the same (the same sequences in the same order, each one token
longer, nothing truncated in between), last step's contiguous copy is still
right: only the new token's K and V are written into it. Anything else
rebuilds it with one gather. The pool stays the source of truth; the
workspace is a cache of it, bounded by ``max_bytes`` (beyond that the
attention gathers from the pool as usual).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ferrum_cuda.cpu_native.kernels import CpuKernels

__all__ = ["WorkspaceStep", "DecodeWorkspace"]

_HEADROOM = 128  # extra key columns allocated so that decoding does not regrow every step


@dataclass(frozen=True, slots=True)
class WorkspaceStep:
    reuse: bool  # True: append the new token; False: refill from the pool
    rows: torch.Tensor  # [B] 0..B-1
    cols: torch.Tensor  # [B] column of each row's new token (its length - 1)


class DecodeWorkspace:
    def __init__(
        self,
        *,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        max_bytes: int,
    ) -> None:
        self._shape = (num_layers, kv_heads, head_dim)
        self._dtype, self._device, self.max_bytes = dtype, device, max_bytes
        self._k: torch.Tensor | None = None  # [layers, B_cap, kv_heads, L_cap, head_dim]
        self._v: torch.Tensor | None = None
        self._members: list[tuple[str, int]] | None = None
        self.rebuilds = 0
        self.reuses = 0

    def reset(self) -> None:
        """Forget the group (a member was truncated, released or rolled back)."""
        self._members = None

    def buffers(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The whole K and V ``[layers, B_cap, kv_heads, L_cap, head_dim]`` (``None``: none)."""
        if self._k is None or self._v is None:
            return None
        return self._k, self._v

    def num_bytes(self) -> int:
        return 0 if self._k is None else 2 * self._k.numel() * self._k.element_size()

    def prepare(self, members: Sequence[tuple[str, int]]) -> WorkspaceStep | None:
        """Plan this step for ``(seq_id, length)`` rows; ``None``: too big, gather instead."""
        width = max(length for _, length in members)
        prev = self._members
        reuse = (
            prev is not None
            and self._k is not None
            and width <= self._k.shape[3]
            and len(prev) == len(members)
            and all(a == b and n == m + 1 for (a, n), (b, m) in zip(members, prev, strict=True))
        )
        if not reuse and not self._ensure(len(members), width):
            self.reset()
            return None
        self._members = list(members)
        if reuse:
            self.reuses += 1
        else:
            self.rebuilds += 1
        rows = torch.arange(len(members), device=self._device)
        cols = torch.tensor([length - 1 for _, length in members], device=self._device)
        return WorkspaceStep(reuse, rows, cols)

    def _ensure(self, batch: int, width: int) -> bool:
        if self._k is not None and batch <= self._k.shape[1] and width <= self._k.shape[3]:
            return True
        layers, kv_heads, head_dim = self._shape
        columns = -(-(width + _HEADROOM) // _HEADROOM) * _HEADROOM
        shape = (layers, batch, kv_heads, columns, head_dim)
        element = torch.empty((), dtype=self._dtype).element_size()
        if 2 * element * batch * layers * kv_heads * columns * head_dim > self.max_bytes:
            self._k = self._v = None
            return False
        # Zeroed: masked columns are multiplied by zero weights, so they must be finite.
        self._k = torch.zeros(shape, dtype=self._dtype, device=self._device)
        self._v = torch.zeros(shape, dtype=self._dtype, device=self._device)
        return True

    def keys_values(
        self,
        layer: int,
        step: WorkspaceStep,
        new_k: torch.Tensor,
        new_v: torch.Tensor,
        gathered: tuple[torch.Tensor, torch.Tensor] | None,
        width: int,
        kernels: CpuKernels | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, kv_heads, width, head_dim]`` K and V after adding this step's tokens.

        ``new_k`` / ``new_v`` are the rows' new ``[B, kv_heads, head_dim]``; on a
        rebuild, ``gathered`` holds the pool's ``[B, kv_heads, width, head_dim]``.
        """
        assert self._k is not None and self._v is not None
        batch = step.rows.shape[0]
        k, v = self._k[layer, :batch], self._v[layer, :batch]
        if step.reuse:
            if kernels is None or not kernels.store_columns(new_k, new_v, k, v, step.cols):
                k[step.rows, :, step.cols] = new_k
                v[step.rows, :, step.cols] = new_v
        else:
            assert gathered is not None
            k[:, :, :width].copy_(gathered[0])
            v[:, :, :width].copy_(gathered[1])
        return k[:, :, :width], v[:, :, :width]
