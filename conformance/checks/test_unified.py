"""``unified_decode``: equals the serial path, native or by fallback; the claim is checked."""

from __future__ import annotations

import pytest
from ferrum_core.conformance.fixtures import UnifiedSupport, require_unified
from ferrum_core.conformance.harness import Driver, prompt, snapshot
from ferrum_core.conformance.oracle import assert_close

from ferrum_core.protocol import ModelExecutor
from ferrum_core.types import DataType

NATIVE = "unified_native_calls"
FALLBACK = "unified_fallback_calls"


def test_unsupported_error(executor: ModelExecutor, unified_support: UnifiedSupport) -> None:
    """Without unified support the call raises UnsupportedError, and nothing claims otherwise."""
    if unified_support.error:
        pytest.fail(f"unified_decode raised {unified_support.error} instead of UnsupportedError")
    if unified_support.supported:
        pytest.skip("the executor supports unified_decode")
    caps = executor.capabilities()
    assert not executor.supports_native_unified_decode(), "claims native unified decode"
    assert not caps.supports_native_unified_decode, "capabilities claim native unified decode"
    assert not caps.supports_continuous_batching, (
        "continuous batching is claimed but unified_decode is unsupported"
    )


def test_matches_serial(
    driver: Driver, vocab: int, tol_dtype: DataType, unified_support: UnifiedSupport,
    has_new_cache: bool,
) -> None:
    """A mixed batch (decodes, a whole prompt, a prompt in two chunks) equals serial calls."""
    require_unified(unified_support)
    if not has_new_cache:
        pytest.skip("new_cache() is unsupported, so unified_decode cannot start a sequence")
    pa, pb, pc = prompt(200, 6, vocab), prompt(201, 5, vocab), prompt(202, 7, vocab)
    xa, ya, zb = prompt(203, 3, vocab)
    _, ha = driver.prefill(pa)
    hb, hc = driver.new_cache(), driver.new_cache()
    # step 1: A decodes, B's whole prompt, C's first chunk (no logits)
    step1 = driver.unified([(ha, [xa], True), (hb, pb, True), (hc, pc[:4], False)])
    assert step1[2] is None
    ha, hb, hc = (ha.with_sequence_length(len(pa) + 1), hb.with_sequence_length(len(pb)),
                  hc.with_sequence_length(4))
    # step 2: C's last chunk, A and B decode
    step2 = driver.unified([(hc, pc[4:], True), (ha, [ya], True), (hb, [zb], True)])
    want_a = driver.run(pa, [xa, ya])
    want_b = driver.run(pb, [zb])
    want_c = driver.run(pc, [])
    assert_close(step1[0], want_a[1], tol_dtype, "step 1, decode item A")
    assert_close(step1[1], want_b[0], tol_dtype, "step 1, whole-prompt item B")
    assert_close(step2[0], want_c[0], tol_dtype, "step 2, final chunk of C")
    assert_close(step2[1], want_a[2], tol_dtype, "step 2, decode item A")
    assert_close(step2[2], want_b[1], tol_dtype, "step 2, decode item B")


def test_native_claim(driver: Driver, vocab: int, unified_support: UnifiedSupport) -> None:
    """``supports_native_unified_decode()`` is proved by the counters in the cache snapshot."""
    require_unified(unified_support)
    executor = driver.executor
    claimed = executor.supports_native_unified_decode()
    assert executor.capabilities().supports_native_unified_decode == claimed, (
        "capabilities() and supports_native_unified_decode() disagree"
    )
    handles = [driver.prefill(prompt(210 + i, 4, vocab))[1] for i in range(3)]
    before = snapshot(executor)
    if NATIVE not in before or FALLBACK not in before:
        if claimed:
            pytest.fail(f"native unified decode is claimed; the snapshot lacks {NATIVE!r}")
        pytest.skip("the cache snapshot has no unified counters")  # nothing claimed: fine
    driver.unified([(h, [1 % vocab], True) for h in handles])
    after = snapshot(executor)
    native = after[NATIVE] - before[NATIVE]
    fallback = after[FALLBACK] - before[FALLBACK]
    if claimed:
        assert (native, fallback) == (1, 0), (
            f"native unified decode is claimed, but the call counted {native} native and "
            f"{fallback} fallback"
        )
    else:
        assert (native, fallback) == (0, 1), (
            f"no native unified decode is claimed, but the call counted {native} native and "
            f"{fallback} fallback"
        )
