"""Elementwise building blocks, written to match Hugging Face's Llama numerics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ferrum_core.errors import UnsupportedError

__all__ = ["rms_norm", "RopeTables", "apply_rope", "activation"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as ``LlamaRMSNorm``: normalise in float32, cast back, then scale."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class RopeTables:
    """cos / sin per absolute position, gathered once per forward and shared by all layers.

    ``sin`` carries the rotation's sign (``-sin`` on the first half) so that applying
    rope is ``x * cos + swap_halves(x) * sin``, as Hugging Face's ``rotate_half``.
    """

    def __init__(
        self, inv_freq: np.ndarray, max_positions: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        inv = torch.from_numpy(np.asarray(inv_freq, dtype=np.float32))
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv)
        cos, sin = freqs.cos(), freqs.sin()
        self.cos = torch.cat((cos, cos), dim=-1).to(device=device, dtype=dtype)
        self.sin = torch.cat((-sin, sin), dim=-1).to(device=device, dtype=dtype)

    def gather(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[T, 1, head_dim]`` cos and signed sin for the given positions."""
        cos = self.cos.index_select(0, positions).unsqueeze(1)
        return cos, self.sin.index_select(0, positions).unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[T, heads, head_dim]`` (any strides) by the gathered tables."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return x * cos + swapped * sin


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_new": _gelu_tanh,
    "relu": F.relu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise UnsupportedError(
            f"hidden_act {name!r} is not supported (supported: {', '.join(_ACTIVATIONS)})"
        ) from None
