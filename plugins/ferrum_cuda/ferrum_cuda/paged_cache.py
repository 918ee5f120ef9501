"""The paged KV pool: per layer, K and V blocks ``[num_blocks, block_size, kv_heads, head_dim]``.

Which block holds which position is decided by :mod:`ferrum_core.kv`; this
module only stores, writes, copies and gathers. One extra *scratch* block
after the last real one absorbs the writes of padding rows (CUDA graphs run a
fixed batch size), so padding never touches a sequence's KV.
"""

from __future__ import annotations

import torch

__all__ = ["PagedKvPool"]


class PagedKvPool:
    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (num_layers, 2, num_blocks + 1, block_size, num_kv_heads, head_dim)
        # Gathers only ever read written slots, so CPU memory may stay untouched
        # (and unpaged) until used; on a GPU zeroing is cheap and keeps padding finite.
        alloc = torch.zeros if device.type == "cuda" else torch.empty
        self.data = alloc(shape, dtype=dtype, device=device)
        self._flat = self.data.view(num_layers, 2, -1, num_kv_heads, head_dim)

    @property
    def scratch_slot(self) -> int:
        """A slot in the scratch block: padding rows write and read there."""
        return self.num_blocks * self.block_size

    def num_bytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def bytes_per_block(self) -> int:
        return self.num_bytes() // (self.num_blocks + 1)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot-addressed K and V of one layer: ``[slots, kv_heads, head_dim]`` views."""
        flat = self._flat[index]
        return flat[0], flat[1]

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks ``src -> dst`` in every layer (copy-on-write)."""
        if not pairs:
            return
        device = self.data.device
        src = torch.tensor([s for s, _ in pairs], dtype=torch.long, device=device)
        dst = torch.tensor([d for _, d in pairs], dtype=torch.long, device=device)
        self.data[:, :, dst] = self.data[:, :, src]
