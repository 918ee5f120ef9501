"""Fixtures of the conformance checks; registered by the plugin only when a backend is named."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conformance.harness import Driver, prompt
from conformance.oracle import PRIMARY, golden_model
from ferrum_core.backends import BackendDescriptor, get_backend
from ferrum_core.errors import UnsupportedError
from ferrum_core.protocol import (
    ExecutorCapabilities,
    ExecutorConfig,
    ModelExecutor,
    UnifiedBatch,
    UnifiedBatchItem,
)
from ferrum_core.types import DataType

MakeExecutor = Callable[..., ModelExecutor]


@dataclass(frozen=True)
class UnifiedSupport:
    """What a one-item ``unified_decode`` probe showed."""

    supported: bool
    error: str = ""  # set when it raised something other than UnsupportedError


@pytest.fixture(scope="session")
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("ferrum_backend"))


@pytest.fixture(scope="session")
def backend(backend_name: str) -> BackendDescriptor:
    return get_backend(backend_name)


@pytest.fixture(scope="session")
def static_caps(backend: BackendDescriptor) -> ExecutorCapabilities | None:
    return backend.capabilities


@pytest.fixture(scope="session")
def model_dir(request: pytest.FixtureRequest) -> Path:
    given = request.config.getoption("ferrum_model")
    return Path(given) if given else golden_model(PRIMARY).path


@pytest.fixture(scope="session")
def model_config(model_dir: Path) -> dict[str, Any]:
    """The raw ``config.json`` of the behavioural model (read without the model layer)."""
    path = model_dir / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.fixture(scope="session")
def default_dtype(static_caps: ExecutorCapabilities | None) -> DataType:
    if static_caps is None or DataType.FP32 in static_caps.supported_dtypes:
        return DataType.FP32
    return static_caps.supported_dtypes[0]


@pytest.fixture(scope="session")
def make_executor(
    backend_name: str,
    model_dir: Path,
    default_dtype: DataType,
    static_caps: ExecutorCapabilities | None,
) -> Iterator[MakeExecutor]:
    """Build executors of the backend under test; all are shut down at the end."""
    from ferrum_core.backends import create_executor

    created: list[ModelExecutor] = []
    max_batch = static_caps.max_batch_size if static_caps is not None else 64

    def make(
        model: Path | None = None, dtype: DataType | None = None, **extra: Any
    ) -> ModelExecutor:
        config = ExecutorConfig(
            model_path=str(model or model_dir),
            dtype=dtype or default_dtype,
            max_batch_size=extra.pop("max_batch_size", max_batch),
            **extra,
        )
        executor = create_executor(config, backend=backend_name)
        created.append(executor)
        return executor

    yield make
    for executor in created:
        with contextlib.suppress(Exception):
            executor.shutdown()


GoldenExecutor = Callable[[str, DataType], ModelExecutor]


@pytest.fixture(scope="session")
def golden_executor(make_executor: MakeExecutor) -> GoldenExecutor:
    """One executor per (golden model, dtype), built on first use and then reused."""
    built: dict[tuple[str, DataType], ModelExecutor] = {}

    def get(name: str, dtype: DataType) -> ModelExecutor:
        key = (name, dtype)
        if key not in built:
            built[key] = make_executor(golden_model(name).path, dtype, max_batch_size=8)
        return built[key]

    return get


@pytest.fixture(scope="session")
def executor(make_executor: MakeExecutor) -> ModelExecutor:
    """The shared executor of the behavioural checks (they release what they open)."""
    executor = make_executor()
    executor.warmup()
    return executor


@pytest.fixture
def driver(executor: ModelExecutor) -> Iterator[Driver]:
    drv = Driver(executor)
    yield drv
    drv.close()


@pytest.fixture(scope="session")
def vocab(executor: ModelExecutor) -> int:
    return executor.info().vocab_size


@pytest.fixture(scope="session")
def tol_dtype(default_dtype: DataType) -> DataType:
    """The dtype whose tolerance applies when the behavioural checks compare two paths."""
    return default_dtype


@pytest.fixture(scope="session")
def unified_support(executor: ModelExecutor, vocab: int) -> UnifiedSupport:
    drv = Driver(executor)
    try:
        _, handle = drv.prefill(prompt(7, 3, vocab))
        item = UnifiedBatchItem(handle.cache_id, (1 % vocab,), handle, handle.sequence_length, True)
        try:
            executor.unified_decode(UnifiedBatch((item,)))
        except UnsupportedError:
            return UnifiedSupport(False)
        except Exception as exc:  # anything but the documented error is a finding
            return UnifiedSupport(False, f"{type(exc).__name__}: {exc}")
        return UnifiedSupport(True)
    finally:
        drv.close()


@pytest.fixture(scope="session")
def has_new_cache(executor: ModelExecutor) -> bool:
    try:
        handle = executor.new_cache()
    except UnsupportedError:
        return False
    executor.release_cache(handle.cache_id)
    return True


def require_unified(support: UnifiedSupport) -> None:
    if support.error:
        pytest.fail(f"unified_decode raised {support.error} instead of UnsupportedError")
    if not support.supported:
        pytest.skip("the executor has no unified_decode (it raised UnsupportedError)")


def require_claim(caps: ExecutorCapabilities, flag: str) -> None:
    if not getattr(caps, flag):
        pytest.skip(f"the executor does not declare {flag}")
