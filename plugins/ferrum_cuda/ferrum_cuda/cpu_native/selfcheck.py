"""The compiled kernels against the torch ops they replace, once, before any model uses them.

A build that compiles but computes something else (a compiler bug, a CPU
feature the flags misjudged) must not reach a model: :func:`self_check` runs
every kernel on a small random case and compares.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ferrum_cuda.cpu_native.kernels import CpuKernels

__all__ = ["self_check"]


def self_check(kernels: CpuKernels) -> bool:
    """Compare every kernel with the torch ops it replaces on a small random case."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        x = torch.randn(5, 40, generator=gen)
        w = torch.randn(40, generator=gen)
        ok = torch.allclose(kernels.rms_norm(x, w, 1e-5), F.rms_norm(x, (40,), w, 1e-5),
                            atol=1e-5)  # fmt: skip
        x2, delta = x.clone(), torch.randn(5, 40, generator=gen)
        normed = kernels.add_rms_norm(x2, delta, w, 1e-5)
        ok &= torch.allclose(x2, x + delta) and torch.allclose(
            normed, F.rms_norm(x + delta, (40,), w, 1e-5), atol=1e-5
        )
        gu = torch.randn(5, 64, generator=gen) * 4
        ok &= torch.allclose(kernels.silu_mul(gu), F.silu(gu[:, :32]) * gu[:, 32:], atol=1e-5)
        for d, width in ((8, 16), (64, 40)):  # the generic and the unrolled head dims
            q = torch.randn(3, 6, d, generator=gen)
            k = torch.randn(3, 2, width, d, generator=gen)
            v = torch.randn(3, 2, width, d, generator=gen)
            bounds = torch.tensor([[0, width], [2, width - 3], [0, 1]])
            pos = torch.arange(width)
            mask = (pos >= bounds[:, :1]) & (pos < bounds[:, 1:])
            want = F.scaled_dot_product_attention(
                q.view(3, 2, 3, d), k, v, attn_mask=mask[:, None, None, :], scale=0.3
            ).reshape(3, 6 * d)
            got = kernels.decode_attention(q, k, v, bounds, 0.3)
            ok &= got is not None and torch.allclose(got, want, atol=1e-5)
        w, b = torch.randn(37, 21, generator=gen), torch.randn(37, generator=gen)
        panels = kernels.pack_panels(w)
        for rows in (1, 5, 8, 13, 16, 19):  # every tile shape, and more rows than one tile
            x = torch.randn(rows, 21, generator=gen)
            ok &= torch.allclose(kernels.panel_linear(x, panels, 37, b), F.linear(x, w, b),
                                 atol=1e-4)  # fmt: skip
    return bool(ok)
