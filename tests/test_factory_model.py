"""`LLM` loads a model once and hands it to `create_executor(config, *, model=...)`;
version-1 factories (``create_executor(config)``) keep working and load it themselves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferrum_core.backends import BackendDescriptor, accepts_model, get_registry
from ferrum_core.models import WeightSource
from ferrum_core.plugin import ExecutorConfig, ModelExecutor, ProbeResult
from tests import transformers_backend
from tests.tiny_models import build_tiny_gpt2

pytest.importorskip("transformers")

PROMPT = [5, 17, 42, 9]


class VersionOneFactory(transformers_backend.TransformersFactory):
    """A factory written before ``model`` existed."""

    def create_executor(self, config: ExecutorConfig) -> ModelExecutor:  # type: ignore[override]
        return super().create_executor(config)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture
def weight_opens(monkeypatch: pytest.MonkeyPatch) -> list[WeightSource]:
    """Every WeightSource opened from a directory while the test runs."""
    opened: list[WeightSource] = []
    original = WeightSource.from_dir.__func__  # type: ignore[attr-defined]

    def counting(cls: type[WeightSource], *args: Any, **kwargs: Any) -> WeightSource:
        source: WeightSource = original(cls, *args, **kwargs)
        opened.append(source)
        return source

    monkeypatch.setattr(WeightSource, "from_dir", classmethod(counting))
    return opened


def _backend(name: str, factory: type) -> Iterator[str]:
    registry = get_registry()
    record = registry.add(BackendDescriptor(
        name=name, factory_loader=factory, probe=lambda: ProbeResult(True, "test"),
        priority=0, capabilities=transformers_backend.CAPABILITIES, plugin="tests",
        distribution="tests",
    ))  # fmt: skip
    try:
        yield record.name
    finally:
        registry.records.remove(record)


@pytest.fixture
def new_backend() -> Iterator[str]:
    yield from _backend("hf-model-kw", transformers_backend.TransformersFactory)


@pytest.fixture
def old_backend() -> Iterator[str]:
    yield from _backend("hf-version-one", VersionOneFactory)


def _greedy(model_dir: Path, backend: str) -> list[int]:
    from ferrum_core.engine import LLM, SamplingParams

    with LLM(str(model_dir), backend=backend) as llm:
        out = llm.generate([{"prompt_token_ids": PROMPT}],
                           SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True),
                           use_tqdm=False)[0]
    return list(out.outputs[0].token_ids)


def test_llm_hands_its_loaded_model_to_the_factory(
    gpt2_dir: Path, new_backend: str, old_backend: str, weight_opens: list[WeightSource]
) -> None:
    once = _greedy(gpt2_dir, new_backend)
    assert len(weight_opens) == 1  # LLM loaded it; the factory used that model
    weight_opens.clear()
    twice = _greedy(gpt2_dir, old_backend)
    assert len(weight_opens) == 2  # a version-1 factory loads it again, and still works
    assert once == twice and len(once) == 4


def test_accepts_model_reads_the_signature() -> None:
    def v1(config: object) -> None: ...
    def keyword(config: object, *, model: object = None) -> None: ...
    def positional(config: object, model: object = None) -> None: ...
    def anything(config: object, **kwargs: object) -> None: ...
    def other(config: object, *, models: object = None) -> None: ...

    assert not accepts_model(v1) and not accepts_model(other)
    assert accepts_model(keyword) and accepts_model(positional) and accepts_model(anything)
    assert accepts_model(transformers_backend.TransformersFactory().create_executor)
    assert not accepts_model(VersionOneFactory().create_executor)
