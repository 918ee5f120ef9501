"""Fused fp32 CPU kernels for the decode path: typed wrappers over the compiled C.

In a decode step of a few sequences every torch op outside the GEMMs costs more
in dispatch than in arithmetic, and small-query attention is slow in SDPA and in
batched GEMMs. These kernels do RMSNorm, rotary embedding + KV store,
single-query attention and SiLU-gating in one call each; a small-M GEMM on
16-column weight panels serves the linears (:mod:`ferrum_cuda.linear`). Plain C
(``csrc/``) with torch's OpenMP, built by :mod:`ferrum_cuda.cpu_native.build`
(loaded only after owner, mode and recorded sha256 check out), checked against
torch once (:mod:`ferrum_cuda.cpu_native.selfcheck`); :func:`cpu_kernels` is
``None`` without a compiler, on a failed build or check, and
:func:`kernels_problem` says why.
"""

from __future__ import annotations

import ctypes
import subprocess
from dataclasses import dataclass

import torch

from ferrum_cuda.cpu_native.build import build_failure, build_library
from ferrum_cuda.cpu_native.isa import Isa, resolve_isa

__all__ = ["CpuKernels", "StepDims", "StepTensors", "cpu_kernels", "kernels_problem"]


@dataclass(frozen=True, slots=True)
class StepDims:
    """Sizes of one fused decode step."""

    layers: int
    batch: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    width: int  # decode workspace columns the rows attend within

    def scratch_floats(self) -> int:
        qkv = (self.heads + 2 * self.kv_heads) * self.head_dim
        per_row = qkv + self.heads * self.head_dim + 3 * self.inter + self.hidden
        return self.batch * (per_row + self.heads * self.width)


@dataclass(frozen=True, slots=True)
class StepTensors:
    """The buffers of one fused decode step (float32 / int64, contiguous on the CPU).

    ``kws`` / ``vws``: the decode workspace ``[layers, B_cap, kv_heads, L_cap, head_dim]``."""

    norm0: torch.Tensor
    lm_head: torch.Tensor
    x: torch.Tensor
    h: torch.Tensor
    logits: torch.Tensor
    scratch: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    kws: torch.Tensor
    vws: torch.Tensor
    cols: torch.Tensor
    bounds: torch.Tensor


def _ptr(t: torch.Tensor) -> int:
    return int(t.data_ptr())


class CpuKernels:
    """Typed wrappers; every tensor is float32 (int64 for indices) on the CPU."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        n = x.shape[-1]
        self._lib.ferrum_rms_norm(_ptr(x), _ptr(weight), _ptr(out), x.numel() // n, n, eps)
        return out

    def add_rms_norm(
        self, x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """``x += delta`` in place (both contiguous ``[T, n]``); returns ``rms_norm(x)``."""
        if not (x.is_contiguous() and delta.is_contiguous() and x.shape == delta.shape):
            raise ValueError("add_rms_norm: x and delta must be contiguous and alike")
        out = torch.empty_like(x)
        n = x.shape[-1]
        self._lib.ferrum_add_rms_norm(
            _ptr(x), _ptr(delta), _ptr(weight), _ptr(out), x.numel() // n, n, eps
        )
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        rows, width = gate_up.shape
        out = gate_up.new_empty(rows, width // 2)
        self._lib.ferrum_silu_mul(_ptr(gate_up), _ptr(out), rows, width // 2)
        return out

    def rope_store(
        self,
        qkv: torch.Tensor,
        heads: int,
        kv_heads: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        k_pool: torch.Tensor,
        v_pool: torch.Tensor,
    ) -> None:
        """Rotate ``qkv`` ``[T, (heads + 2 kv_heads) * d]`` in place, store K/V at ``slots``."""
        d = cos.shape[-1]
        rows = qkv.shape[0]
        if not (
            qkv.is_contiguous()
            and qkv.shape[1] == (heads + 2 * kv_heads) * d
            and positions.shape == slots.shape == (rows,)
            and k_pool.shape[1:] == v_pool.shape[1:] == (kv_heads, d)
        ):
            raise ValueError("rope_store: shapes do not match the fused layout")
        self._lib.ferrum_rope_store(
            _ptr(qkv), qkv.shape[0], heads, kv_heads, d, _ptr(cos), _ptr(sin),
            _ptr(positions), _ptr(slots), _ptr(k_pool), _ptr(v_pool),
        )  # fmt: skip

    def store_columns(
        self,
        new_k: torch.Tensor,
        new_v: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cols: torch.Tensor,
    ) -> bool:
        """``k[b, :, cols[b]] = new_k[b]`` (and V); ``False`` (nothing done) unless ``new_*``
        ``[B, kv_heads, d]`` share row strides with contiguous heads and ``k``/``v``
        ``[B, kv_heads, L, d]`` share strides with a contiguous last dim."""
        batch, kv_heads, d = new_k.shape
        if not (_same_rows(new_k, new_v) and _same_rows(k, v)):
            return False
        sb, sh, sl, _ = k.stride()
        self._lib.ferrum_store_columns(
            _ptr(new_k), _ptr(new_v), new_k.stride(0), _ptr(k), _ptr(v), sb, sh, sl,
            _ptr(cols), batch, kv_heads, d,
        )  # fmt: skip
        return True

    def decode_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bounds: torch.Tensor,
        scale: float,
    ) -> torch.Tensor | None:
        """``q`` ``[B, heads, d]`` (rows may be strided), ``k``/``v`` ``[B, kv_heads, L, d]``
        with equal strides and a contiguous last dim, ``bounds`` ``[B, 2]``: the columns
        each row attends to. Returns ``[B, heads * d]``, or ``None`` for other layouts."""
        batch, heads, d = q.shape
        kv_heads, width = k.shape[1], k.shape[2]
        if not (_same_rows(q, q) and _same_rows(k, v)):
            return None
        group = heads // kv_heads
        out = q.new_empty(batch, heads * d)
        scratch = q.new_empty(batch * heads * max(width, 1))
        sb, sh, sl, _ = k.stride()
        self._lib.ferrum_decode_attention(
            _ptr(q), q.stride(0), _ptr(k), _ptr(v), sb, sh, sl, _ptr(bounds), _ptr(out),
            _ptr(scratch), width, batch, kv_heads, group, d, scale,
        )  # fmt: skip
        return out

    def pack_panels(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` ``[n, k]`` as 16-column panels ``[ceil(n / 16), k, 16]`` (zero padded)."""
        n, k = weight.shape
        weight = weight.contiguous()
        out = weight.new_empty((n + 15) // 16, k, 16)
        self._lib.ferrum_pack_panels(_ptr(weight), _ptr(out), n, k)
        return out

    def panel_linear(
        self,
        x: torch.Tensor,
        panels: torch.Tensor,
        n: int,
        bias: torch.Tensor | None,
        after: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x @ weight.T + bias`` for 2-D ``x`` and ``panels = pack_panels(weight)``.

        ``after``: the packed weights of the GEMM that will run next, whose first
        bytes the threads prefetch while they finish this one."""
        if x.stride(-1) != 1 or x.stride(0) < x.shape[1]:
            x = x.contiguous()
        rows, k = x.shape
        if panels.shape[1] != k:
            raise ValueError("panel_linear: x and the packed weight disagree on k")
        out = x.new_empty(rows, n)
        if rows:
            self._lib.ferrum_panel_gemm(
                _ptr(x), x.stride(0), _ptr(panels), None if bias is None else _ptr(bias),
                _ptr(out), n, rows, n, k,
                None if after is None else _ptr(after),
                0 if after is None else after.numel() * after.element_size(),
            )  # fmt: skip
        return out

    def decode_step(
        self,
        table: torch.Tensor,
        tensors: StepTensors,
        dims: StepDims,
        *,
        eps: float,
        scale: float,
    ) -> None:
        """Every layer of a pure decode step (see ``ferrum_decode_step`` in the C source).

        ``table`` holds ``LAYER_FIELDS`` pointers per layer; the caller checks layouts."""
        t, k = tensors, tensors.kws
        self._lib.ferrum_decode_step(
            _ptr(table), dims.layers, _ptr(t.norm0), _ptr(t.lm_head), _ptr(t.x), _ptr(t.h),
            _ptr(t.logits), _ptr(t.scratch), dims.batch, dims.hidden, dims.heads,
            dims.kv_heads, dims.head_dim, dims.inter, dims.vocab, eps, scale, _ptr(t.cos),
            _ptr(t.sin), _ptr(t.positions), _ptr(t.slots), _ptr(k), _ptr(t.vws),
            k.stride(0), k.stride(1), k.stride(2), k.stride(3), _ptr(t.cols),
            _ptr(t.bounds), dims.width,
        )  # fmt: skip


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and strides, contiguous last dim, heads packed (dim -2 stride = d)."""
    return (
        a.shape == b.shape
        and a.stride() == b.stride()
        and a.stride(-1) == 1
        and (a.dim() != 3 or a.stride(1) == a.shape[2])
    )


_LOADED: dict[Isa, tuple[CpuKernels | None, str | None]] = {}


def cpu_kernels(isa: Isa | None = None) -> CpuKernels | None:
    """The compiled kernels for ``isa`` (default: :func:`resolve_isa`), built and checked
    once per process; ``None`` when they cannot be used (:func:`kernels_problem` says why)."""
    from ferrum_cuda.cpu_native.selfcheck import self_check

    isa = isa or resolve_isa()
    if isa not in _LOADED:
        problem: str | None
        try:
            lib = build_library(isa)
        except (OSError, subprocess.SubprocessError) as exc:
            lib, problem = None, f"the build raised {type(exc).__name__}: {exc}"
        else:
            problem = build_failure()
        kernels = None if lib is None else CpuKernels(lib)
        if kernels is not None and not self_check(kernels):
            kernels, problem = None, "the compiled kernels disagree with torch (self-check)"
        _LOADED[isa] = (kernels, problem if kernels is None else None)
    return _LOADED[isa][0]


def kernels_problem(isa: Isa | None = None) -> str | None:
    """Why :func:`cpu_kernels` gave ``None`` for ``isa`` (``None``: they load, or were not
    tried yet)."""
    return _LOADED.get(isa or resolve_isa(), (None, None))[1]
