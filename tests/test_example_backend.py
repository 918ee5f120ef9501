"""The example third-party backend's numpy model against transformers on tiny random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferrum_core.backends import create_executor, get_backend
from ferrum_core.errors import UnsupportedError
from ferrum_core.protocol import (
    BatchModelExecutor,
    DecodeInput,
    ExecutorConfig,
    ExecutorType,
    PrefillInput,
)
from ferrum_core.tensor import HostTensor
from ferrum_core.types import DataType

from .tiny_models import build_tiny_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("ferrum_example_backend")

from ferrum_example_backend.model import NumpyLlama  # noqa: E402

PROMPT = [1, 17, 42, 99, 3, 250, 7, 64, 128, 5, 11, 200, 31, 77]
STEPS = [9, 140, 2, 33]

CASES = {
    "llama-mqa-untied": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "llama3-rope": ("llama3", {"tie_word_embeddings": True}),
    "mistral-window": ("mistral", {"sliding_window": 6}),
    "qwen2-bias-tied": ("qwen2", {"tie_word_embeddings": True}),
    "qwen3-qknorm": ("qwen3", {}),
    "llama-fp16-weights": ("llama", {"dtype": "float16"}),
    "qwen2-bf16-weights": ("qwen2", {"dtype": "bfloat16"}),
}


def _oracle(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """transformers, float32: logits at every prompt position and after each decode step."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        out = model(torch.tensor([PROMPT]), use_cache=True)
        prefill = out.logits[0].numpy()
        past, rows = out.past_key_values, []
        for token in STEPS:
            out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            rows.append(out.logits[0, -1].numpy())
    return prefill, np.stack(rows)


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * scale)


@pytest.fixture(params=sorted(CASES))
def tiny(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    family, overrides = CASES[request.param]
    model_dir = build_tiny_model(tmp_path, family, seed=3, **overrides)
    return (model_dir, *_oracle(model_dir))


def test_numpy_model_matches_transformers(tiny: tuple[Path, np.ndarray, np.ndarray]) -> None:
    from ferrum_core.models import load_model

    model_dir, prefill, decode = tiny
    loaded = load_model(model_dir)
    model = NumpyLlama.from_weights(loaded.config, loaded.weights)
    _assert_close(model.forward_verify("a", PROMPT, 0), prefill)  # every position
    pos = len(PROMPT)
    for token, want in zip(STEPS, decode, strict=True):
        _assert_close(model.decode("a", token, pos), want)
        pos += 1
    # chunked prefill continues the cache
    model.prefill("b", PROMPT[:5], 0)
    _assert_close(model.prefill("b", PROMPT[5:], 5), prefill[-1])


def test_executor_through_registry(tiny: tuple[Path, np.ndarray, np.ndarray]) -> None:
    """The way users get it: the `example` entry point, its factory, the core's LlmExecutor."""
    model_dir, prefill, decode = tiny
    executor = create_executor(ExecutorConfig(model_path=str(model_dir)), backend="example")
    out = executor.prefill(PrefillInput(HostTensor(np.asarray([PROMPT], dtype=np.int64))))
    _assert_close(out.last_token_logits().to_numpy()[0], prefill[-1])
    handle = out.kv_cache
    for token, want in zip(STEPS, decode, strict=True):
        step = executor.decode(DecodeInput(HostTensor(np.asarray([[token]])), handle))
        _assert_close(step.logits.to_numpy()[0], want)
        handle = step.kv_cache
    assert not executor.supports_native_unified_decode()
    executor.shutdown()


def test_create_batch_executor_batches_in_one_call(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path, "llama", seed=3, tie_word_embeddings=True)
    prefill, decode = _oracle(model_dir)
    factory = get_backend("example").factory()
    assert ExecutorType.BATCH in factory.supported_types()
    batch = factory.create_batch_executor(ExecutorConfig(model_path=str(model_dir)))
    assert isinstance(batch, BatchModelExecutor) and batch.supports_batch_size(2)
    prompts = [PROMPT, PROMPT[:6]]
    outs = batch.batch_prefill(
        [PrefillInput(HostTensor(np.asarray([p], dtype=np.int64))) for p in prompts]
    )
    _assert_close(outs[0].last_token_logits().to_numpy()[0], prefill[-1])
    _assert_close(outs[1].last_token_logits().to_numpy()[0], prefill[5])
    steps = batch.batch_decode(
        [DecodeInput(HostTensor(np.asarray([[STEPS[0]]])), o.kv_cache) for o in outs]
    )
    _assert_close(steps[0].logits.to_numpy()[0], decode[0])
    assert [s.kv_cache.sequence_length for s in steps] == [len(PROMPT) + 1, 7]
    batch.shutdown()


def test_plugin_descriptor() -> None:
    descriptor = get_backend("example")
    assert descriptor.priority == 0
    assert descriptor.capabilities is not None
    assert descriptor.capabilities.supported_dtypes == (DataType.FP32,)
    assert not descriptor.capabilities.supports_native_unified_decode


def test_factory_rejects_other_dtypes_and_devices() -> None:
    factory = get_backend("example").factory()
    with pytest.raises(UnsupportedError):
        factory.validate_config(ExecutorConfig(dtype=DataType.FP16))
    with pytest.raises(UnsupportedError):
        factory.validate_config(ExecutorConfig(device="cuda:0"))
