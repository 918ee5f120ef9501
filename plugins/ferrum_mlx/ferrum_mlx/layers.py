"""Linear maps and embeddings over dense or affine-quantised MLX weights.

On MLX's CPU device one matmul runs on one core (its BLAS is single-threaded),
so every matrix is stored as ``n`` column shards (output features) and each
shard runs on its own CPU stream: the shards of one projection compute at the
same time on ``n`` cores and are joined on the calling stream. With one stream
(Metal, or ``threads=1``) a matrix is one shard on the calling stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import mlx.core as mx

from ferrum_mlx.quant import AffineWeight

__all__ = ["DEQUANTIZE_ROWS", "Embedding", "Linear", "Sharded", "fuse", "shard"]

DEQUANTIZE_ROWS = 8
"""From this many rows on, a quantised matrix is dequantised (to ``[in, out]``) and
multiplied densely: MLX's CPU ``quantized_matmul`` costs the same per row as per
matrix, a dense matmul from the dequantised copy ~2x less from 8 rows on (measured
on the default model's 576x1536 Q4_1 shapes). Same weights, same numbers."""

Streams = Sequence[mx.Stream | None]


@dataclass(frozen=True, slots=True)
class Linear:
    """``y = x @ W.T + b``: ``dense`` holds ``W.T`` (``[in, out]``, contiguous: MLX's CPU
    matmul runs ~2x faster on it than on a transposed view), or ``quant`` holds ``W``
    ``[out, in]`` affine-quantised along ``in``."""

    dense: mx.array | None
    quant: AffineWeight | None
    bias: mx.array | None = None

    @property
    def out_features(self) -> int:
        if self.quant is not None:
            return self.quant.shape[0]
        assert self.dense is not None
        return int(self.dense.shape[1])

    @property
    def nbytes(self) -> int:
        size = self.quant.nbytes if self.quant is not None else int(self.dense.nbytes)  # type: ignore[union-attr]
        return size + (int(self.bias.nbytes) if self.bias is not None else 0)

    def arrays(self) -> list[mx.array]:
        parts = [self.dense, self.bias]
        if self.quant is not None:
            parts += [self.quant.weight, self.quant.scales, self.quant.biases]
        return [a for a in parts if a is not None]

    def __call__(self, x: mx.array) -> mx.array:
        q = self.quant
        if q is not None:
            if x.ndim == 2 and x.shape[0] >= DEQUANTIZE_ROWS:
                y = x @ mx.contiguous(q.dequantize().T)
            else:
                y = mx.quantized_matmul(x, q.weight, q.scales, q.biases, transpose=True,
                                        group_size=q.group_size, bits=q.bits)
            return y if self.bias is None else y + self.bias
        assert self.dense is not None
        if self.bias is not None:
            return mx.addmm(self.bias, x, self.dense)
        return x @ self.dense

    def columns(self, lo: int, hi: int) -> Linear:
        """Output features ``lo .. hi`` as a Linear of their own (contiguous copies)."""
        bias = None if self.bias is None else mx.contiguous(self.bias[lo:hi])
        q = self.quant
        if q is not None:
            return Linear(None, AffineWeight(
                mx.contiguous(q.weight[lo:hi]), mx.contiguous(q.scales[lo:hi]),
                mx.contiguous(q.biases[lo:hi]), q.group_size, q.bits, q.source), bias)
        assert self.dense is not None
        return Linear(mx.contiguous(self.dense[:, lo:hi]), None, bias)


@dataclass(frozen=True, slots=True)
class Sharded:
    """One logical matrix as column shards (``parts``), shard ``i`` run on stream ``i``."""

    parts: tuple[Linear, ...]

    @property
    def out_features(self) -> int:
        return sum(p.out_features for p in self.parts)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    @property
    def source(self) -> str | None:
        q = self.parts[0].quant
        return None if q is None else q.source

    def arrays(self) -> list[mx.array]:
        return [a for p in self.parts for a in p.arrays()]

    def __call__(self, x: mx.array, streams: Streams) -> mx.array:
        if len(self.parts) == 1:
            return self.parts[0](x)
        outs = []
        for part, stream in zip(self.parts, streams, strict=True):
            with mx.stream(stream):
                outs.append(part(x))
        return mx.concatenate(outs, axis=-1)


def shard(linear: Linear, n: int) -> Sharded:
    """``linear`` cut into ``n`` near-equal column shards (one when ``n`` is 1)."""
    out = linear.out_features
    if n <= 1 or out < 2 * n:
        return Sharded((linear,))
    cuts = [out * i // n for i in range(n + 1)]
    return Sharded(tuple(linear.columns(lo, hi) for lo, hi in pairwise(cuts)))


def fuse(parts: Sequence[Linear]) -> Linear | None:
    """One Linear computing ``parts`` side by side (rows stacked), or ``None`` when their
    storage differs (a GGUF may quantise q, k and v differently)."""
    first = parts[0]
    if any((p.bias is None) != (first.bias is None) for p in parts):
        return None
    bias = mx.concatenate([p.bias for p in parts]) if first.bias is not None else None  # type: ignore[misc]
    if first.quant is None:
        if any(p.dense is None for p in parts):
            return None
        return Linear(mx.concatenate([p.dense for p in parts], axis=1), None, bias)  # type: ignore[misc]
    quants = [p.quant for p in parts]
    if any(q is None or (q.group_size, q.bits, q.scales.dtype) !=
           (first.quant.group_size, first.quant.bits, first.quant.scales.dtype) for q in quants):
        return None
    joined = AffineWeight(
        mx.concatenate([q.weight for q in quants]),  # type: ignore[union-attr]
        mx.concatenate([q.scales for q in quants]),  # type: ignore[union-attr]
        mx.concatenate([q.biases for q in quants]),  # type: ignore[union-attr]
        first.quant.group_size, first.quant.bits, first.quant.source,
    )
    return Linear(None, joined, bias)


@dataclass(frozen=True, slots=True)
class Embedding:
    """Token embedding over the vocabulary shards of ``table`` (the tied output
    projection's shards): a dense shard holds its slice of the table transposed
    (``[hidden, vocab_i]``, the layout the output projection wants; a lookup reads one
    column per token), a quantised one its ``[vocab_i, hidden]`` rows, dequantised per
    looked-up row."""

    table: Sharded

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def __call__(self, ids: mx.array) -> mx.array:
        out: mx.array | None = None
        low = 0
        for part in self.table.parts:
            size = part.out_features
            local = ids - low
            rows = _lookup(part, mx.clip(local, 0, size - 1))
            if out is None:
                out = rows
            else:
                inside = (local >= 0)[:, None]
                out = mx.where(inside, rows, out)
            low += size
        assert out is not None
        return out

    def as_linear(self) -> Sharded:
        """The tied output projection ``x @ E.T``."""
        return self.table


def _lookup(part: Linear, ids: mx.array) -> mx.array:
    q = part.quant
    if q is None:
        assert part.dense is not None
        return mx.take(part.dense, ids, axis=1).T
    return mx.dequantize(q.weight[ids], q.scales[ids], q.biases[ids],
                         group_size=q.group_size, bits=q.bits)
