"""Linear layers, prepacked for oneDNN or for the small-M panel GEMM on the CPU.

On x86 CPUs oneDNN's GEMM on a weight reordered once at load time is several
times faster than the default MKL call for the skinny ``[rows, hidden]``
shapes of decoding, and never slower in our measurements, on AMD as well as
Intel parts. The packed path is checked against ``F.linear`` once at load
and silently falls back when the build lacks it or disagrees.

For fp32 weights loaded under :func:`use_panel_kernels` (the model does so
when its fused CPU kernels are on), the weight is instead packed into the
16-column panels of :meth:`CpuKernels.panel_linear`, which streams the
weights faster than oneDNN at decode's 1-16 rows and runs about as fast at
a few dozen; it then serves every row count (one packed copy only).
The executor option ``cpu_gemm=false`` (or ``FERRUM_CPU_GEMM=0``, or a CPU without
AVX-512 or AVX2) keeps oneDNN (see :mod:`ferrum_cuda.cpu_native.settings`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

from ferrum_cuda.cpu_native.isa import gemm_isa
from ferrum_cuda.cpu_native.kernels import CpuKernels
from ferrum_cuda.cpu_native.settings import env_bool

__all__ = [
    "Linear",
    "chain_prefetch",
    "onednn_available",
    "panel_gemm_enabled",
    "use_panel_kernels",
]

_PACK_ROWS_HINT = 64  # the reorder is tuned for this many rows; any count works
_PANELS: ContextVar[CpuKernels | None] = ContextVar("ferrum_panel_kernels", default=None)


def onednn_available() -> bool:
    return bool(
        torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def panel_gemm_enabled() -> bool:
    """Whether a model built with default options packs panels: tiles exist for AVX-512 and
    AVX2 (+FMA); elsewhere (or ``FERRUM_CPU_GEMM=0``) oneDNN."""
    return env_bool("FERRUM_CPU_GEMM") is not False and gemm_isa() is not None


@contextmanager
def use_panel_kernels(kernels: CpuKernels | None) -> Iterator[None]:
    """Linears prepacked inside this block use ``kernels``' panel GEMM (fp32 CPU only;
    ``None``: oneDNN). The caller decides (:class:`~ferrum_cuda.cpu_native.settings.NativeUse`)."""
    token = _PANELS.set(kernels)
    try:
        yield
    finally:
        _PANELS.reset(token)


class Linear:
    """``y = x @ weight.T + bias`` for 2-D ``x``."""

    __slots__ = ("after", "bias", "in_features", "kernels", "out_features", "packed", "weight")

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, prepack: bool = False
    ) -> None:
        self.out_features, self.in_features = weight.shape
        self.weight: torch.Tensor | None = weight
        self.bias = bias
        self.packed: torch.Tensor | None = None
        self.kernels: CpuKernels | None = None  # set when ``packed`` holds panels
        # The panels of the linear that runs next in the forward, prefetched at the end.
        self.after: torch.Tensor | None = None
        cpu = weight.device.type == "cpu"
        panels = _PANELS.get()
        if prepack and cpu and panels is not None and weight.dtype == torch.float32:
            self.packed = panels.pack_panels(weight)
            self.kernels = panels
            self.bias = None if bias is None else bias.contiguous()
            self.weight = None
        elif prepack and cpu and onednn_available():
            self.packed = _pack(weight, bias)
            if self.packed is not None:
                self.weight = None  # the packed copy replaces it

    @property
    def num_parameters(self) -> int:
        bias = self.bias.numel() if self.bias is not None else 0
        return self.out_features * self.in_features + bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            if self.kernels is not None:
                return self.kernels.panel_linear(
                    x, self.packed, self.out_features, self.bias, self.after
                )
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                x, self.packed, self.bias, "none", [], ""
            )
            return out
        assert self.weight is not None
        return F.linear(x, self.weight, self.bias)


def chain_prefetch(linears: list[Linear]) -> None:
    """Tell each panel-packed linear which panels the forward multiplies next (cyclic)."""
    for current, following in zip(linears, linears[1:] + linears[:1], strict=True):
        if current.kernels is not None and following.kernels is not None:
            current.after = following.packed


def _pack(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    try:
        with torch.inference_mode():
            packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_ROWS_HINT)
            probe = torch.arange(3 * weight.shape[1]).reshape(3, -1).sin().to(weight.dtype)
            got = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], "")
            want = F.linear(probe, weight, bias)
    except (RuntimeError, NotImplementedError):
        return None
    tol = 1e-3 if weight.dtype == torch.float32 else 5e-2
    scale = float(want.abs().max()) + 1.0
    if got.shape != want.shape or float((got - want).abs().max()) > tol * scale:
        return None
    return packed
