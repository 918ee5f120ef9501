"""The whole fp32 CPU decode step in one call of the compiled kernels.

On two cores a decode step of a small model is about 30 ms, of which the ten
kernel calls per layer from Python (argument conversion, tensor allocation,
one parallel region each) take a few. When a step is a pure decode over the
decode workspace (every row one new token, the group unchanged since last
step) and the model is one the kernels fully cover (fp32 panel-packed
linears, fused rope without q/k norm, SiLU gating, no LoRA), the C driver
``ferrum_decode_step`` runs the same kernels in the same order instead. Any
other step takes :meth:`Transformer.forward`'s eager path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ferrum_core.plugin import ModelConfig
from ferrum_cuda.attention import AttentionMetadata
from ferrum_cuda.cpu_native.kernels import CpuKernels, StepDims, StepTensors
from ferrum_cuda.cpu_native.source import LAYER_FIELDS
from ferrum_cuda.layers import RopeTables
from ferrum_cuda.linear import Linear
from ferrum_cuda.paged_cache import PagedKvPool
from ferrum_cuda.weights import ModelWeights

__all__ = ["FusedDecodeStep"]


def _address(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.data_ptr())


class FusedDecodeStep:
    def __init__(
        self,
        cfg: ModelConfig,
        weights: ModelWeights,
        pool: PagedKvPool,
        rope: RopeTables,
        kernels: CpuKernels,
    ) -> None:
        self.cfg, self.weights, self.rope, self.kernels = cfg, weights, rope, kernels
        layers = weights.layers
        rows = []
        for i, lw in enumerate(layers):
            k_pool, v_pool = pool.layer(i)
            following = layers[i + 1].input_norm if i + 1 < len(layers) else weights.final_norm
            fields = {
                "wqkv": lw.qkv.packed, "bqkv": lw.qkv.bias, "wo": lw.o.packed, "bo": lw.o.bias,
                "wgu": lw.gate_up.packed, "bgu": lw.gate_up.bias, "wd": lw.down.packed,
                "bd": lw.down.bias, "post_norm": lw.post_norm, "next_norm": following,
                "kpool": k_pool, "vpool": v_pool,
            }  # fmt: skip
            rows.append([_address(fields[name]) for name in LAYER_FIELDS])
        self.table = torch.tensor(rows, dtype=torch.int64).reshape(-1)
        assert weights.lm_head.packed is not None
        self.lm_head = weights.lm_head.packed
        self.steps = 0  # decode steps run here

    @staticmethod
    def covers(cfg: ModelConfig, weights: ModelWeights, pool: PagedKvPool) -> bool:
        """Whether every op of the model's decode step has its kernel here."""

        def panels(lin: Linear) -> bool:
            return lin.kernels is not None and lin.packed is not None

        linears = [lin for lw in weights.layers for lin in (lw.qkv, lw.o, lw.gate_up, lw.down)]
        tensors = [weights.final_norm, *(lw.input_norm for lw in weights.layers)]
        tensors += [lw.post_norm for lw in weights.layers]
        tensors += [lin.bias for lin in linears if lin.bias is not None]
        return (
            cfg.hidden_act in ("silu", "swish")
            and not cfg.qk_norm
            and all(panels(lin) for lin in [*linears, weights.lm_head])
            and all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
            and pool.data.dtype == torch.float32
            and pool.data.is_contiguous()
        )

    def run(
        self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor | None:
        """Logits ``[B, vocab]``, or ``None`` when this step is not a workspace decode."""
        decode = meta.decode
        if (
            meta.chunks
            or decode is None
            or decode.count != ids.shape[0]
            or decode.step is None
            or not decode.step.reuse
            or decode.workspace is None
            or decode.bounds is None
        ):
            return None
        buffers = decode.workspace.buffers()
        if buffers is None:
            return None
        kws, vws = buffers
        cfg, w = self.cfg, self.weights
        dims = StepDims(
            layers=cfg.num_hidden_layers,
            batch=decode.count,
            hidden=cfg.hidden_size,
            heads=cfg.num_attention_heads,
            kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            inter=cfg.intermediate_size,
            vocab=cfg.vocab_size,
            width=decode.width,
        )
        x = F.embedding(ids, w.embed)
        tensors = StepTensors(
            norm0=w.layers[0].input_norm,
            lm_head=self.lm_head,
            x=x,
            h=torch.empty_like(x),
            logits=x.new_empty(dims.batch, dims.vocab),
            scratch=x.new_empty(dims.scratch_floats()),
            cos=self.rope.cos,
            sin=self.rope.sin,
            positions=positions,
            slots=meta.slot_mapping,
            kws=kws,
            vws=vws,
            cols=decode.step.cols,
            bounds=decode.bounds,
        )
        self.kernels.decode_step(
            self.table, tensors, dims, eps=cfg.rms_norm_eps, scale=cfg.head_dim**-0.5
        )
        self.steps += 1
        return tensors.logits
