"""The conformance suite catches backends that lie about what they can do.

Each liar is the example backend's numpy model with one deliberate defect behind
a claim. The suite runs in-process (pytester) against each, injected into the
backend registry, and must fail it on the check that owns the claim, and only on
checks the defect can explain.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from ferrum_core.errors import CapacityError
from ferrum_core.llm import DecodeItem, LlmExecutor, UnifiedItem
from ferrum_core.protocol import (
    DecodeInput,
    DecodeOutput,
    ExecutorCapabilities,
    ExecutorConfig,
    ExecutorType,
    ModelExecutor,
    PrefillInput,
    PrefillOutput,
    UnifiedBatch,
    UnifiedLogits,
)

pytest_plugins = ["pytester"]

ferrum_example_backend = pytest.importorskip("ferrum_example_backend")
from ferrum_example_backend.model import NumpyLlama, _linear  # noqa: E402
from ferrum_example_backend.ops import apply_rope, attention, rms_norm  # noqa: E402

from tests.test_conformance_support import LiarFactory, registered, run_report  # noqa: E402


class UnifiedLiar(NumpyLlama):
    """Claims a native ragged forward; gets the last item wrong whenever a batch has several."""

    @property
    def native_unified(self) -> bool:
        return True

    def unified_forward(self, items: Sequence[UnifiedItem]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for item in items:
            logits = self.prefill(item.cache_id, item.tokens, item.pos_offset)
            out.append(logits if item.is_final_chunk else None)
        last = out[-1]
        if len(items) > 1 and last is not None:
            out[-1] = last + np.float32(1.0) * (np.arange(last.shape[0]) == 0)
        return out


class BatchLiar(NumpyLlama):
    """Claims max_batch_size 256 (the default) but cannot decode 8 sequences at once."""

    def decode_batch(
        self, items: Sequence[DecodeItem], force_full_logits: bool
    ) -> list[np.ndarray]:
        if len(items) >= 8:
            raise CapacityError(f"cannot decode {len(items)} sequences at once")
        return super().decode_batch(items, force_full_logits)


class LeakLiar(NumpyLlama):
    """Reports paged KV accounting, but release() never returns a sequence's blocks."""

    BLOCK = 16
    TOTAL = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocks: dict[str, int] = {}
        self.leaked = 0

    def _run(self, cache_id: str, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        hidden = super()._run(cache_id, tokens, start_pos)
        self.blocks[cache_id] = math.ceil((start_pos + len(tokens)) / self.BLOCK)
        return hidden

    def truncate_kv(self, cache_id: str, new_len: int) -> None:
        super().truncate_kv(cache_id, new_len)
        if cache_id in self.blocks:
            self.blocks[cache_id] = math.ceil(new_len / self.BLOCK)

    def release(self, cache_id: str) -> None:
        super().release(cache_id)
        self.leaked += self.blocks.pop(cache_id, 0)  # the lie: counted as still in use

    def cache_metrics_snapshot(self) -> dict[str, Any] | None:
        used = sum(self.blocks.values()) + self.leaked
        return {
            "kv_blocks_total": self.TOTAL,
            "kv_blocks_free": max(0, self.TOTAL - used),
            "block_size": self.BLOCK,
            "prefix_cache_hits": 0,
            "prefix_cache_misses": 0,
        }


class AttentionLiar(NumpyLlama):
    """Declares MHA and sliding windows (as the example does) but gets both wrong: query
    heads share KV heads in fixed pairs (right for GQA 4/2 and MQA only), and the window
    is never applied."""

    def _attention(self, layer: Any, index: int, h: np.ndarray, kv: Any, positions: np.ndarray,
                   cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        cfg = self.model_config
        n, hd = h.shape[0], cfg.head_dim
        q = _linear(h, layer.wq, layer.bq).reshape(n, cfg.num_attention_heads, hd)
        k = _linear(h, layer.wk, layer.bk).reshape(n, cfg.num_key_value_heads, hd)
        v = _linear(h, layer.wv, layer.bv).reshape(n, cfg.num_key_value_heads, hd)
        if layer.q_norm is not None and layer.k_norm is not None:
            eps = cfg.rms_norm_eps
            q, k = rms_norm(q, layer.q_norm, eps), rms_norm(k, layer.k_norm, eps)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        kv.write(index, int(positions[0]), k, v)
        keys, values = kv.view(index, int(positions[-1]) + 1)
        if cfg.num_key_value_heads == cfg.num_attention_heads > 1:  # the lie: groups of 2
            keys, values = keys[::2], values[::2]
        return _linear(attention(q, keys, values, positions, None), layer.wo, layer.bo)


class NoRollbackExecutor(LlmExecutor):
    """Runs batch items one by one, each committed before the next: a bad last item
    fails the call after the others have moved on."""

    def batch_prefill(self, inputs: Sequence[PrefillInput]) -> list[PrefillOutput]:
        return [LlmExecutor.batch_prefill(self, [inp])[0] for inp in inputs]

    def batch_decode(self, inputs: Sequence[DecodeInput]) -> list[DecodeOutput]:
        return [LlmExecutor.batch_decode(self, [inp])[0] for inp in inputs]

    def unified_decode(self, batch: UnifiedBatch) -> UnifiedLogits:
        return [LlmExecutor.unified_decode(self, UnifiedBatch((it,)))[0] for it in batch.items]


class NoUnifiedExecutor(LlmExecutor):
    """An executor without unified decode: the protocol default raises UnsupportedError."""

    claims_continuous_batching = False

    def unified_decode(self, batch: UnifiedBatch) -> UnifiedLogits:
        return ModelExecutor.unified_decode(self, batch)

    def capabilities(self) -> ExecutorCapabilities:
        update = {"supports_continuous_batching": self.claims_continuous_batching}
        return super().capabilities().model_copy(update=update)


class ContinuousBatchingLiar(NoUnifiedExecutor):
    """Claims continuous batching without the unified_decode it rests on."""

    claims_continuous_batching = True


class SerialOnly(ModelExecutor):
    """A plain (serial) ModelExecutor over an LlmExecutor: not a BatchModelExecutor."""

    def __init__(self, inner: ModelExecutor) -> None:
        self.inner = inner

    def info(self):  # type: ignore[no-untyped-def]
        return self.inner.info()

    def prefill(self, input: PrefillInput) -> PrefillOutput:
        return self.inner.prefill(input)

    def decode(self, input: DecodeInput) -> DecodeOutput:
        return self.inner.decode(input)

    def capabilities(self) -> ExecutorCapabilities:
        return self.inner.capabilities()

    def status(self):  # type: ignore[no-untyped-def]
        return self.inner.status()


class BatchTypeLiar(LiarFactory):
    """Lists ExecutorType.BATCH, but create_batch_executor returns a serial executor."""

    def create_batch_executor(self, config: ExecutorConfig) -> Any:
        return SerialOnly(self.create_executor(config))

    def supported_types(self) -> list[ExecutorType]:
        return [ExecutorType.SEQUENTIAL, ExecutorType.BATCH]


LIARS: dict[str, tuple[LiarFactory, dict[str, Any]]] = {
    "liar-batch-type": (BatchTypeLiar(NumpyLlama), {}),
    "liar-unified": (LiarFactory(UnifiedLiar), {"supports_native_unified_decode": True}),
    "liar-batch": (LiarFactory(BatchLiar), {"max_batch_size": 256}),
    "liar-leak": (LiarFactory(LeakLiar), {}),
    "liar-continuous": (LiarFactory(NumpyLlama, ContinuousBatchingLiar), {}),
    "liar-attention": (LiarFactory(AttentionLiar), {}),
    "liar-rollback": (LiarFactory(NumpyLlama, NoRollbackExecutor), {}),
    # declares one family but runs whatever it is given
    "liar-families": (LiarFactory(NumpyLlama), {"supported_model_types": ("qwen2",)}),
    # not a liar: no unified decode and no claim resting on it
    "honest-no-unified": (
        LiarFactory(NumpyLlama, NoUnifiedExecutor), {"supports_continuous_batching": False}
    ),
}


@pytest.fixture
def liars() -> Iterator[None]:
    with registered(LIARS):
        yield


def _run(pytester: pytest.Pytester, backend: str) -> dict[str, dict[str, str]]:
    return {check["id"]: check for check in run_report(pytester, backend)["checks"]}


def _run_only(pytester: pytest.Pytester, backend: str, group: str) -> dict[str, dict[str, str]]:
    """The checks of one id group (``factory.``), from a run of that module alone."""
    module = f"test_{group.rstrip('.')}.py"
    report = run_report(pytester, backend, "-k", module.removesuffix(".py"))
    return {c["id"]: c for c in report["checks"] if c["id"].startswith(group)}


def _failed(checks: dict[str, dict[str, str]]) -> set[str]:
    return {cid for cid, check in checks.items() if check["outcome"] == "failed"}


@pytest.mark.usefixtures("liars")
def test_native_unified_liar_fails_unified_check(pytester: pytest.Pytester) -> None:
    checks = _run(pytester, "liar-unified")
    failed = _failed(checks)
    assert "unified.matches_serial" in failed, checks["unified.matches_serial"]
    assert "unified.native_claim" not in failed  # the counters are honest: the logits are not
    # single-item paths are right, so golden numerics and the protocol checks still pass
    assert not {cid for cid in failed if cid.startswith(("numerics.", "protocol.", "errors."))}


@pytest.mark.usefixtures("liars")
def test_max_batch_size_liar_fails_capacity_check(pytester: pytest.Pytester) -> None:
    checks = _run(pytester, "liar-batch")
    assert _failed(checks) == {"capabilities.max_batch_size"}, checks
    assert "cannot decode" in checks["capabilities.max_batch_size"]["reason"]


@pytest.mark.usefixtures("liars")
def test_leaking_liar_fails_leak_check(pytester: pytest.Pytester) -> None:
    checks = _run(pytester, "liar-leak")
    assert "cache.release_no_leak" in _failed(checks), checks["cache.release_no_leak"]
    assert _failed(checks) <= {"cache.release_no_leak", "cache.paged_accounting"}, checks
    assert "kv_blocks_free" in checks["cache.release_no_leak"]["reason"]


@pytest.mark.usefixtures("liars")
def test_continuous_batching_without_unified_decode_fails(pytester: pytest.Pytester) -> None:
    checks = _run(pytester, "liar-continuous")
    assert _failed(checks) == {"unified.unsupported_error", "capabilities.continuous_batching"}


@pytest.mark.usefixtures("liars")
def test_executor_without_unified_support_passes(pytester: pytest.Pytester) -> None:
    """The documented UnsupportedError is the right answer when nothing rests on unified decode."""
    checks = _run(pytester, "honest-no-unified")
    assert not _failed(checks), {c: v for c, v in checks.items() if v["outcome"] == "failed"}
    assert checks["unified.unsupported_error"]["outcome"] == "passed"
    assert checks["unified.matches_serial"]["outcome"] == "skipped"
    assert "UnsupportedError" in checks["unified.matches_serial"]["reason"]


@pytest.mark.usefixtures("liars")
def test_partial_batch_without_rollback_fails_rollback_checks(pytester: pytest.Pytester) -> None:
    checks = _run(pytester, "liar-rollback")
    failed = _failed(checks)
    for call in ("batch_decode", "batch_prefill", "unified_decode"):
        for bad in ("out_of_vocabulary", "over_capacity", "released_cache"):
            assert f"rollback.{call}[{bad}]" in failed, checks[f"rollback.{call}[{bad}]"]
    assert "cannot continue from its handle" in checks["rollback.batch_decode[over_capacity]"][
        "reason"]
    # a bad middle item too; one call per item also counts one unified call per item
    explained = {"errors.failed_batch_isolated", "unified.native_claim"}
    assert {cid for cid in failed if not cid.startswith("rollback.")} <= explained, failed


@pytest.mark.usefixtures("liars")
def test_declared_attention_that_fails_its_shape_is_caught(pytester: pytest.Pytester) -> None:
    checks = _run(pytester, "liar-attention")
    failed = _failed(checks)
    assert {"attention.mechanism[multi_head]", "attention.mechanism[sliding_window]"} <= failed
    assert "multi_head on golden llama_mha" in checks["attention.mechanism[multi_head]"]["reason"]
    assert "fp32 tolerance" in checks["attention.mechanism[sliding_window]"]["reason"]
    for kind in ("multi_query", "grouped_query"):
        assert checks[f"attention.mechanism[{kind}]"]["outcome"] == "passed"
    explained = {cid for cid in checks if cid.endswith(("[llama_mha]", "[mistral_sliding]"))}
    assert failed <= {*explained, "attention.mechanism[multi_head]",
                      "attention.mechanism[sliding_window]", "capabilities.dtype[fp32]"}, failed


@pytest.mark.usefixtures("liars")
def test_backend_running_an_undeclared_family_is_caught(pytester: pytest.Pytester) -> None:
    checks = _run(pytester, "liar-families")
    # LLM (the engine check) refuses the llama golden for a backend declaring only qwen2
    assert _failed(checks) == {"capabilities.static_instance_agree",
                               "capabilities.speculative_engine"}, checks
    assert "not supported by backend 'liar-families'" in checks[
        "capabilities.speculative_engine"]["reason"]
    assert "'llama' runs although" in checks["capabilities.static_instance_agree"]["reason"]


@pytest.mark.usefixtures("liars")
def test_batch_type_without_a_batch_executor_is_caught(pytester: pytest.Pytester) -> None:
    checks = _run_only(pytester, "liar-batch-type", "factory.")
    assert _failed(checks) == {"factory.batch_executor"}, checks
    assert "not a BatchModelExecutor" in checks["factory.batch_executor"]["reason"]
    honest = _run_only(pytester, "liar-leak", "factory.")  # LiarFactory lists no BATCH
    assert honest["factory.batch_executor"]["outcome"] == "skipped"
