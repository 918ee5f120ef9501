"""The fused fp32 CPU kernels against the torch ops they replace (skipped without a C compiler)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ferrum_cuda.cpu_native.kernels import CpuKernels, cpu_kernels
from ferrum_cuda.layers import RopeTables, apply_rope
from ferrum_cuda.linear import Linear, panel_gemm_enabled, use_panel_kernels
from torch_tiny import TinyModel, prompt

from ferrum_core.llm.decoder import DecodeItem

ATOL = 1e-5


@pytest.fixture(scope="module")
def kernels() -> CpuKernels:
    found = cpu_kernels()
    if found is None:
        pytest.skip("no C compiler (or FERRUM_CPU_KERNELS=0): the torch path runs instead")
    return found


@pytest.mark.parametrize("head_dim", [16, 24, 64, 128])
@pytest.mark.parametrize("width", [1, 15, 16, 37, 70])
@pytest.mark.parametrize("group", [1, 3, 5])  # head chunks of the V pass: 4 (d 64), 2 (d 128)
def test_decode_attention_matches_sdpa(
    kernels: CpuKernels, head_dim: int, width: int, group: int
) -> None:
    gen = torch.Generator().manual_seed(width * 1000 + head_dim + group)
    batch, kv_heads = 4, 2
    q = torch.randn(batch, kv_heads * group + 2, head_dim, generator=gen)[:, : kv_heads * group]
    store = torch.randn(batch, kv_heads, width + 9, head_dim, generator=gen)
    k, v = store[:, :, :width], torch.randn_like(store)[:, :, :width]
    lo = torch.tensor([0, min(3, width - 1), 0, max(0, width - 5)])
    hi = torch.tensor([width, width, 1, width])
    bounds = torch.stack([lo, hi], 1)
    pos = torch.arange(width)
    mask = (pos >= lo[:, None]) & (pos < hi[:, None])
    want = F.scaled_dot_product_attention(
        q.reshape(batch, kv_heads, group, head_dim), k, v, attn_mask=mask[:, None, None], scale=0.2
    ).reshape(batch, -1)
    got = kernels.decode_attention(q, k, v, bounds, 0.2)
    assert got is not None
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_norms_and_gating_match_torch(kernels: CpuKernels) -> None:
    gen = torch.Generator().manual_seed(1)
    x, delta, w = (torch.randn(7, 576, generator=gen) for _ in range(3))
    torch.testing.assert_close(kernels.rms_norm(x, w[0], 1e-5), F.rms_norm(x, (576,), w[0], 1e-5))
    residual = x.clone()
    normed = kernels.add_rms_norm(residual, delta, w[0], 1e-6)
    torch.testing.assert_close(residual, x + delta)
    torch.testing.assert_close(normed, F.rms_norm(x + delta, (576,), w[0], 1e-6))
    gate_up = torch.randn(7, 2 * 1536, generator=gen) * 6
    want = F.silu(gate_up[:, :1536]) * gate_up[:, 1536:]
    torch.testing.assert_close(kernels.silu_mul(gate_up), want, atol=ATOL, rtol=1e-5)


def test_rope_store_matches_apply_rope(kernels: CpuKernels) -> None:
    gen = torch.Generator().manual_seed(2)
    heads, kv_heads, d, rows = 6, 2, 64, 5
    rope = RopeTables(1.0 / 10000 ** (torch.arange(0, d, 2) / d).numpy(), 64, torch.float32,
                      torch.device("cpu"))  # fmt: skip
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * d, generator=gen)
    positions = torch.tensor([0, 5, 17, 63, 9])
    slots = torch.tensor([3, 0, 11, 7, 1])
    k_pool, v_pool = torch.zeros(12, kv_heads, d), torch.zeros(12, kv_heads, d)
    heads3 = qkv.view(rows, -1, d)
    cos, sin = rope.gather(positions)
    want = apply_rope(heads3[:, : heads + kv_heads], cos, sin)
    v_want = heads3[:, heads + kv_heads :].clone()
    kernels.rope_store(qkv, heads, kv_heads, rope.cos, rope.sin, positions, slots, k_pool, v_pool)
    torch.testing.assert_close(heads3[:, : heads + kv_heads], want, atol=ATOL, rtol=0)
    torch.testing.assert_close(k_pool[slots], want[:, heads:], atol=ATOL, rtol=0)
    torch.testing.assert_close(v_pool[slots], v_want)


@pytest.mark.parametrize(("n", "k"), [(1, 5), (37, 21), (100, 577), (960, 576), (200, 1536)])
def test_panel_linear_matches_torch(kernels: CpuKernels, n: int, k: int) -> None:
    """Every tile shape (1-16 rows), several tiles of rows, ragged n and k, with a bias."""
    gen = torch.Generator().manual_seed(n * 7 + k)
    w, bias = torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    panels = kernels.pack_panels(w)
    assert panels.shape == ((n + 15) // 16, k, 16)
    after = kernels.pack_panels(torch.randn(3000, 64, generator=gen))  # prefetched only
    for rows in [*range(1, 17), 19, 40]:
        x = torch.randn(rows, k, generator=gen)
        want = (x.double() @ w.double().T + bias.double()).float()
        for b in (bias, None):
            got = kernels.panel_linear(x, panels, n, b, after if rows % 2 else None)
            ref = want if b is not None else want - bias
            err = float((got - ref).abs().max() / ref.abs().max())
            assert err < 1e-5, (rows, b is None, err)
    strided = torch.randn(3, k + 8, generator=gen)[:, :k]  # rows with a stride of their own
    torch.testing.assert_close(kernels.panel_linear(strided, panels, n, bias),
                               F.linear(strided, w, bias), atol=1e-4, rtol=1e-5)  # fmt: skip
    assert kernels.panel_linear(x[:0], panels, n, bias).shape == (0, n)


needs_panels = pytest.mark.skipif(
    not panel_gemm_enabled(),
    reason="no AVX-512/AVX2 (or FERRUM_CPU_GEMM=0): oneDNN serves the linears",
)


@needs_panels
def test_linear_packs_panels_once(kernels: CpuKernels) -> None:
    w, bias = torch.randn(50, 30), torch.randn(50)
    with use_panel_kernels(kernels):
        panel = Linear(w, bias, prepack=True)
    plain = Linear(w, bias, prepack=True)  # outside the block: oneDNN (or F.linear)
    assert panel.kernels is kernels and panel.weight is None and panel.packed is not None
    assert plain.kernels is None
    x = torch.randn(6, 30)
    torch.testing.assert_close(panel(x), F.linear(x, w, bias), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(panel(x), plain(x), atol=1e-4, rtol=1e-5)


@needs_panels
@pytest.mark.parametrize("family", ["llama_tied_odd", "llama_mqa_bias"])
def test_decode_with_panel_gemm_matches_onednn_path(
    kernels: CpuKernels,
    family: str,
    tiny: Callable[[str], TinyModel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batched decode loop: the panel GEMM model against the oneDNN one and the oracle."""
    model = tiny(family)
    fast = model.build()
    monkeypatch.setenv("FERRUM_CPU_GEMM", "0")
    before = model.build()
    assert fast.weights.layers[0].qkv.kernels is kernels and fast.weights.lm_head.kernels
    assert before.weights.layers[0].qkv.kernels is None
    seqs = {f"s{i}": prompt(n, seed=50 + i) for i, n in enumerate((4, 11, 7, 2, 9))}
    for llm in (fast, before):
        for cache_id, tokens in seqs.items():
            llm.prefill(cache_id, tokens, 0)
    for token in (21, 22, 23):
        items = [DecodeItem(c, token, len(seqs[c])) for c in seqs]
        got, want = fast.decode_batch(items, False), before.decode_batch(items, False)
        for c, a, b in zip(seqs, got, want, strict=True):
            seqs[c] = [*seqs[c], token]
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
            np.testing.assert_allclose(a, model.logits(seqs[c]).numpy()[-1], atol=1e-4, rtol=0)


def test_avx2_build_passes_the_same_tests(kernels: CpuKernels) -> None:
    """On an AVX-512 machine the AVX2 tiles (16 registers of 8 floats) only run when asked
    for: build them (``FERRUM_CPU_ISA=avx2``) and run the GEMM, attention and fused-step
    tests against them in a child process."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.exists() else []
    if not {"avx2", "fma"} <= set(flags):
        pytest.skip("no AVX2 on this CPU")
    here = Path(__file__).parent
    env = {**os.environ, "FERRUM_CPU_ISA": "avx2", "FERRUM_CPU_GEMM": "1"}
    script = (
        "import sys, pytest\n"
        "from ferrum_cuda.cpu_native.isa import gemm_isa\n"
        "from ferrum_cuda.cpu_native.kernels import cpu_kernels\n"
        "assert gemm_isa() == 'avx2' and cpu_kernels() is not None\n"
        "sys.exit(pytest.main(sys.argv[1:]))\n"
    )
    tests = [
        f"{here / 'test_torch_cpu_kernels.py'}::test_panel_linear_matches_torch",
        f"{here / 'test_torch_cpu_kernels.py'}::test_decode_attention_matches_sdpa",
        str(here / "test_torch_fused_step.py"),
    ]
    done = subprocess.run(
        [sys.executable, "-c", script, "-q", "-p", "no:cacheprovider", "--rootdir", str(here),
         *tests],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
