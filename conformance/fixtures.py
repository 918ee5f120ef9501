"""Fixtures of the conformance checks; registered by the plugin only when a backend is named."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ferrum_core.conformance.harness import Driver, prompt
from ferrum_core.conformance.options import run_dtype
from ferrum_core.conformance.oracle import (
    GoldenModel,
    gguf_goldens,
    golden_model,
    golden_models,
    primary_for,
)
from ferrum_core.conformance.plugin import requested_dtype, requested_options

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


def _golden_at(path: Path) -> GoldenModel | None:
    for golden in (*golden_models().values(), *gguf_goldens().values()):
        if golden.path.resolve() == path.resolve():
            return golden
    return None


@pytest.fixture(scope="session")
def default_dtype(
    request: pytest.FixtureRequest, static_caps: ExecutorCapabilities | None
) -> DataType:
    """The dtype of the run (``--ferrum-dtype``; else fp32 where declared)."""
    return run_dtype(requested_dtype(request.config), static_caps)


@pytest.fixture(scope="session")
def run_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``--ferrum-option`` settings: the executor options of every executor the suite builds."""
    return requested_options(request.config)


@pytest.fixture(scope="session")
def model_dir(request: pytest.FixtureRequest, default_dtype: DataType) -> Path:
    given = request.config.getoption("ferrum_model")
    return Path(given) if given else golden_model(primary_for(default_dtype)).path


@pytest.fixture(scope="session")
def model_config(model_dir: Path) -> dict[str, Any]:
    """The raw ``config.json`` of the behavioural model (read without the model layer)."""
    path = model_dir / "config.json"
    if path.is_file():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    golden = _golden_at(model_dir)
    return dict(golden.config) if golden is not None else {}


@pytest.fixture(scope="session")
def make_executor(
    backend_name: str,
    model_dir: Path,
    default_dtype: DataType,
    run_options: dict[str, Any],
    static_caps: ExecutorCapabilities | None,
) -> Iterator[MakeExecutor]:
    """Build executors of the backend under test; all are shut down at the end.

    Every one gets the run's executor options. A golden model that the factory refuses up
    front with ``UnsupportedError`` skips the check that asked for it, with that reason.
    """
    from ferrum_core.backends import create_executor

    created: list[ModelExecutor] = []
    max_batch = static_caps.max_batch_size if static_caps is not None else 64

    def make(
        model: Path | None = None, dtype: DataType | None = None, **extra: Any
    ) -> ModelExecutor:
        path = model or model_dir
        options = {**run_options, **extra.pop("executor_options", {})}
        config = ExecutorConfig(
            model_path=str(path),
            dtype=dtype or default_dtype,
            max_batch_size=extra.pop("max_batch_size", max_batch),
            executor_options=options,
            **extra,
        )
        try:
            executor = create_executor(config, backend=backend_name)
        except UnsupportedError as exc:
            golden = _golden_at(path)
            if golden is None:
                raise
            pytest.skip(f"the backend refuses golden model {golden.name} "
                        f"({config.dtype.value}): {exc}")
        created.append(executor)
        return executor

    yield make
    for executor in created:
        with contextlib.suppress(Exception):
            executor.shutdown()


GoldenExecutor = Callable[[str, DataType], ModelExecutor]


@pytest.fixture(scope="session")
def golden_executor(
    make_executor: MakeExecutor, static_caps: ExecutorCapabilities | None
) -> GoldenExecutor:
    """One executor per (golden model, dtype), built on first use and then reused.

    A golden whose attention the backend does not declare (a sliding window, say), or
    that its factory refuses with ``UnsupportedError``, skips the check with the reason.
    """
    built: dict[tuple[str, DataType], ModelExecutor] = {}
    refused: dict[tuple[str, DataType], str] = {}
    declared = set(static_caps.attention_mechanisms) if static_caps is not None else None

    def get(name: str, dtype: DataType) -> ModelExecutor:
        key = (name, dtype)
        golden = golden_model(name)
        missing = sorted(a.value for a in golden.attention - (declared or golden.attention))
        if missing:
            pytest.skip(f"golden model {name} needs attention {missing}, not declared")
        if key in refused:
            pytest.skip(refused[key])
        if key not in built:
            try:
                built[key] = make_executor(golden.path, dtype, max_batch_size=8)
            except pytest.skip.Exception as exc:
                refused[key] = str(exc.msg)
                raise
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
