"""The decoder forward over a flattened ragged batch of tokens.

Every GEMM runs once over all rows of the step; attention is the only part
that looks at sequence boundaries (see :mod:`ferrum_cuda.attention`); the
final norm and the LM head run only on the rows that sample.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ferrum_core.plugin import ModelConfig
from ferrum_cuda.attention import AttentionMetadata, attend
from ferrum_cuda.cpu_native.kernels import CpuKernels
from ferrum_cuda.fused_step import FusedDecodeStep
from ferrum_cuda.layers import RopeTables, activation, apply_rope, rms_norm
from ferrum_cuda.paged_cache import PagedKvPool
from ferrum_cuda.weights import ModelWeights

__all__ = ["LoraHook", "TpHook", "Transformer"]


class LoraHook(Protocol):
    """Adds adapter deltas to a projection's output, row by row (see :mod:`ferrum_cuda.lora`)."""

    def apply(self, layer: int, site: str, x: torch.Tensor, out: torch.Tensor) -> None: ...


class TpHook(Protocol):
    """Tensor parallelism's collectives (see :mod:`ferrum_cuda.tp.ops`): the layers hold a
    shard; these make the embedding, the row-parallel outputs and the logits whole."""

    def embed(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor: ...

    def reduce(self, partial: torch.Tensor) -> torch.Tensor: ...

    def logits(self, local: torch.Tensor) -> torch.Tensor: ...


def _head_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-head RMSNorm (Qwen3's q/k norm): ``x`` ``[T, heads, head_dim]``, weight per head."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class Transformer:
    def __init__(
        self,
        cfg: ModelConfig,
        weights: ModelWeights,
        rope: RopeTables,
        pool: PagedKvPool,
        kernels: CpuKernels | None = None,
        *,
        kv_fused: bool = True,
        tp: TpHook | None = None,
    ) -> None:
        """``kv_fused``: ``kernels`` also store K/V and attend (the pool is fp32). ``tp``: the
        weights are this rank's shard (``cfg`` its local head counts); no fused step."""
        self.tp = tp
        self.cfg = cfg
        self.weights = weights
        self.rope = rope
        self.pool = pool
        self.act = activation(cfg.hidden_act)
        self.scale = cfg.head_dim**-0.5
        # The fused CPU kernels (fp32 only) where they cover the model's layer.
        self.kernels = kernels
        self._norm = kernels.rms_norm if kernels is not None else rms_norm
        self._fused_rope = kernels is not None and kv_fused and not cfg.qk_norm
        self._fused_act = kernels is not None and cfg.hidden_act in ("silu", "swish")
        self._caches = [pool.layer(i) for i in range(cfg.num_hidden_layers)]
        # Pure decode steps over the workspace run as one C call where the kernels cover all.
        self.fused_step = None
        if kernels is not None and tp is None and FusedDecodeStep.covers(cfg, weights, pool):
            self.fused_step = FusedDecodeStep(cfg, weights, pool, rope, kernels)

    def _add_norm(
        self, x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream after adding ``delta``, and its RMSNorm."""
        if self.kernels is not None:  # one pass, updating x (this forward's own) in place
            return x, self.kernels.add_rms_norm(x, delta, weight, self.cfg.rms_norm_eps)
        x = x + delta
        return x, rms_norm(x, weight, self.cfg.rms_norm_eps)

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        logit_rows: torch.Tensor | None = None,
        lora: LoraHook | None = None,
    ) -> torch.Tensor:
        """Logits ``[rows, vocab]`` (float32) for ``logit_rows`` (all rows when ``None``)."""
        if self.fused_step is not None and lora is None and logit_rows is None:
            logits = self.fused_step.run(ids, positions, meta)
            if logits is not None:
                return logits
        cfg, w = self.cfg, self.weights
        eps, hd = cfg.rms_norm_eps, cfg.head_dim
        nh, nkv, inter = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
        rows = ids.shape[0]
        x = F.embedding(ids, w.embed) if self.tp is None else self.tp.embed(ids, w.embed)
        kernels, norm = self.kernels, self._norm
        cos, sin = (None, None) if self._fused_rope else self.rope.gather(positions)
        h = norm(x, w.layers[0].input_norm, eps)
        for index, lw in enumerate(w.layers):
            qkv = lw.qkv(h)
            if lora is not None:
                lora.apply(index, "qkv", h, qkv)
            cache = self._caches[index]
            if self._fused_rope:
                assert kernels is not None
                kernels.rope_store(qkv, nh, nkv, self.rope.cos, self.rope.sin, positions,
                                   meta.slot_mapping, cache[0], cache[1])  # fmt: skip
                qk = qkv.view(rows, nh + 2 * nkv, hd)
                k, v = qk[:, nh : nh + nkv], qk[:, nh + nkv :]
            else:
                qkv = qkv.view(rows, nh + 2 * nkv, hd)
                qk = qkv[:, : nh + nkv]
                if lw.qk_norm is not None:
                    qk = _head_rms_norm(qk, lw.qk_norm, eps)
                assert cos is not None and sin is not None
                qk = apply_rope(qk, cos, sin)
                k, v = qk[:, nh:], qkv[:, nh + nkv :]
                # .to: the pool may hold another dtype (kv_cache_dtype); a no-op otherwise.
                cache[0].index_copy_(0, meta.slot_mapping, k.to(cache[0].dtype))
                cache[1].index_copy_(0, meta.slot_mapping, v.to(cache[1].dtype))
            attn = attend(qk[:, :nh], (k, v), cache, meta, self.scale, index)
            o = lw.o(attn)
            if lora is not None:
                lora.apply(index, "o", attn, o)
            if self.tp is not None:
                o = self.tp.reduce(o)
            x, h = self._add_norm(x, o, lw.post_norm)
            gate_up = lw.gate_up(h)
            if lora is not None:
                lora.apply(index, "gate_up", h, gate_up)
            if self._fused_act:
                assert kernels is not None
                a = kernels.silu_mul(gate_up)
            else:
                a = self.act(gate_up[:, :inter]) * gate_up[:, inter:]
            down = lw.down(a)
            if lora is not None:
                lora.apply(index, "down", a, down)
            if self.tp is not None:
                down = self.tp.reduce(down)
            if index + 1 < len(w.layers):
                x, h = self._add_norm(x, down, w.layers[index + 1].input_norm)
            else:
                x = x + down
        if logit_rows is not None:
            x = x.index_select(0, logit_rows)
        x = norm(x, w.final_norm, eps)
        logits = w.lm_head(x).float()
        return logits if self.tp is None else self.tp.logits(logits)
