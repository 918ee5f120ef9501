"""The decoder forward in MLX over a ragged batch: every item's tokens in one
``[T, hidden]`` block through the projections and MLPs; attention per item on
its slot of the KV pool, or, for a decode step of several sequences (every
item one token), one scatter of their keys and values and one masked attention
call per layer over their slots. The graph is lazy; the caller evaluates it once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ferrum_core.errors import UnsupportedError
from ferrum_core.plugin import ModelConfig
from ferrum_mlx.kv import DecodeRows, KvPool, SequenceKv
from ferrum_mlx.layers import Sharded, Streams
from ferrum_mlx.weights import LayerWeights, ModelWeights

__all__ = ["Forward", "Span", "activation"]


@dataclass(frozen=True, slots=True)
class Span:
    """One item of the batch: rows ``offset .. offset + n`` at positions ``start ..``."""

    kv: SequenceKv
    start: int
    n: int
    offset: int


def decode_rows(spans: Sequence[Span], window: int | None) -> DecodeRows | None:
    """The batched-decode plan when every span is one token of a different sequence
    (two or more), else ``None``."""
    if len(spans) < 2 or any(span.n != 1 for span in spans):
        return None
    order = sorted(range(len(spans)), key=lambda i: spans[i].kv.slot)
    slots = [spans[i].kv.slot for i in order]
    starts = np.asarray([spans[i].start for i in order], np.int32)
    length = int(starts.max()) + 1
    k_pos = np.arange(length, dtype=np.int32)[None, :]
    visible = k_pos <= starts[:, None]
    if window is not None:
        visible &= starts[:, None] - k_pos < window
    identity = order == list(range(len(spans)))
    consecutive = slots == list(range(slots[0], slots[0] + len(slots)))
    return DecodeRows(
        slots=mx.array(np.asarray(slots, np.int32)), positions=mx.array(starts),
        first=slots[0] if consecutive else None, length=length,
        mask=mx.array(visible[:, None, None, :]),
        order=None if identity else mx.array(np.asarray(order, np.int32)),
        inverse=None if identity else mx.array(np.argsort(order).astype(np.int32)),
    )


def _silu(x: mx.array) -> mx.array:
    return x * mx.sigmoid(x)


def _gelu_tanh(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + mx.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


_ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "silu": _silu, "swish": _silu, "gelu_pytorch_tanh": _gelu_tanh, "gelu_new": _gelu_tanh,
}


def activation(name: str) -> Callable[[mx.array], mx.array]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise UnsupportedError(
            f"hidden_act {name!r} is not supported by the mlx backend "
            f"(supported: {', '.join(sorted(_ACTIVATIONS))})"
        ) from None


def _project(
    parts: tuple[Sharded, ...], x: mx.array, sizes: Sequence[int], streams: Streams
) -> list[mx.array]:
    if len(parts) == 1:
        y = parts[0](x, streams)
        cuts, total = [], 0
        for size in sizes[:-1]:
            total += size
            cuts.append(total)
        return list(mx.split(y, cuts, axis=-1))
    return [matrix(x, streams) for matrix in parts]


class Forward:
    """The math of one model; ``periods`` are rope wavelengths (``1 / inv_freq``).
    ``streams`` (of each call): one per column shard of the weights, see
    :mod:`ferrum_mlx.layers`."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, periods: mx.array) -> None:
        self.cfg = config
        self.w = weights
        self.periods = periods
        self.act = activation(config.hidden_act)
        self.q_dim = config.num_attention_heads * config.head_dim
        self.kv_dim = config.num_key_value_heads * config.head_dim
        self.scale = config.head_dim**-0.5

    def hidden(
        self, ids: mx.array, positions: mx.array, spans: Sequence[Span], streams: Streams
    ) -> mx.array:
        """Final-norm hidden states ``[T, hidden]`` of the batch (lazy)."""
        cfg, eps = self.cfg, self.cfg.rms_norm_eps
        group = decode_rows(spans, cfg.sliding_window)
        x = self.w.embed(ids)
        for index, layer in enumerate(self.w.layers):
            h = mx.fast.rms_norm(x, layer.input_norm, eps)
            x = x + self._attention(index, layer, h, positions, spans, group, streams)
            h = mx.fast.rms_norm(x, layer.post_norm, eps)
            gate, up = _project(layer.gate_up, h, (cfg.intermediate_size,) * 2, streams)
            x = x + layer.down(self.act(gate) * up, streams)
        return mx.fast.rms_norm(x, self.w.final_norm, eps)

    def logits(self, hidden: mx.array, streams: Streams) -> mx.array:
        return self.w.lm_head(hidden, streams).astype(mx.float32)

    def _rope(self, x: mx.array, positions: mx.array) -> mx.array:
        # [T, heads, d] -> [T, heads, 1, d]: every token its own batch row with its own offset.
        rotated = mx.fast.rope(x[:, :, None, :], self.cfg.head_dim, traditional=False, base=None,
                               scale=1.0, offset=positions, freqs=self.periods)
        return rotated[:, :, 0, :]

    def _attention(
        self, index: int, layer: LayerWeights, h: mx.array, positions: mx.array,
        spans: Sequence[Span], group: DecodeRows | None, streams: Streams,
    ) -> mx.array:  # fmt: skip
        cfg = self.cfg
        t, hd = h.shape[0], cfg.head_dim
        q, k, v = _project(layer.qkv, h, (self.q_dim, self.kv_dim, self.kv_dim), streams)
        q = q.reshape(t, cfg.num_attention_heads, hd)
        k = k.reshape(t, cfg.num_key_value_heads, hd)
        v = v.reshape(t, cfg.num_key_value_heads, hd)
        if layer.q_norm is not None and layer.k_norm is not None:
            q = mx.fast.rms_norm(q, layer.q_norm, cfg.rms_norm_eps)
            k = mx.fast.rms_norm(k, layer.k_norm, cfg.rms_norm_eps)
        q, k = self._rope(q, positions), self._rope(k, positions)
        if group is not None:
            out = self._decode_rows(index, q, k, v, spans[0].kv.pool, group)
            return layer.o(out, streams)
        # [heads, T, d] so that each span is a contiguous slice of axis 1.
        q, k, v = (a.transpose(1, 0, 2)[None] for a in (q, k, v))
        outs = []
        for span in spans:
            whole = len(spans) == 1
            rows = slice(span.offset, span.offset + span.n)
            qs = q if whole else q[:, :, rows, :]
            ks = k if whole else k[:, :, rows, :]
            vs = v if whole else v[:, :, rows, :]
            keys, values = span.kv.pool.write(index, span.kv.slot, span.start, ks, vs)
            if keys.dtype != qs.dtype:  # a KV slab in another dtype (kv_cache_dtype)
                keys, values = keys.astype(qs.dtype), values.astype(qs.dtype)
            outs.append(self._sdpa(qs, keys, values, span))
        out = outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=2)
        return layer.o(out[0].transpose(1, 0, 2).reshape(t, self.q_dim), streams)

    def _decode_rows(
        self, index: int, q: mx.array, k: mx.array, v: mx.array, pool: KvPool,
        group: DecodeRows,
    ) -> mx.array:  # fmt: skip
        """``q`` ``[B, heads, d]``, ``k`` / ``v`` ``[B, kv_heads, d]``, one token of each
        sequence of ``group`` -> the attention output ``[B, heads * d]`` in batch order."""
        if group.order is not None:
            q, k, v = q[group.order], k[group.order], v[group.order]
        keys, values = pool.write_rows(index, group, k, v)
        if keys.dtype != q.dtype:  # a KV pool in another dtype (kv_cache_dtype)
            keys, values = keys.astype(q.dtype), values.astype(q.dtype)
        out = mx.fast.scaled_dot_product_attention(q[:, :, None, :], keys, values,
                                                   scale=self.scale, mask=group.mask)
        out = out.reshape(q.shape[0], self.q_dim)
        return out if group.inverse is None else out[group.inverse]

    def _sdpa(self, q: mx.array, keys: mx.array, values: mx.array, span: Span) -> mx.array:
        window = self.cfg.sliding_window
        end = span.start + span.n
        if span.n == 1:
            if window is not None and end > window:
                keys, values = keys[:, :, end - window:, :], values[:, :, end - window:, :]
            return mx.fast.scaled_dot_product_attention(q, keys, values, scale=self.scale)
        q_pos = mx.arange(span.start, end)[:, None]
        k_pos = mx.arange(end)[None, :]
        visible = k_pos <= q_pos
        if window is not None:
            visible = visible & (q_pos - k_pos < window)
        return mx.fast.scaled_dot_product_attention(q, keys, values, scale=self.scale,
                                                    mask=visible)
