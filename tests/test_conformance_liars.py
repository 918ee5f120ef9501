"""The conformance suite catches backends that lie about what they can do.

Each liar is the example backend's honest numpy model with one deliberate
defect behind a capability it claims. The suite runs in-process (pytester)
against each, with the liars injected into the process-wide backend registry,
and must fail it on the check that owns the claim — and only on checks the
defect can explain.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from ferrum_core.backends import BackendDescriptor, ProbeResult, get_registry
from ferrum_core.cli.conformance import suite_args
from ferrum_core.cli.main import cli
from ferrum_core.errors import CapacityError
from ferrum_core.llm import DecodeItem, LlmExecutor, UnifiedItem
from ferrum_core.protocol import (
    BatchModelExecutor,
    ExecutorCapabilities,
    ExecutorConfig,
    ExecutorType,
    ModelExecutor,
    UnifiedBatch,
    UnifiedLogits,
)

pytest_plugins = ["pytester"]

ferrum_example_backend = pytest.importorskip("ferrum_example_backend")
from ferrum_example_backend.model import NumpyLlama  # noqa: E402
from ferrum_example_backend.plugin import CAPABILITIES  # noqa: E402


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


class LiarFactory:
    def __init__(
        self, model_cls: type[NumpyLlama], executor_cls: type[LlmExecutor] = LlmExecutor
    ) -> None:
        self.model_cls = model_cls
        self.executor_cls = executor_cls

    def validate_config(self, config: ExecutorConfig) -> None:
        return None

    def create_executor(self, config: ExecutorConfig) -> ModelExecutor:
        from ferrum_core.models import load_model

        loaded = load_model(config.model_path)
        model = self.model_cls.from_weights(loaded.config, loaded.weights)
        return self.executor_cls(
            model, model_id=loaded.path.name, model_type=loaded.config.model_type
        )

    def create_batch_executor(self, config: ExecutorConfig) -> BatchModelExecutor:
        raise NotImplementedError

    def supported_types(self) -> list[ExecutorType]:
        return [ExecutorType.SEQUENTIAL]


LIARS: dict[str, tuple[LiarFactory, dict[str, Any]]] = {
    "liar-unified": (LiarFactory(UnifiedLiar), {"supports_native_unified_decode": True}),
    "liar-batch": (LiarFactory(BatchLiar), {"max_batch_size": 256}),
    "liar-leak": (LiarFactory(LeakLiar), {}),
    "liar-continuous": (LiarFactory(NumpyLlama, ContinuousBatchingLiar), {}),
    # not a liar: no unified decode and no claim resting on it
    "honest-no-unified": (
        LiarFactory(NumpyLlama, NoUnifiedExecutor), {"supports_continuous_batching": False}
    ),
}


@pytest.fixture
def liars() -> Iterator[None]:
    registry = get_registry()
    records = []
    for name, (factory, claims) in LIARS.items():
        descriptor = BackendDescriptor(
            name=name,
            factory_loader=lambda factory=factory: factory,
            probe=lambda: ProbeResult(True, "in-process liar"),
            priority=-100,
            capabilities=CAPABILITIES.model_copy(update=claims),
            plugin="test_conformance_liars",
            distribution="tests",
        )
        records.append(registry.add(descriptor))
    yield
    for record in records:
        registry.records.remove(record)


def _run(pytester: pytest.Pytester, backend: str) -> dict[str, dict[str, str]]:
    report = pytester.path / f"{backend}.json"
    pytester.runpytest_inprocess(*suite_args(backend, None, None, report, quiet=True))
    data = json.loads(Path(report).read_text())
    assert data["backend"] == backend
    return {check["id"]: check for check in data["checks"]}


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
def test_cli_exits_1_when_a_check_fails() -> None:
    result = CliRunner().invoke(cli, ["conformance", "liar-batch", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["summary"]["failed"] == 1
    assert set(report) == {"backend", "ferrum_version", "summary", "checks"}
    assert set(report["summary"]) == {"passed", "failed", "skipped", "xfailed"}


@pytest.mark.usefixtures("liars")
def test_xfail_file_records_a_known_gap(tmp_path: Path) -> None:
    xfail = tmp_path / "liar-batch.toml"
    xfail.write_text(
        '[xfail]\n"capabilities.max_batch_size" = "batches of 8 or more are not supported yet"\n'
    )
    result = CliRunner().invoke(cli, ["conformance", "liar-batch", "--xfail", str(xfail), "--json"])
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)
    check = next(c for c in report["checks"] if c["id"] == "capabilities.max_batch_size")
    assert check["outcome"] == "xfailed"
    assert "not supported yet" in check["reason"]
    assert report["summary"]["failed"] == 0 and report["summary"]["xfailed"] == 1
