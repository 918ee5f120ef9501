"""Rotary-embedding inverse frequencies, computed as ``transformers`` does.

The arithmetic mirrors ``transformers.modeling_rope_utils`` operation by
operation in float32, so backends that build cos/sin tables from this array
match the oracle to the last few ulps.
"""

from __future__ import annotations

import math

import numpy as np

from ferrum_core.errors import ConfigError
from ferrum_core.models.config import ModelConfig

__all__ = ["rope_inv_freq"]


def _default_inv_freq(theta: float, dim: int) -> np.ndarray:
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    # torch's float32 pow is (almost always) correctly rounded; numpy's float32
    # pow is not, so take the power in float64 and round once.
    powers = (np.float64(theta) ** exponent.astype(np.float64)).astype(np.float32)
    result: np.ndarray = np.float32(1.0) / powers
    return result


def _llama3(inv_freq: np.ndarray, config: ModelConfig) -> np.ndarray:
    scaling = config.rope_scaling
    if scaling.original_max_position_embeddings is None:
        raise ConfigError("llama3 rope scaling needs 'original_max_position_embeddings'")
    f32 = np.float32
    factor = f32(scaling.factor)
    low, high = f32(scaling.low_freq_factor), f32(scaling.high_freq_factor)
    old_context_len = f32(scaling.original_max_position_embeddings)
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor

    wavelen = f32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low) / (high - low)
    smoothed = (f32(1.0) - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    result: np.ndarray = np.where(is_medium, smoothed, scaled).astype(np.float32)
    return result


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """float32 ``[head_dim // 2]`` inverse frequencies with the config's scaling applied."""
    inv_freq = _default_inv_freq(config.rope_theta, config.head_dim)
    rope_type = config.rope_scaling.rope_type
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        result: np.ndarray = inv_freq / np.float32(config.rope_scaling.factor)
        return result
    if rope_type == "llama3":
        return _llama3(inv_freq, config)
    raise ConfigError(f"unsupported rope type {rope_type!r}")
