"""What a backend's factory promises in ``supported_types()`` it delivers.

Ids: ``factory.batch_executor``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from ferrum_core.conformance.harness import prompt

from ferrum_core.backends import BackendDescriptor
from ferrum_core.protocol import (
    BatchModelExecutor,
    ExecutorCapabilities,
    ExecutorConfig,
    ExecutorType,
    PrefillInput,
)
from ferrum_core.tensor import token_ids
from ferrum_core.types import DataType


def test_batch_executor(
    backend: BackendDescriptor,
    model_dir: Path,
    default_dtype: DataType,
    run_options: dict[str, Any],
    static_caps: ExecutorCapabilities | None,
) -> None:
    """A factory listing ``batch`` returns a working BatchModelExecutor from
    ``create_batch_executor``."""
    factory = backend.factory()
    if ExecutorType.BATCH not in factory.supported_types():
        pytest.skip("the factory does not list ExecutorType.BATCH")
    config = ExecutorConfig(
        model_path=str(model_dir),
        dtype=default_dtype,
        max_batch_size=static_caps.max_batch_size if static_caps is not None else 64,
        executor_options=dict(run_options),
    )
    executor = factory.create_batch_executor(config)
    try:
        assert isinstance(executor, BatchModelExecutor), (
            f"create_batch_executor returned a {type(executor).__name__},"
            " not a BatchModelExecutor"
        )
        best = executor.optimal_batch_size()
        assert best >= 1 and executor.supports_batch_size(best), (
            f"optimal_batch_size {best} is not a batch size it supports"
        )
        vocab = executor.info().vocab_size
        prompts = [prompt(1900 + i, 3 + i, vocab) for i in range(2)]
        outs = executor.batch_prefill([PrefillInput(token_ids(p)) for p in prompts])
        assert [o.kv_cache.sequence_length for o in outs] == [len(p) for p in prompts]
        for out in outs:
            executor.release_cache(out.kv_cache.cache_id)
    finally:
        with contextlib.suppress(Exception):
            executor.shutdown()
