"""Plumbing of the conformance tests: test backends in the registry, the suite's report.

Not a test module (it holds no tests); named so that it belongs with them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferrum_core.backends import BackendDescriptor, ProbeResult, get_registry
from ferrum_core.cli.conformance import suite_args
from ferrum_core.llm import LlmExecutor
from ferrum_core.protocol import (
    BatchModelExecutor,
    ExecutorConfig,
    ExecutorType,
    ModelExecutor,
)

ferrum_example_backend = pytest.importorskip("ferrum_example_backend")
from ferrum_example_backend.model import NumpyLlama  # noqa: E402
from ferrum_example_backend.plugin import CAPABILITIES  # noqa: E402

__all__ = ["LiarFactory", "registered", "run_report"]


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


@contextlib.contextmanager
def registered(backends: dict[str, tuple[Any, dict[str, Any]]]) -> Iterator[None]:
    """``name -> (factory, capability overrides)`` in the process-wide backend registry."""
    registry = get_registry()
    records = []
    for name, (factory, claims) in backends.items():
        descriptor = BackendDescriptor(
            name=name,
            factory_loader=lambda factory=factory: factory,
            probe=lambda: ProbeResult(True, "in-process test backend"),
            priority=-100,
            capabilities=CAPABILITIES.model_copy(update=claims),
            plugin="test_conformance_liars",
            distribution="tests",
        )
        records.append(registry.add(descriptor))
    try:
        yield
    finally:
        for record in records:
            registry.records.remove(record)


def run_report(pytester: pytest.Pytester, backend: str, *extra: str) -> dict[str, Any]:
    """The suite's JSON report for ``backend`` (``extra``: more pytest arguments)."""
    report = pytester.path / f"{backend}.json"
    pytester.runpytest_inprocess(*suite_args(backend, None, None, report, quiet=True), *extra)
    data: dict[str, Any] = json.loads(Path(report).read_text())
    assert data["backend"] == backend
    return data
