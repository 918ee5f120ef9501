"""The few numerical building blocks of a Llama-family decoder, in float32 numpy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ferrum_core.errors import UnsupportedError

__all__ = ["activation", "apply_rope", "attention", "rms_norm", "rope_tables"]


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis (also used per head for Qwen3's q/k norm)."""
    variance = np.mean(np.square(x), axis=-1, keepdims=True)
    normed: np.ndarray = (x / np.sqrt(variance + eps)) * weight
    return normed


def _silu(x: np.ndarray) -> np.ndarray:
    # x * sigmoid(x), written with tanh so large negative inputs never overflow exp.
    return 0.5 * x * (1.0 + np.tanh(0.5 * x))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": _silu,
    "swish": _silu,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_new": _gelu_tanh,
}


def activation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise UnsupportedError(
            f"hidden_act {name!r} is not supported by the example backend "
            f"(supported: {', '.join(sorted(_ACTIVATIONS))})"
        ) from None


def rope_tables(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cos``/``sin`` of shape ``[n, 1, head_dim]`` for the half-split (HF) rotary layout."""
    freqs = np.outer(positions.astype(np.float32), inv_freq.astype(np.float32))
    angles = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
    return np.cos(angles), np.sin(angles)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate ``x`` of shape ``[n, heads, head_dim]``."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    result: np.ndarray = x * cos + rotated * sin
    return result


def attention(
    q: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    q_positions: np.ndarray,
    sliding_window: int | None,
) -> np.ndarray:
    """Causal grouped-query attention.

    ``q`` is ``[n, heads, d]``; ``keys``/``values`` are ``[kv_heads, T, d]`` holding
    positions ``0..T-1``. Returns ``[n, heads * d]``.
    """
    n, heads, dim = q.shape
    kv_heads, total, _ = keys.shape
    group = heads // kv_heads
    # [kv_heads, group, n, d]: query heads sharing one KV head sit together.
    qg = q.transpose(1, 0, 2).reshape(kv_heads, group, n, dim)
    scores = np.matmul(qg, keys[:, None].transpose(0, 1, 3, 2)) / np.float32(np.sqrt(dim))
    key_pos = np.arange(total)
    visible = key_pos[None, :] <= q_positions[:, None]
    if sliding_window is not None:
        visible &= q_positions[:, None] - key_pos[None, :] < sliding_window
    scores = np.where(visible, scores, np.float32(-np.inf))
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out: np.ndarray = np.matmul(probs, values[:, None])  # [kv_heads, group, n, d]
    return out.reshape(heads, n, dim).transpose(1, 0, 2).reshape(n, heads * dim)
