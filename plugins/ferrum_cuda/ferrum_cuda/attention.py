"""Ragged attention over the paged pool: metadata built once per forward, used by every layer.

Rows of a forward are ordered *decode group first*: items that compute a
single token (decodes, one-token chunks) share one padded SDPA call, with the
grouped-query heads folded into the query length so K and V are never
repeated. Longer chunks attend one by one, with a causal mask shifted by their
position offset (or SDPA's ``is_causal`` when the chunk starts at 0, which
hits the flash kernels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ferrum_cuda.cpu_native.kernels import CpuKernels
from ferrum_cuda.workspace import DecodeWorkspace, WorkspaceStep

__all__ = ["SeqSpan", "DecodeGroup", "ChunkSpan", "AttentionMetadata", "build_metadata", "attend"]

# enable_gqa arrived in torch 2.5; its docstring is the only place a builtin lists it.
_SDPA_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


@dataclass(frozen=True, slots=True)
class SeqSpan:
    """One sequence's share of a forward: ``rows`` new tokens ending at ``length``."""

    rows: int
    length: int
    block_table: Sequence[int]
    seq_id: str = ""


@dataclass(frozen=True, slots=True)
class DecodeGroup:
    count: int
    gather: torch.Tensor | None  # [B, L] slots padded with each row's first; None: workspace
    mask: torch.Tensor | None  # [B, 1, 1, L], True = attend; None = attend to all L
    width: int = 0  # L
    workspace: DecodeWorkspace | None = None
    step: WorkspaceStep | None = None
    bounds: torch.Tensor | None = None  # [B, 2] columns each row attends to (fused kernel)
    kernels: CpuKernels | None = None


@dataclass(frozen=True, slots=True)
class ChunkSpan:
    start: int
    stop: int
    gather: torch.Tensor  # [L] slots
    mask: torch.Tensor | None  # [group * rows, L] (query heads folded in); None = causal from 0


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T]: where each row's K and V go
    decode: DecodeGroup | None
    chunks: tuple[ChunkSpan, ...]


def _slots(block_table: Sequence[int], length: int, block_size: int) -> torch.Tensor:
    table = torch.tensor(block_table, dtype=torch.long)
    offsets = torch.arange(block_size, dtype=torch.long)
    return (table[:, None] * block_size + offsets).reshape(-1)[:length]


def build_metadata(
    spans: Sequence[SeqSpan],
    slot_mapping: Sequence[int],
    *,
    block_size: int,
    group: int,
    sliding_window: int | None,
    device: torch.device,
    workspace: DecodeWorkspace | None = None,
    kernels: CpuKernels | None = None,
) -> AttentionMetadata:
    """Spans with ``rows == 1`` must come first (they form the decode group).

    ``kernels``: the fused CPU kernels (fp32 on the CPU only) run the decode group.
    """
    singles = [s for s in spans if s.rows == 1]
    if any(s.rows == 1 for s in spans[len(singles) :]):
        raise ValueError("single-row spans must precede longer chunks")
    decode = None
    if singles:
        step = workspace.prepare([(s.seq_id, s.length) for s in singles]) if workspace else None
        decode = _decode_group(singles, block_size, sliding_window, device, step)
        if step is not None:
            decode = replace(decode, workspace=workspace, step=step)
        if kernels is not None:
            bounds = [
                (max(0, s.length - sliding_window) if sliding_window else 0, s.length)
                for s in singles
            ]
            decode = replace(decode, kernels=kernels, bounds=torch.tensor(bounds))
    chunks = []
    row = len(singles)
    for span in spans[len(singles) :]:
        if span.rows == 0:
            continue
        start_pos = span.length - span.rows
        mask = None
        if start_pos or sliding_window is not None:
            q_pos = torch.arange(start_pos, span.length)[:, None]
            k_pos = torch.arange(span.length)[None, :]
            allowed = k_pos <= q_pos
            if sliding_window is not None:
                allowed &= k_pos > q_pos - sliding_window
            mask = allowed.repeat(group, 1).to(device)
        gather = _slots(span.block_table, span.length, block_size).to(device)
        chunks.append(ChunkSpan(row, row + span.rows, gather, mask))
        row += span.rows
    mapping = torch.tensor(slot_mapping, dtype=torch.long).to(device)
    return AttentionMetadata(mapping, decode, tuple(chunks))


def _decode_group(
    spans: Sequence[SeqSpan],
    block_size: int,
    window: int | None,
    device: torch.device,
    step: WorkspaceStep | None,
) -> DecodeGroup:
    width = max(len(s.block_table) for s in spans)
    table = torch.tensor(
        [list(s.block_table) + [s.block_table[0]] * (width - len(s.block_table)) for s in spans],
        dtype=torch.long,
    )
    longest = max(s.length for s in spans)
    offsets = torch.arange(block_size, dtype=torch.long)
    gather = (table[:, :, None] * block_size + offsets).reshape(len(spans), -1)[:, :longest]
    lengths = torch.tensor([s.length for s in spans], dtype=torch.long)[:, None]
    k_pos = torch.arange(longest)[None, :]
    allowed = k_pos < lengths
    if window is not None:
        allowed &= k_pos > lengths - 1 - window
    gather = torch.where(allowed, gather, gather[:, :1])
    mask = None if bool(allowed.all()) else allowed[:, None, None, :].to(device)
    slots = None if step is not None and step.reuse else gather.to(device)
    return DecodeGroup(len(spans), slots, mask, longest)


def attend(
    q: torch.Tensor,
    new_kv: tuple[torch.Tensor, torch.Tensor],
    cache: tuple[torch.Tensor, torch.Tensor],
    meta: AttentionMetadata,
    scale: float,
    layer: int,
) -> torch.Tensor:
    """Attention for every row: ``q`` ``[T, heads, head_dim]`` -> ``[T, heads * head_dim]``.

    ``new_kv`` is this forward's K and V (``[T, kv_heads, head_dim]``, already in the
    pool), ``cache`` the layer's slot-addressed pool.
    """
    k_cache, v_cache = cache
    rows, heads, head_dim = q.shape
    # A pool in another dtype (kv_cache_dtype) is read back in q's; .to is a no-op otherwise.
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    decode = meta.decode
    if decode is not None and not meta.chunks:  # pure decode step: no scatter needed
        return _attend_decode(q, new_kv, cache, decode, scale, layer)
    out = q.new_empty(rows, heads * head_dim)
    if decode is not None:
        out[: decode.count] = _attend_decode(q, new_kv, cache, decode, scale, layer)
    for chunk in meta.chunks:
        n = chunk.stop - chunk.start
        qc = q[chunk.start : chunk.stop]
        # 4-D [1, heads, len, dim] everywhere: the fused SDPA kernels want a batch dim.
        k = _gather(k_cache, chunk.gather).to(q.dtype).transpose(0, 1).unsqueeze(0)
        v = _gather(v_cache, chunk.gather).to(q.dtype).transpose(0, 1).unsqueeze(0)
        if chunk.mask is None:
            o = _causal(qc.transpose(0, 1).unsqueeze(0), k, v, scale, group)
            out[chunk.start : chunk.stop] = o[0].transpose(0, 1).reshape(n, heads * head_dim)
        else:
            qg = qc.reshape(n, kv_heads, group, head_dim).permute(1, 2, 0, 3)
            qg = qg.reshape(1, kv_heads, group * n, head_dim)
            o = F.scaled_dot_product_attention(qg, k, v, attn_mask=chunk.mask, scale=scale)
            o = o.view(kv_heads, group, n, head_dim).permute(2, 0, 1, 3)
            out[chunk.start : chunk.stop] = o.reshape(n, heads * head_dim)
    return out


def _attend_decode(
    q: torch.Tensor,
    new_kv: tuple[torch.Tensor, torch.Tensor],
    cache: tuple[torch.Tensor, torch.Tensor],
    decode: DecodeGroup,
    scale: float,
    layer: int,
) -> torch.Tensor:
    """One query row per item; the group's query heads stand in for the query length."""
    b, (rows, heads, head_dim), kv_heads = decode.count, q.shape, cache[0].shape[1]
    new_k, new_v = new_kv
    if rows != b:
        q, new_k, new_v = q[:b], new_k[:b], new_v[:b]
    if cache[0].dtype != q.dtype:  # the workspace holds what the pool holds, in q's dtype
        new_k, new_v = (t.to(cache[0].dtype).to(q.dtype) for t in (new_k, new_v))
    gathered = None
    if decode.gather is not None:
        k = _gather(cache[0], decode.gather).to(q.dtype).transpose(1, 2)
        v = _gather(cache[1], decode.gather).to(q.dtype).transpose(1, 2)
        gathered = (k, v)
    if decode.workspace is not None and decode.step is not None:
        k, v = decode.workspace.keys_values(
            layer, decode.step, new_k, new_v, gathered, decode.width, decode.kernels
        )
    if decode.kernels is not None and decode.bounds is not None:
        fused = decode.kernels.decode_attention(q, k, v, decode.bounds, scale)
        if fused is not None:
            return fused
    qd = q.reshape(b, kv_heads, heads // kv_heads, head_dim)
    o = F.scaled_dot_product_attention(qd, k, v, attn_mask=decode.mask, scale=scale)
    return o.reshape(b, heads * head_dim)


def _gather(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``cache[slots]``; index_select is far cheaper than advanced indexing on a big pool."""
    rows = cache.index_select(0, slots.reshape(-1))
    return rows.view(*slots.shape, *cache.shape[1:])


def _causal(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, group: int
) -> torch.Tensor:
    if group == 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if _SDPA_HAS_GQA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
